"""Checkpoint files moved to `crbr.checkpoint` (file I/O, below the models) and
`crbr.models.load_model` (rebuilding a model); these names stay importable from here."""

from ..checkpoint import (atomic_write_text, embedded_config, load_state, load_weights, read_metadata,  # noqa: F401
                          save_state, save_weights)
from ..models.registry import load_model_from_checkpoint  # noqa: F401
