"""``create_dataset`` that prepares built-in datasets, then tries recbole-gen's classes and
falls back to RecBole's (as RecBole-GNN does)."""
import importlib

from recbole.data import create_dataset as recbole_create_dataset

from recbole_gen.data.builtin import ensure_dataset_files


def create_dataset(config):
    ensure_dataset_files(config)
    dataset_class = getattr(importlib.import_module("recbole_gen.data.dataset"), config["model"] + "Dataset", None)
    if dataset_class is not None:
        return dataset_class(config)
    return recbole_create_dataset(config)
