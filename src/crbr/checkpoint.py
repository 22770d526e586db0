"""Checkpoint files: safetensors weights with the full config in their metadata, plus a resumable
training state. This layer reads and writes files only; rebuilding a model from a checkpoint is
`crbr.models.load_model` (it needs the model registry). Every file is written atomically
(temporary file in the same folder, then os.replace), so an interrupted run never leaves a
half-written checkpoint behind.

Integrity (checkpoint format "2"). Every file records a sha256 of its contents when written and
is checked against it when read, so a corrupted or modified file is an error, never a model that
silently scores wrong:

- safetensors weights: metadata "crbr_format" = "2" and "crbr_sha256" = `weights_digest(tensors,
  metadata)`, the sha256 over every other metadata entry (sorted by key) and every tensor (sorted
  by name: name, dtype, shape, then its raw bytes), each piece length-prefixed. `load_weights`
  verifies it (`verify_weights` on its own); `read_metadata` reads the header only.
- last.pt (`save_state`): the saved dict gets the same two keys, the hash being
  `state_digest(state)` over the whole nested state (containers, numbers, strings, tensors' dtype,
  shape and bytes) in a canonical order; `load_state` verifies it and returns the state without
  them.

Files written before format 2 carry no hash: they load as before, unverified, with one INFO
notice per file and process. Every failure to read a checkpoint (missing crbr metadata, truncated
or foreign file, hash mismatch, weights that do not fit the model) is a `CheckpointError` (a
ValueError) whose message names the file; a missing file is a FileNotFoundError naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import _remove_duplicate_names, save_file

from .fileio import atomic_file, atomic_write_text  # noqa: F401  (atomic_write_text: re-exported)

log = logging.getLogger(__name__)

FORMAT = "2"  # the checkpoint format written by this version (integrity hash in every file)
FORMAT_KEY = "crbr_format"
HASH_KEY = "crbr_sha256"
_HASH_DOMAIN_WEIGHTS = b"crbr safetensors sha256 v2\n"
_HASH_DOMAIN_STATE = b"crbr state sha256 v2\n"
_CRBR_JSON_KEYS = ("model_config", "experiment")  # metadata crbr writes as JSON and needs to parse
_RAW_KEYS = ("model_name", FORMAT_KEY, HASH_KEY)  # metadata crbr writes as plain strings
_unverified_noticed: set[str] = set()  # files already reported as written without a hash


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as it is: unreadable (truncated, not a checkpoint),
    not a crbr checkpoint, corrupted or modified (contents do not match their recorded hash), or
    weights that do not fit the model. The message names the file."""


# ----------------------------------------------------------------------------- writing
def _atomic(path: Path, write) -> Path:
    """Write through `write(temporary path)`, then rename over `path` (crbr.fileio.atomic_file)."""
    with atomic_file(path) as tmp:
        write(str(tmp))
    return path


