"""Datasets: built-in dataset preparation, then RecBole's dataset classes."""
from recbole_gen.data.builtin import DatasetNotFoundError, ensure_dataset_files, register_dataset
from recbole_gen.data.utils import create_dataset

__all__ = ["DatasetNotFoundError", "create_dataset", "ensure_dataset_files", "register_dataset"]
