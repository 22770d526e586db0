"""Events, datasets and splits: loaders for real logs, preprocessing + cache, the synthetic world."""

from .batching import TrainUsers, eval_batches, history_batch, train_batch
from .dataset import (EvalSet, SequenceDataset, Split, leave_k_out, leave_one_out, make_split, temporal_split,
                      train_item_counts)
from .loaders import (
    ColumnMap,
    ItemColumnMap,
    load_item_metadata,
    load_movielens,
    load_movielens_100k,
    load_pairs,
    load_sequences,
    load_table,
    load_taobao,
)
from .prepare import KNOWN_DATASETS, DataConfig, prepare, prepare_with_split
from .preprocess import PreprocessConfig, build_dataset
from .schema import DEFAULT_ACTIONS, RatingThresholds, RawEvents
from .synthetic import SyntheticConfig, SyntheticWorld, generate

__all__ = [
    "ColumnMap", "DataConfig", "DEFAULT_ACTIONS", "EvalSet", "ItemColumnMap", "KNOWN_DATASETS",
    "PreprocessConfig", "RatingThresholds", "RawEvents", "SequenceDataset", "Split", "SyntheticConfig",
    "SyntheticWorld", "TrainUsers", "build_dataset", "eval_batches", "generate", "history_batch",
    "leave_k_out", "leave_one_out", "load_item_metadata", "load_movielens", "load_movielens_100k", "load_pairs",
    "load_sequences", "load_table", "load_taobao", "make_split", "prepare", "prepare_with_split", "temporal_split",
    "train_batch", "train_item_counts",
]
