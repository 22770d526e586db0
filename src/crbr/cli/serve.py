"""`crbr serve`: the retrieval service over HTTP (crbr.serve), and the checkpoint options of
`crbr index build` / `crbr retrieve` (crbr.index.cli).

  crbr index build --checkpoint runs/x/checkpoints/best.safetensors --kind hnsw --out idx/
  CRBR_API_KEY=secret crbr serve --checkpoint runs/x/checkpoints/best.safetensors --index idx/ --port 8000
  curl -H 'Authorization: Bearer secret' -d '{"events": [{"item": "1193"}], "k": 10}' localhost:8000/v1/retrieve

Reload: `kill -HUP <pid>` or POST /v1/admin/reload loads the same paths again (replace the files
there, e.g. by renaming new ones over them) and swaps the new model in without failing a request.
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_commands(sub) -> None:
    """Add `crbr serve`, and (when crbr.cli.main built them) the checkpoint options of
    `crbr index build` / `crbr retrieve` and the `crbr index catalogue` command."""
    if "serve" not in sub.choices:
        _add_serve(sub)
    idx, rt = sub.choices.get("index"), sub.choices.get("retrieve")
    if idx is not None and rt is not None:
        isub = next((a for a in idx._actions if isinstance(a, argparse._SubParsersAction)), None)
        build = isub.choices.get("build") if isub is not None else None
        if build is not None and "--checkpoint" not in build._option_string_actions:
            from ..index.cli import extend_parsers

            extend_parsers(build, rt, isub)


def _add_serve(sub) -> None:
    from ..serve.schemas import Limits

    lim = Limits()
    sp = sub.add_parser("serve", help="serve a trained model over HTTP (top-k retrieval; docs at /docs)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    sp.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by crbr train")
    sp.add_argument("--index", help="an item index folder written by `crbr index build --checkpoint` (vector "
                                    "models; default: exact ranking by the model)")
    sp.add_argument("--catalogue", help="the id maps (written by `crbr index catalogue` or next to the index); "
                                        "default: the index folder's, else prepared from the checkpoint's dataset")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--max-batch", type=int, default=32, help="requests per batched model call (1 = no batching)")
    sp.add_argument("--max-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill (ms, default 2)")
    sp.add_argument("--queue-size", type=int, default=256, help="accepted requests waiting for the model; "
                                                                "beyond it 503 + Retry-After (default 256)")
    sp.add_argument("--request-timeout", type=float, default=30.0, help="seconds from acceptance to answer (504)")
    sp.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (413; default 1 MiB)")
    sp.add_argument("--max-events", type=int, default=lim.max_events, help="history events per user (default %(default)s)")
    sp.add_argument("--max-k", type=int, default=lim.max_k, help="largest k (default %(default)s)")
    sp.add_argument("--max-users", type=int, default=lim.max_users, help="users per /v1/retrieve:batch (default %(default)s)")
    sp.add_argument("--api-key-env", default="CRBR_API_KEY",
                    help="environment variable holding the API key (set: required on every route but health)")
    sp.add_argument("--param", action="append", metavar="NAME=VALUE", help="index search setting (ef_search, nprobe, ...)")
    sp.add_argument("--threads", type=int, default=0, help="torch / FAISS threads (default: the libraries' default)")
    sp.add_argument("--allow-index-mismatch", action="store_true",
                    help="serve an index / catalogue recorded as built from another checkpoint")
    sp.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sp.set_defaults(func=cmd_serve)


def settings_from_args(args):
    from ..index.cli import _params
    from ..serve import Limits, ServeSettings

    limits = Limits(max_events=args.max_events, max_k=args.max_k, max_users=args.max_users)
    return ServeSettings(checkpoint=args.checkpoint, index=args.index, catalogue=args.catalogue, host=args.host,
                         port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         queue_size=args.queue_size, request_timeout_s=args.request_timeout,
                         max_body_bytes=args.max_body_bytes, limits=limits, api_key_env=args.api_key_env,
                         threads=args.threads, index_params=_params(args.param),
                         allow_index_mismatch=args.allow_index_mismatch)


def cmd_serve(args) -> int:
    import os

    import uvicorn

    from ..serve import LoadError, ModelHost, create_app

    settings = settings_from_args(args)
    if settings.threads > 0:
        import faiss
        import torch

        torch.set_num_threads(settings.threads)
        faiss.omp_set_num_threads(settings.threads)
    host = ModelHost(settings.checkpoint, settings.index, settings.catalogue, settings.index_params,
                     settings.allow_index_mismatch)
    try:
        snap = host.load()
    except LoadError as e:
        print(f"crbr serve: cannot serve: {e}", file=sys.stderr)
        return 1
    app = create_app(settings, host)
    key = "required" if os.environ.get(settings.api_key_env) else f"off (set ${settings.api_key_env} to require one)"
    logging.getLogger("crbr").info("serving %s (%s, %s mode, %s) on http://%s:%d (API key %s); docs at /docs",
                                   settings.checkpoint, snap.model_name, snap.mode, snap.catalogue, settings.host,
                                   settings.port, key)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=False, ws="none",
                timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":  # `python -m crbr.cli.serve ARGS` = `crbr serve ARGS`
    from crbr.cli.main import main as crbr_main

    sys.exit(crbr_main(["serve", *sys.argv[1:]]))
