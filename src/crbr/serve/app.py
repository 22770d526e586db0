"""The HTTP API of `crbr serve` (FastAPI), versioned under /v1 and documented at /docs:

  POST /v1/retrieve          one user's history (original item ids) -> top-k original item ids
  POST /v1/retrieve:batch    many users in one request
  POST /v1/noop              validates a /v1/retrieve body and answers without the model (HTTP cost)
  GET  /v1/model             the served model, its dataset, catalogue, index and settings
  POST /v1/admin/reload      load the configured checkpoint / index / catalogue again and swap
  GET  /healthz, /readyz     liveness (no key needed), readiness (a model is loaded)
  GET  /metrics              Prometheus text format

Every error is JSON {"error": ..., "detail": [{"field", "message", "type"}]} naming the field
that is wrong; user input never gets a 5xx. With an API key (from the environment variable named
by ServeSettings.api_key_env) every route except /healthz and /readyz needs
`Authorization: Bearer KEY` (or `X-API-Key: KEY`).
"""

import asyncio
import hmac
import json
import logging
import math
import os
import re
import signal
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from .batching import MicroBatcher, Overloaded
from .metrics import Metrics
from .model_host import Answer, ModelHost, RequestError
from .schemas import (BatchRetrieveResponse, ErrorResponse, Limits, ModelInfo, ReloadResponse, RetrieveResponse,
                      request_models)

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")
RETRIEVE_PATHS = ("/v1/retrieve", "/v1/retrieve:batch")
ROUTES = (*RETRIEVE_PATHS, "/v1/noop", "/v1/model", "/v1/admin/reload", "/healthz", "/readyz", "/metrics",
          "/docs", "/openapi.json", "/redoc")


@dataclass
class ServeSettings:
    """Everything `crbr serve` takes (see `crbr serve --help`)."""

    checkpoint: str
    index: str | None = None
    catalogue: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # micro-batching: at most max_batch requests per model call, gathered for at most max_wait_ms
    max_batch: int = 32
    max_wait_ms: float = 2.0
    queue_size: int = 256  # accepted requests waiting for the model; beyond: 503 + Retry-After
    retry_after_s: float = 1.0
    request_timeout_s: float = 30.0  # from acceptance to answer; beyond: 504
    body_timeout_s: float = 10.0  # to receive a request body; beyond: 408
    max_body_bytes: int = 1 << 20
    limits: Limits = field(default_factory=Limits)
    api_key_env: str = "CRBR_API_KEY"
    threads: int = 0  # torch threads (0 = torch's default)
    index_params: dict[str, Any] = field(default_factory=dict)
    allow_index_mismatch: bool = False

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("api_key_env")
        return d


# ------------------------------------------------------------------------------------ errors
def error_body(error: str, detail: list[tuple[str, str, str]]) -> bytes:
    return json.dumps({"error": error, "detail": [{"field": f, "message": m, "type": t} for f, m, t in detail]}).encode()


def error_response(status: int, error: str, detail: list[tuple[str, str, str]],
                   headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(error, detail), status_code=status, media_type="application/json", headers=headers)


