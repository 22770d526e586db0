"""The retrieval service: `crbr serve` answers top-k requests over HTTP for any trained model
through the common model contract (crbr.models.base), with micro-batching, scoped queries, hot
reload, Prometheus metrics and strict input checks.

    from crbr.serve import ServeSettings, create_app
    app = create_app(ServeSettings(checkpoint="runs/x/checkpoints/best.safetensors", index="idx/"))

Modules: app (routes, middleware, settings), batching (the queue and the worker), model_host
(loading, requests -> batches -> answers, reload), schemas (request / response bodies),
metrics (Prometheus).
"""

from .app import ServeSettings, create_app
from .model_host import LoadError, ModelHost, RequestError
from .schemas import Limits

__all__ = ["Limits", "LoadError", "ModelHost", "RequestError", "ServeSettings", "create_app"]
