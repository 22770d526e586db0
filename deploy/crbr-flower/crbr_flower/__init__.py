"""Flower App wrapper: the components live in the installed `crbr` package (crbr.federated.app)."""
