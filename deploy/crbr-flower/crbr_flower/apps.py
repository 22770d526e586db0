"""Re-exports crbr's ServerApp and ClientApp so that `flwr run` finds them inside the app."""

from crbr.federated.app import client_app, server_app

__all__ = ["client_app", "server_app"]