def field_name(loc: tuple | list) -> str:
    """('body', 'events', 3, 'item') -> 'events[3].item'; ('body',) -> 'body'."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for p in parts:
        if p == "[key]":  # a mapping key's own error: the field is the key
            continue
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def validation_detail(errors: list[dict]) -> list[tuple[str, str, str]]:
    out = []
    for e in errors:
        kind = e.get("type", "")
        loc = e.get("loc", ())
        if kind == "json_invalid":
            pos = loc[1] if len(loc) > 1 else "?"
            out.append(("body", f"invalid JSON at character {pos}: {e.get('ctx', {}).get('error', '')}", kind))
            continue
        msg = e.get("msg", "invalid")
        value = e.get("input")
        if kind == "missing" and not loc[1:]:
            msg = "a JSON object body is required"
        elif isinstance(value, float) and not math.isfinite(value):
            msg = f"{msg}: got {value!r}; JSON numbers must be finite"
        out.append((field_name(loc), msg, kind))
    return out


# ------------------------------------------------------------------------------------ middleware
class Guard:
    """Outermost ASGI layer: metrics of every request, the API key, the body size and receive
    timeout (bodies are read here, before any parsing, so an oversized one costs no memory)."""

    def __init__(self, app, settings: ServeSettings, metrics: Metrics, batcher: MicroBatcher, api_key: str | None):
        self.app, self.settings, self.metrics, self.batcher = app, settings, metrics, batcher
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapped(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
            await send(message)

        counted = path in RETRIEVE_PATHS
        if counted:
            self.batcher.http_inflight += 1
        try:
            await self._handle(scope, receive, send_wrapped, path)
        finally:
            if counted:
                self.batcher.http_inflight -= 1
            self.metrics.requests.labels(route, str(status["code"])).inc()

    async def _handle(self, scope, receive, send, path: str) -> None:
        if self.api_key is not None and path not in OPEN_PATHS and not self._authorized(scope):
            return await self._reply(send, 401, "unauthorized",
                                     [("authorization", "a valid API key is required: header `Authorization: "
                                                        "Bearer KEY` or `X-API-Key: KEY`", "auth")],
                                     {"www-authenticate": "Bearer"})
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        cap = self.settings.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            if declared.isdigit():
                await self._drain(receive, int(declared))
            return await self._too_large(send, declared)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    size += len(body)
                    if size > cap:
                        await self._drain(receive, 16 * cap, more=message.get("more_body", False))
                        return await self._too_large(send, None)
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return await self._reply(send, 408, "timeout", [("body", f"the request body did not arrive within "
                                                                     f"{self.settings.body_timeout_s:g} s", "timeout")],
                                     {"connection": "close"})
        data = b"".join(chunks)
        done = False

        async def replay():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _authorized(self, scope) -> bool:
        key = None
        auth = _header(scope, b"authorization")
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer":
                key = value.strip()
        if key is None:
            key = _header(scope, b"x-api-key")
        return key is not None and hmac.compare_digest(key.encode(), self.api_key)

    async def _drain(self, receive, limit: int, more: bool = True) -> None:
        """Read and discard what the client still sends (up to `limit` bytes, within the body
        timeout), so it can read the 413 instead of failing on a closed connection."""
        if not more:
            return
        got = 0
        try:
            async with asyncio.timeout(min(self.settings.body_timeout_s, 2.0)):
                while got <= limit:
                    m = await receive()
                    if m["type"] != "http.request":
                        return
                    got += len(m.get("body", b""))
                    if not m.get("more_body", False):
                        return
        except TimeoutError:
            return

    async def _too_large(self, send, declared: str | None) -> None:
        cap = self.settings.max_body_bytes
        what = f"{declared} bytes" if declared and declared.isdigit() else "the body"
        if declared is not None and not declared.isdigit():
            return await self._reply(send, 400, "invalid_request", [("content-length", "not a byte count", "header")],
                                     {"connection": "close"})
        await self._reply(send, 413, "body_too_large", [("body", f"{what} exceed(s) the limit of {cap} bytes", "size")],
                          {"connection": "close"})

    @staticmethod
    async def _reply(send, status: int, error: str, detail, headers: dict[str, str] | None = None) -> None:
        body = error_body(error, detail)
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


# ------------------------------------------------------------------------------------ the app
def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":"), allow_nan=False).encode(), status_code=status,
                    media_type="application/json")


ERRORS = {400: {"model": ErrorResponse, "description": "malformed request"},
          401: {"model": ErrorResponse, "description": "missing or wrong API key"},
          413: {"model": ErrorResponse, "description": "body larger than the limit"},
          422: {"model": ErrorResponse, "description": "a field is invalid (named in detail[].field)"},
          503: {"model": ErrorResponse, "description": "queue full: retry after the Retry-After seconds"},
          504: {"model": ErrorResponse, "description": "not answered within the request timeout"}}


@dataclass(eq=False)
class Service:
    """What the routes of one app share: the settings, the model host, the metrics, the
    micro-batcher, whether the worker runs (readiness) and the lock that keeps reloads apart."""

    settings: ServeSettings
    host: ModelHost
    metrics: Metrics
    batcher: MicroBatcher
    serving: bool = False
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def reload(self, source: str) -> dict[str, Any]:
        """Load the configured files again (one reload at a time) and report the outcome."""
        host, metrics = self.host, self.metrics
        async with self.reload_lock:
            status = await asyncio.to_thread(host.reload)
        metrics.reloads.labels("ok" if status.ok else "failed").inc()
        metrics.model_version.set(host.snapshot.version)
        log.info("reload (%s): %s", source, "ok" if status.ok else status.error)
        return {"reloaded": status.ok, "model_version": host.snapshot.version, "seconds": status.seconds,
                "error": status.error}

    async def answer(self, works: list) -> list[dict[str, Any]]:
        """The response bodies of prepared requests, through the micro-batcher; the first
        request's error is raised, and a 504 when they are not answered within the timeout."""
        timeout = self.settings.request_timeout_s
        jobs = self.batcher.submit(works)
        futures = [j.future for j in jobs]
        done, pending = await asyncio.wait(futures, timeout=timeout)
        if pending:
            for j in jobs:
                j.abandoned = True
            for f in futures:  # retrieve what finished so nothing is left unobserved
                if f.done() and not f.cancelled():
                    f.exception()
            self.metrics.rejected.labels("timeout").inc(len(pending))
            raise RequestError("request", f"not answered within {timeout:g} s", 504, "timeout")
        results = [f.result() if f.exception() is None else f.exception() for f in futures]
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [r.body for r in results if isinstance(r, Answer)]


