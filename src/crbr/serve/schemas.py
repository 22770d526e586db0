"""Request and response bodies of the HTTP API (pydantic models, shown on the OpenAPI page).

The request models carry the service's limits (history length, k, users per batch, scope sizes),
so they are built per service by `request_models(limits)`; every field is strict enough that a
wrong type, a non-finite number or a value out of range is a 422 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Union

import math

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, WithJsonSchema

ID_CHARS = 256  # longest original item / category / action id accepted
OPTION_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (ServeSettings holds the configured values)."""

    max_events: int = 1000  # events in one user's history
    max_k: int = 1000
    max_users: int = 64  # users in one retrieve:batch request
    max_scope_items: int = 10_000  # ids in a scope's allow-list
    max_scope_categories: int = 256
    max_options: int = 16
    max_option_value: int = 4096  # model options: integers in 0..this (beam widths, quotas)


def _name_or_id(v: Any) -> str | int:
    """A name (1..ID_CHARS characters) or an integer id; never a bool, float or container."""
    if type(v) is str and 0 < len(v) <= ID_CHARS:  # the common case first (one validator call per event)
        return v
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"must be a string or an integer, got {_kind(v)}")
    if isinstance(v, str) and not 1 <= len(v) <= ID_CHARS:
        raise ValueError(f"must be 1 to {ID_CHARS} characters long")
    if isinstance(v, int) and not -(2**63) <= v < 2**63:
        raise ValueError("integer out of the 64-bit range")
    return v


def _item_id(v: Any) -> str:
    if type(v) is str and 0 < len(v) <= ID_CHARS:
        return v
    return str(_name_or_id(v))


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, float) and not math.isfinite(v):
        return f"the non-finite number {v}"
    return {bool: "a boolean", float: "a number", list: "an array", dict: "an object"}.get(type(v), type(v).__name__)


_ID_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": ID_CHARS}, {"type": "integer"}]}
ItemId = Annotated[str, PlainValidator(_item_id), WithJsonSchema(_ID_SCHEMA)]
NameOrId = Annotated[Union[str, int], PlainValidator(_name_or_id), WithJsonSchema(_ID_SCHEMA)]


def _option(limit: int):
    def check(v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if isinstance(v, int):
            if not 0 <= v <= limit:
                raise ValueError(f"integer options must be in 0..{limit}, got {v}")
            return v
        if isinstance(v, float):
            if not math.isfinite(v) or abs(v) > 1e6:
                raise ValueError(f"must be a finite number within +-1e6, got {v}")
            return v
        if isinstance(v, str):
            if not 1 <= len(v) <= ID_CHARS:
                raise ValueError(f"must be 1 to {ID_CHARS} characters long")
            return v
        raise ValueError(f"must be a boolean, number or string, got {_kind(v)}")

    schema = {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 0, "maximum": limit},
                        {"type": "number"}, {"type": "string", "maxLength": ID_CHARS}]}
    return Annotated[Any, PlainValidator(check), WithJsonSchema(schema)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def request_models(limits: Limits) -> dict[str, type[BaseModel]]:
    """The request models under `limits`: Event, Scope, RetrieveRequest, BatchRetrieveRequest."""

    class Event(Strict):
        """One event of a user's history, oldest first."""

        item: ItemId = Field(description="the item's original id (as in the dataset); an unknown id is dropped "
                                         "and reported back")
        action: NameOrId | None = Field(None, description="the action's name (or id); default: the "
                                                                       "dataset's most common action")
        timestamp: Annotated[StrictInt, Field(ge=0, le=2**53)] | None = Field(
            None, description="event time in seconds; give it on every event or on none")

    class Scope(Strict):
        """The items a request may get: of these categories (any of them) and/or on this
        allow-list (both given: both must hold); exclude_seen drops the items of the history."""

        categories: Annotated[list[NameOrId], Field(max_length=limits.max_scope_categories)] | None = \
            Field(None, description="category names (or ids); an unknown one is an error")
        items: Annotated[list[ItemId], Field(max_length=limits.max_scope_items)] | None = Field(
            None, description="allow-list of original item ids; unknown ids are ignored and reported back")
        exclude_seen: StrictBool = Field(False, description="never return an item of the request's history")

    Option = _option(limits.max_option_value)

    class Query(Strict):
        events: Annotated[list[Event], Field(min_length=1, max_length=limits.max_events)] = Field(
            description=f"the user's history, oldest first (at most {limits.max_events} events; the model reads "
                        "the newest ones it was trained on)")
        k: Annotated[StrictInt, Field(ge=1, le=limits.max_k)] = Field(10, description="items to return")
        scope: Scope | None = None
        control: NameOrId | None = Field(
            None, description="control token for models that take one (the generative retriever: 'explore', "
                              "'repeat', 'cat:<category name or id>')")
        options: Annotated[dict[Annotated[str, Field(pattern=OPTION_NAME)], Option],
                           Field(max_length=limits.max_options)] | None = Field(
            None, description="model inference settings passed through to the model (e.g. beam); integers "
                              f"0..{limits.max_option_value}")

    class RetrieveRequest(Query):
        """One user's top-k items."""

    class BatchRetrieveRequest(Strict):
        """Several users at once; each answer is what /v1/retrieve gives for that user."""

        users: Annotated[list[Query], Field(min_length=1, max_length=limits.max_users)]

    return {"Event": Event, "Scope": Scope, "RetrieveRequest": RetrieveRequest,
            "BatchRetrieveRequest": BatchRetrieveRequest}


# ----------------------------------------------------------------------------------- responses
class Item(BaseModel):
    item: str = Field(description="original item id")
    score: float
    path: int | None = Field(None, description="the model's query vector (beam path) that found the item")
    codes: list[int] | None = Field(None, description="the codes of that path (CRBR)")


class PathInfo(BaseModel):
    path: int
    score: float | None = None
    codes: list[int] | None = None


class Dropped(BaseModel):
    count: int
    items: list[str] = Field(description="the unknown ids (at most 100 shown)")


class RetrieveResponse(BaseModel):
    items: list[Item]
    k: int
    unknown_items: Dropped = Field(description="history items not in the catalogue (dropped)")
    unknown_scope_items: Dropped | None = None
    paths: list[PathInfo] | None = Field(None, description="the model's query paths, for explanation (CRBR)")
    model_version: int = Field(description="the served model's load count (changes on reload)")


class BatchRetrieveResponse(BaseModel):
    results: list[RetrieveResponse]


class FieldError(BaseModel):
    field: str
    message: str
    type: str = ""


class ErrorResponse(BaseModel):
    error: str
    detail: list[FieldError]


class ModelInfo(BaseModel):
    model: str
    config: dict[str, Any]
    dataset: str
    catalogue_size: int
    categories: int
    actions: list[str]
    timestamps: bool
    mode: str = Field(description="'index' (vectors searched in the item index), 'exact' (the model's full "
                                  "ranking) or 'rank' (a decoding model)")
    index: dict[str, Any] | None
    checkpoint: str
    checkpoint_sha256: str
    model_version: int
    loaded_at: float
    last_reload: dict[str, Any] | None
    code_version: str
    settings: dict[str, Any]


class ReloadResponse(BaseModel):
    reloaded: bool
    model_version: int
    seconds: float
    error: str | None = None
