"""Models: one file each, all on the contract of `crbr.models.base.Recommender`; the registry
builds them from settings and a dataset and rebuilds them from checkpoints."""

from .base import DataContext, LossOutput, Recommender
from .crbr_model import CRBR, CRBRConfig, PathOptions
from .dgi import DGI, DGIConfig
from .generative import GenerativeConfig, GenerativeRetriever
from .pinnerformer import PinnerFormer, PinnerFormerConfig
from .qformer import QFormer, QFormerConfig, QFormerOutput
from .registry import ALIASES, MODELS, build_model, canonical_name, load_model, load_model_from_checkpoint, model_config
from .residual_mixture import ResidualMixture, ResidualMixtureConfig
from .sasrec import SASRec, SASRecConfig
from .set_transformer import SetTransformerConfig, SetTransformerRetriever, TwoTower, TwoTowerConfig

__all__ = ["DataContext", "LossOutput", "Recommender", "SASRec", "SASRecConfig", "QFormer", "QFormerConfig",
           "QFormerOutput", "PinnerFormer", "PinnerFormerConfig", "SetTransformerRetriever", "SetTransformerConfig",
           "TwoTower", "TwoTowerConfig", "CRBR", "CRBRConfig", "PathOptions", "GenerativeRetriever", "GenerativeConfig",
           "DGI", "DGIConfig", "ResidualMixture", "ResidualMixtureConfig", "MODELS", "ALIASES", "build_model",
           "canonical_name", "load_model", "load_model_from_checkpoint", "model_config"]
