"""``create_dataset`` that prepares built-in datasets, then tries recbole-gen's classes and
falls back to RecBole's (as RecBole-GNN does).

Under ``image_policy: skip`` the items without a usable image are dropped from the raw
interaction and item tables before RecBole filters and remaps them, so they get no id at all
and every model (SASRec included) sees the same, smaller catalogue.
"""
import contextlib
import importlib
import logging

from recbole.data import create_dataset as recbole_create_dataset
from recbole.data.dataset import dataset as recbole_dataset

from recbole_gen.data.builtin import ensure_dataset_files


def create_dataset(config):
    ensure_dataset_files(config)
    with _dropping_items(_items_to_skip(config)):
        dataset_class = getattr(importlib.import_module("recbole_gen.data.dataset"), config["model"] + "Dataset", None)
        if dataset_class is not None:
            return dataset_class(config)
        return recbole_create_dataset(config)


def _items_to_skip(config):
    if config["image_policy"] != "skip":
        return set()
    from recbole_gen.data.images import items_without_images

    return items_without_images(config)


@contextlib.contextmanager
def _dropping_items(tokens):
    """While RecBole builds a dataset: remove ``tokens`` from inter_feat and item_feat first."""
    if not tokens:
        yield
        return
    original = recbole_dataset.Dataset._data_filtering

    def _data_filtering(self):
        iid = self.iid_field
        for name in ("inter_feat", "item_feat"):
            feat = getattr(self, name, None)
            if feat is not None and iid in feat:
                drop = feat[iid].astype(str).isin(tokens)
                if drop.any():
                    setattr(self, name, feat[~drop].reset_index(drop=True))
        logging.getLogger().warning(
            f"image_policy=skip: dropped {len(tokens)} item(s) without a usable image: "
            f"{', '.join(sorted(tokens)[:10])}{' ...' if len(tokens) > 10 else ''}"
        )
        return original(self)

    recbole_dataset.Dataset._data_filtering = _data_filtering
    try:
        yield
    finally:
        recbole_dataset.Dataset._data_filtering = original