def create_app(settings: ServeSettings, host: ModelHost | None = None) -> FastAPI:
    """The service around `host` (loaded from the settings' paths when not given or not loaded)."""
    host = host or ModelHost(settings.checkpoint, settings.index, settings.catalogue, settings.index_params,
                             settings.allow_index_mismatch)
    if not host.ready:
        host.load()
    metrics = Metrics()
    metrics.model_version.set(host.snapshot.version)
    batcher = MicroBatcher(settings.max_batch, settings.max_wait_ms / 1000.0, settings.queue_size, metrics,
                           settings.retry_after_s)
    api_key = os.environ.get(settings.api_key_env) or None
    svc = Service(settings, host, metrics, batcher)
    app = FastAPI(title="crbr retrieval service", version="1", lifespan=service_lifespan(svc),
                  description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    app.state.host, app.state.batcher, app.state.metrics, app.state.settings = host, batcher, metrics, settings
    add_error_handlers(app, settings)
    add_retrieval_routes(app, svc)
    add_model_routes(app, svc)
    add_health_routes(app, svc)
    # outermost but for starlette's error middleware: sees every request, so 401 / 413 are counted too
    app.add_middleware(Guard, settings=settings, metrics=metrics, batcher=batcher, api_key=api_key)
    return app


def service_lifespan(svc: Service):
    """The app's lifespan: the batcher's worker runs, SIGHUP reloads (in the main thread, where
    the platform has it) and freed memory is trimmed while the app serves."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await svc.batcher.start()
        loop = asyncio.get_running_loop()
        hup = False
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(svc.reload("SIGHUP")))
                hup = True
            except (RuntimeError, ValueError, NotImplementedError):
                pass
        svc.serving = True
        trimmer = loop.create_task(trim_memory_every(10.0))
        try:
            yield
        finally:
            trimmer.cancel()
            svc.serving = False
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            await svc.batcher.stop()

    return lifespan


def add_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    """Every error as JSON {"error", "detail": [{"field", "message", "type"}]}."""

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", validation_detail(exc.errors()))

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError):
        return error_response(exc.status, "invalid_request" if exc.status == 422 else "request_failed",
                              [(exc.field, exc.message, exc.kind)])

    @app.exception_handler(Overloaded)
    async def on_overload(request: Request, exc: Overloaded):
        return error_response(503, "overloaded", [("queue", f"the request queue is full ({settings.queue_size}); "
                                                            f"retry after {exc.retry_after:g} s", "overloaded")],
                              {"Retry-After": str(max(1, round(exc.retry_after)))})

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        where = {404: "path", 405: "method", 400: "body"}.get(exc.status_code, "request")
        return error_response(exc.status_code, "invalid_request" if exc.status_code < 500 else "error",
                              [(where, str(exc.detail), "http")], getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal_error", [("request", "the server failed to answer; see its log", "server")])


def add_retrieval_routes(app: FastAPI, svc: Service) -> None:
    """POST /v1/retrieve, /v1/retrieve:batch and /v1/noop, with the request bodies under the
    settings' limits."""
    models = request_models(svc.settings.limits)
    RetrieveRequest, BatchRetrieveRequest = models["RetrieveRequest"], models["BatchRetrieveRequest"]
    host, metrics = svc.host, svc.metrics

    @app.post("/v1/retrieve", response_model=RetrieveResponse, responses=ERRORS,
              summary="one user's top-k items from their history")
    async def retrieve_one(body: RetrieveRequest):  # type: ignore[valid-type]
        snap = host.snapshot
        work = snap.prepare(body)
        metrics.unknown_items.inc(work.n_unknown)
        (out,) = await svc.answer([work])
        return json_response(out)

    @app.post("/v1/retrieve:batch", response_model=BatchRetrieveResponse, responses=ERRORS,
              summary="top-k items for several users (each answered as /v1/retrieve would)")
    async def retrieve_batch(body: BatchRetrieveRequest):  # type: ignore[valid-type]
        snap = host.snapshot
        works = [snap.prepare(q, f"users[{i}].") for i, q in enumerate(body.users)]
        metrics.unknown_items.inc(sum(w.n_unknown for w in works))
        return json_response({"results": await svc.answer(works)})

    @app.post("/v1/noop", responses=ERRORS, summary="validate a /v1/retrieve body and answer without the model "
                                                    "(measures the HTTP and validation cost)")
    async def noop(body: RetrieveRequest):  # type: ignore[valid-type]
        return json_response({"items": [], "k": body.k, "unknown_items": {"count": 0, "items": []},
                              "model_version": host.snapshot.version})


def add_model_routes(app: FastAPI, svc: Service) -> None:
    """GET /v1/model and POST /v1/admin/reload."""
    host, settings = svc.host, svc.settings

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS, summary="the served model")
    async def model_info():
        info = host.snapshot.info()
        info["last_reload"] = None if host.last_reload is None else host.last_reload.to_dict()
        info["code_version"] = code_version()
        info["settings"] = settings.public()
        return json_response(info)

    @app.post("/v1/admin/reload", response_model=ReloadResponse,
              responses={409: {"model": ReloadResponse, "description": "the files did not load; the previous model "
                                                                      "keeps serving"}, 401: ERRORS[401]},
              summary="load the configured checkpoint, index and catalogue again and swap them in")
    async def reload():
        out = await svc.reload("admin")
        return json_response(out, 200 if out["reloaded"] else 409)