def save_weights(path: str | Path, model: torch.nn.Module, model_name: str, experiment: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Weights as safetensors; metadata holds the model name, its config, the experiment config
    and the integrity hash (format 2)."""
    meta = {
        "model_name": model_name,
        "model_config": json.dumps(_asdict(model.config)),
        "experiment": json.dumps(experiment, default=str),
        **{k: json.dumps(v, default=str) for k, v in (extra or {}).items()},
    }
    # as safetensors.torch.save_model: tensors sharing memory are saved once, the others named in the metadata
    tensors = model.state_dict()
    for kept, removed in _remove_duplicate_names(tensors).items():
        for name in removed:
            meta.setdefault(name, kept)
            del tensors[name]
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta.pop(HASH_KEY, None)
    meta[FORMAT_KEY] = FORMAT
    meta[HASH_KEY] = weights_digest(tensors, meta)
    return _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Resumable training state (model + optimizer state dicts, counters, RNG states), with its
    integrity hash (format 2)."""
    out = {k: v for k, v in state.items() if k not in (FORMAT_KEY, HASH_KEY)}
    out[FORMAT_KEY] = FORMAT
    out[HASH_KEY] = state_digest(out)
    return _atomic(Path(path), lambda tmp: torch.save(out, tmp))


# ----------------------------------------------------------------------------- reading weights
def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a crbr safetensors checkpoint (header only, not verified against the hash:
    `load_weights` / `verify_weights` do that), JSON values decoded."""
    with _open_safetensors(path) as f:
        raw = _raw_metadata(path, f)
    return _decode_metadata(path, raw)


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load a crbr safetensors checkpoint into `model`, after checking the file against its
    recorded hash; weights that do not fit the model (missing, unexpected or other-shaped
    tensors) are one CheckpointError listing a few of each."""
    raw, tensors = _read_weights(path)
    _verify_weights(path, raw, tensors)
    _assign(path, raw, tensors, model)


def verify_weights(path: str | Path) -> bool:
    """Check a safetensors checkpoint against its recorded hash: True when it matches, False for a
    file written without one (older crbr); a CheckpointError when it does not match."""
    raw, tensors = _read_weights(path)
    return _verify_weights(path, raw, tensors)


def embedded_config(path: str | Path, model_name: str | tuple[str, ...]) -> dict:
    """The model config stored in a checkpoint of `model_name` (one name or several accepted
    names); models that build on another model's checkpoint copy it into their own config so
    their checkpoints are self-contained."""
    names = (model_name,) if isinstance(model_name, str) else tuple(model_name)
    meta = read_metadata(path)
    if meta.get("model_name") not in names:
        raise CheckpointError(f"{path}: expected a {names[0]!r} checkpoint, found model {meta.get('model_name')!r}")
    return dict(meta["model_config"])


def weights_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 (hex) of a safetensors checkpoint's contents: every metadata entry but HASH_KEY
    (sorted by key), then every tensor (sorted by name: name, dtype, shape, raw bytes as held in
    memory, i.e. the file's little-endian bytes on a little-endian machine)."""
    h = hashlib.sha256(_HASH_DOMAIN_WEIGHTS)
    items = sorted((k, v) for k, v in metadata.items() if k != HASH_KEY)
    _frame(h.update, json.dumps(items).encode())
    for name in sorted(tensors):
        _feed_tensor(h.update, tensors[name], name)
    return h.hexdigest()


def _open_safetensors(path: str | Path):
    _check_exists(path)
    try:
        return safe_open(str(path), framework="pt")
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # SafetensorError (header too small / too large / incomplete...), OSError
        raise CheckpointError(f"{path}: cannot read this checkpoint: truncated or not a safetensors file ({e})") from e


def _raw_metadata(path, f) -> dict[str, str]:
    try:
        return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read this checkpoint's metadata ({e})") from e


def _read_weights(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(raw metadata, tensors) of a safetensors file, every read failure a CheckpointError."""
    with _open_safetensors(path) as f:
        raw = _raw_metadata(path, f)
        try:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read this checkpoint's tensors: truncated or corrupted ({e})") from e
    return raw, tensors


def _decode_metadata(path, raw: dict[str, str]) -> dict[str, Any]:
    """Metadata values JSON-decoded (values that are not JSON, and model_name, crbr_format and
    crbr_sha256, stay strings), after checking that the file is a crbr checkpoint: a model_name and a model_config (a JSON object)."""
    if not isinstance(raw.get("model_name"), str) or not raw["model_name"]:
        raise CheckpointError(f"{path}: not a crbr checkpoint: no model_name in its metadata")
    if "model_config" not in raw:
        raise CheckpointError(f"{path}: not a crbr checkpoint: no model_config in its metadata")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in _RAW_KEYS:
            out[k] = v
            continue
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError as e:
            if k in _CRBR_JSON_KEYS:
                raise CheckpointError(f"{path}: the {k} in its metadata is not valid JSON ({e}); "
                                      "the file is corrupted or was modified") from None
            out[k] = v
    if not isinstance(out["model_config"], dict):
        raise CheckpointError(f"{path}: the model_config in its metadata is not a mapping "
                              f"(got {type(out['model_config']).__name__})")
    return out


def _verify_weights(path, raw: dict[str, str], tensors: dict[str, torch.Tensor]) -> bool:
    """Check the file against its recorded hash (first, so that a corrupted header is reported as
    corruption), then that it is a crbr checkpoint; True when verified, False for an older file
    without a hash (one notice per file)."""
    recorded = raw.get(HASH_KEY)
    fmt = raw.get(FORMAT_KEY)
    if recorded is not None:
        if fmt != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {fmt!r} is not one this crbr version reads "
                                  f"(format {FORMAT!r}); it was written by another crbr version or modified")
        if weights_digest(tensors, raw) != recorded:
            raise CheckpointError(f"{path}: the weights do not match their recorded hash ({HASH_KEY}): "
                                  "the file is corrupted or was modified; do not use it")
    _decode_metadata(path, raw)
    if recorded is None:
        if fmt is not None:
            raise CheckpointError(f"{path}: records checkpoint format {fmt!r} but no {HASH_KEY}: "
                                  "the file is corrupted or was modified")
        _notice_unverified(path)
    return recorded is not None


def _assign(path, raw: dict[str, str], tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Copy `tensors` into `model` (as safetensors.torch.load_model, tensors the model shares
    under several names being stored once), after checking names and shapes."""
    target = model.state_dict()
    aliases = {n for group in _remove_duplicate_names(target, preferred_names=list(tensors)).values() for n in group}
    missing = [k for k in target if k not in tensors and k not in aliases]
    unexpected = [k for k in tensors if k not in target or k in aliases]
    reshaped = [f"{k} (file {_shape(tensors[k])}, model {_shape(target[k])})"
                for k in tensors if k in target and tuple(tensors[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or reshaped:
        parts = [f"{len(v)} {what}: {', '.join(v[:5])}{', ...' if len(v) > 5 else ''}"
                 for what, v in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)) if v]
        raise CheckpointError(f"{path}: the weights do not fit this {type(model).__name__} (the file holds a "
                              f"{raw.get('model_name')!r} checkpoint of another architecture or size): "
                              + "; ".join(parts))
    try:
        model.load_state_dict(tensors, strict=False)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load the weights into this {type(model).__name__} ({e})") from e


# ----------------------------------------------------------------------------- reading the training state
def load_state(path: str | Path) -> dict[str, Any]:
    """The training state saved by `save_state`, checked against its recorded hash (files
    written without one load unverified, with a notice)."""
    _check_exists(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"training state {path} does not exist") from None
    except Exception as e:  # zip errors (RuntimeError), pickle errors, EOF, ...
        msg = f"{path}: cannot read this training state: truncated, corrupted or not a crbr last.pt ({_first_line(e)})"
        if "weights_only" in str(e):  # torch's message suggests unsafe loading: never pass it on
            raise CheckpointError(msg) from None
        raise CheckpointError(msg) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a crbr training state (holds a {type(state).__name__}, not a dict)")
    recorded = state.pop(HASH_KEY, None)
    fmt = state.get(FORMAT_KEY)
    if recorded is None:
        if fmt is not None:
            raise CheckpointError(f"{path}: records checkpoint format {fmt!r} but no {HASH_KEY}: "
                                  "the file is corrupted or was modified")
        _notice_unverified(path)
        return state
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {fmt!r} is not one this crbr version reads (format {FORMAT!r})")
    try:
        ok = state_digest(state) == recorded
    except TypeError:
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: the training state does not match its recorded hash ({HASH_KEY}): "
                              "the file is corrupted or was modified; do not resume from it")
    del state[FORMAT_KEY]
    return state


def state_digest(state: Any) -> str:
    """sha256 (hex) of a nested training state: dicts (entries sorted by their encoded key),
    lists, tuples, strings, bytes, None, bools, integers, floats (exact), complex numbers, torch
    dtypes / devices and tensors (dtype, shape, raw bytes); the same before torch.save and after
    torch.load. Other types are a TypeError."""
    h = hashlib.sha256(_HASH_DOMAIN_STATE)
    _feed(h.update, state)
    return h.hexdigest()


def _feed(out: Callable[[bytes], Any], obj: Any) -> None:
    if obj is None:
        out(b"N")
    elif isinstance(obj, (bool, np.bool_)):
        out(b"B1" if obj else b"B0")
    elif isinstance(obj, numbers.Integral):
        _frame(out, b"I" + str(int(obj)).encode())
    elif isinstance(obj, numbers.Real):
        _frame(out, b"F" + float(obj).hex().encode())
    elif isinstance(obj, numbers.Complex):
        _frame(out, b"C" + complex(obj).real.hex().encode() + b"," + complex(obj).imag.hex().encode())
    elif isinstance(obj, str):
        _frame(out, b"S" + obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, (bytes, bytearray)):
        _frame(out, b"Y" + bytes(obj))
    elif isinstance(obj, torch.Tensor):
        out(b"T")
        _feed_tensor(out, obj)
    elif isinstance(obj, (torch.dtype, torch.device)):
        _frame(out, b"D" + str(obj).encode())
    elif isinstance(obj, Mapping):
        entries = []
        for k, v in obj.items():
            key: list[bytes] = []
            _feed(key.append, k)
            entries.append((b"".join(key), v))
        entries.sort(key=lambda e: e[0])
        out(b"M" + len(entries).to_bytes(8, "little"))
        for k, v in entries:
            out(k)
            _feed(out, v)
    elif isinstance(obj, (list, tuple)):
        out((b"L" if isinstance(obj, list) else b"U") + len(obj).to_bytes(8, "little"))
        for v in obj:
            _feed(out, v)
    else:
        raise TypeError(f"cannot hash a {type(obj).__name__} in a training state (crbr.checkpoint.state_digest)")


# ----------------------------------------------------------------------------- helpers
def _feed_tensor(out: Callable[[bytes], Any], t: torch.Tensor, name: str | None = None) -> None:
    t = t.detach()
    head = [str(t.dtype).removeprefix("torch."), list(t.shape)]
    _frame(out, json.dumps(head if name is None else [name, *head]).encode())
    t = t.to("cpu").contiguous().reshape(-1)
    data = t.view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
    out(data.nbytes.to_bytes(8, "little"))
    out(memoryview(data))


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) if t.dim() else "scalar"


def _frame(out: Callable[[bytes], Any], b: bytes) -> None:
    out(len(b).to_bytes(8, "little"))
    out(b)


def _check_exists(path) -> None:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if p.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")


def _notice_unverified(path) -> None:
    key = str(Path(path).resolve())
    if key not in _unverified_noticed:
        _unverified_noticed.add(key)
        log.info("%s: written by an older crbr without an integrity hash; loading it unverified "
                 "(checkpoints written now record one)", path)


def _first_line(e: BaseException) -> str:
    """A short description of `e` that never passes on advice to load unsafely: torch's
    weights-only refusal gives only what it refused (e.g. "Unsupported global: GLOBAL x.Y was not
    an allowed global by default"), anything else its first sentence."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        rest = text.split("WeightsUnpickler error:", 1)[1]
        line = next((ln.strip() for ln in rest.splitlines() if ln.strip()), "")
    else:
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.split(". ")[0].rstrip(".")[:200]
    if "weights_only" in line or "weights only" in line.lower():
        line = ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _asdict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
