"""Datasets: item images (format, validation, caching), built-in datasets, ``create_dataset`` and ``data_preparation``."""
from recbole_gen.data.builtin import DatasetNotFoundError, build_dataset, ensure_dataset_files, register_dataset
from recbole_gen.data import emoji_seq  # noqa: F401  (registers the built-in 'emoji-seq')
from recbole_gen.data.dataset import ImageDataset, ImageSequentialDataset, create_dataset
from recbole_gen.data.dataloader import CONSUMED, data_preparation
from recbole_gen.data.images import ItemImageError, ItemImageStore

__all__ = ["CONSUMED", "DatasetNotFoundError", "ImageDataset", "ImageSequentialDataset", "ItemImageError", "ItemImageStore",
           "build_dataset", "create_dataset", "data_preparation", "ensure_dataset_files", "register_dataset"]