def add_health_routes(app: FastAPI, svc: Service) -> None:
    """GET /healthz, /readyz and /metrics."""
    host, batcher, metrics = svc.host, svc.batcher, svc.metrics

    @app.get("/healthz", summary="the process is up")
    async def healthz():
        return json_response({"status": "ok"})

    @app.get("/readyz", summary="a model is loaded and the worker runs")
    async def readyz():
        if host.ready and svc.serving:
            return json_response({"status": "ready", "model_version": host.snapshot.version})
        return json_response({"status": "not ready"}, 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        metrics.queue_depth.set(batcher.depth)
        return Response(metrics.render(), media_type=metrics.content_type)


async def trim_memory_every(seconds: float) -> None:
    """Hand freed heap memory back to the OS now and then (glibc's malloc_trim): request bodies,
    batches of many shapes and large score matrices otherwise leave the heap fragmented and the
    resident size creeping up under long mixed traffic. A no-op where glibc is not there."""
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(trim, 0)


_CODE: list[str] = []


def code_version() -> str:
    """crbr's version and, in a git checkout, `git describe` (taken once)."""
    if not _CODE:
        from .. import __version__

        desc = ""
        try:
            import subprocess
            from pathlib import Path

            out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                                 capture_output=True, text=True, timeout=5)
            desc = out.stdout.strip()
        except (OSError, ValueError):
            desc = ""
        _CODE.append(f"crbr {__version__}" + (f" ({desc})" if re.fullmatch(r"[\w.\-+]+", desc or "-") and desc else ""))
    return _CODE[0]
