"""Data sets in memory: loaders by name, splits, samplers and augmentation.

The names below are the package's public face (what launchers and analysis use);
the modules hold one concern each: image_set (the in-memory form), registry (names ->
loaders), image_files (listing and threaded decoding shared by the file loaders), mnist /
folder / lfw / cub / cars / sop / inshop / synthetic_signs / packed (formats), splits,
samplers, augment. `python -m runner.data pack` is __main__.py.
"""

from runner.data.image_files import decode_image
from runner.data.image_set import DataShape, ImageSet, drop_rare_classes, resize_uint8
from runner.data.paths import IMAGE_SUFFIXES
from runner.data.registry import check_data, dataset_names, describe_data, load_dataset
from runner.data.splits import Splits, n_train_classes, split_dataset

__all__ = ["IMAGE_SUFFIXES", "DataShape", "ImageSet", "Splits", "check_data", "dataset_names", "decode_image",
           "describe_data", "drop_rare_classes", "load_dataset", "n_train_classes", "resize_uint8", "split_dataset"]
