"""Data: readers for image datasets (files, archives, CIFAR, Hugging Face; in memory or streamed), random labels, batched device-side transforms, batch order."""
from .config import RECIPES, DataConfig, recipe_overrides
from .labels import load_labels, random_labels, save_labels
from .loader import epoch_batches, epoch_permutation, eval_batches, num_batches
from .readers import (DataSplits, bundled_path, cap_per_class, default_data_root, detect_format,
                      load_imageset_splits, read_dataset, stratified_split)
from .cifar import read_cifar
from .transforms import (apply_autoaugment, apply_crop_params, augment_batch, check_augment, eval_transform,
                         normalize, preprocess_eval, sample_crop_params, seeded_global_rng, train_transform)
from .stream import LazyImageSet, stream_batches
from .types import ImageSet

__all__ = [
    "DataConfig", "DataSplits", "ImageSet", "LazyImageSet", "stream_batches", "RECIPES", "recipe_overrides",
    "load_imageset_splits", "read_dataset", "read_cifar", "bundled_path", "default_data_root", "detect_format",
    "stratified_split", "cap_per_class",
    "random_labels", "save_labels", "load_labels",
    "normalize", "train_transform", "eval_transform", "preprocess_eval", "sample_crop_params", "apply_crop_params",
    "augment_batch", "apply_autoaugment", "check_augment", "seeded_global_rng",
    "epoch_batches", "eval_batches", "epoch_permutation", "num_batches",
]
