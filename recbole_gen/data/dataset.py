"""RecBole datasets that own their item images, and ``create_dataset``.

``ItemImagesMixin`` extends a RecBole dataset class the way RecBole-GNN's ``SocialDataset`` does: it
overrides one processing step and calls ``super()``. Before RecBole filters and remaps, the item image
store is built once from the raw item tokens (validating every image, under ``image_policy``); under
``image_policy: skip`` the items without a usable image are dropped there, so they get no id and every
model sees the same, smaller catalogue. After remapping, the store is re-ordered to RecBole's internal
ids. Splits are shallow copies, so the model, the evaluation and the gallery share one store.

``create_dataset`` builds a built-in dataset if needed, then picks recbole-gen's ``<Model>Dataset`` or
an image dataset class when the run needs images, and falls back to RecBole's (as RecBole-GNN does).
"""
import importlib
import logging

import numpy as np
import pandas as pd
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data.dataset import Dataset, SequentialDataset
from recbole.utils import ModelType

from recbole_gen.data.atomic_files import check_atomic_files
from recbole_gen.data.builtin import DatasetFormatError, ensure_dataset_files
from recbole_gen.data.images import ItemImageStore, dataset_folder
from recbole_gen.files import folder_lock


class ItemImagesMixin:
    """Mix in before a RecBole dataset class: ``dataset.image_store`` holds the item images by internal id."""

    image_store = None

    def _data_processing(self):
        self.image_store = ItemImageStore.from_tokens(self.config, ["[PAD]", *self._raw_item_tokens()])
        if self.config["image_policy"] == "skip":
            self._drop_items(set(self.image_store.problem_items()))
        super()._data_processing()
        tokens = self.id2token(self.iid_field, np.arange(self.item_num))
        self.image_store = self.image_store.select(tokens)

    def _raw_item_tokens(self):
        columns = [feat[self.iid_field] for feat in (self.item_feat, self.inter_feat)
                   if feat is not None and self.iid_field in feat]
        return pd.unique(pd.concat(columns).astype(str)) if columns else []

    def _drop_items(self, tokens):
        if not tokens:
            return
        for name in ("inter_feat", "item_feat"):
            feat = getattr(self, name, None)
            if feat is not None and self.iid_field in feat:
                setattr(self, name, feat[~feat[self.iid_field].astype(str).isin(tokens)].reset_index(drop=True))
        logging.getLogger().warning(
            f"image_policy=skip: dropped {len(tokens)} item(s) without a usable image: "
            f"{', '.join(sorted(tokens)[:10])}{' ...' if len(tokens) > 10 else ''}"
        )


class ImageDataset(ItemImagesMixin, Dataset):
    """RecBole's ``Dataset`` (general and context models) with item images."""


class ImageSequentialDataset(ItemImagesMixin, SequentialDataset):
    """RecBole's ``SequentialDataset`` with item images."""


IMAGE_DATASETS = {ModelType.SEQUENTIAL: ImageSequentialDataset}


def create_dataset(config, images=False, build=True):
    """The dataset for ``config``: recbole-gen's ``<Model>Dataset`` if there is one, an image dataset when
    ``images`` (the model or the metrics need item images) or ``image_policy: skip``, else RecBole's own.
    Reads under the dataset folder's shared lock, so a concurrent rebuild waits; ``build``: build a missing
    built-in dataset (:func:`~recbole_gen.data.builtin.ensure_dataset_files`)."""
    ensure_dataset_files(config, build)
    with folder_lock(dataset_folder(config)):
        check_atomic_files(config)
        dataset_class = getattr(importlib.import_module("recbole_gen.data.dataset"), config["model"] + "Dataset", None)
        if dataset_class is None and (images or config["image_policy"] == "skip"):
            dataset_class = IMAGE_DATASETS.get(config["MODEL_TYPE"], ImageDataset)
        try:
            return dataset_class(config) if dataset_class is not None else recbole_create_dataset(config)
        except ValueError as error:
            if "Some feat is empty" not in str(error):
                raise
            raise DatasetFormatError(_empty(config)) from None


def _empty(config):
    """What to tell a user whose dataset ends up without interactions (RecBole says "Some feat is empty")."""
    inter = dataset_folder(config) / f"{config['dataset']}.inter"
    if inter.is_file() and _non_blank_lines(inter, config["encoding"]) <= 1:
        return f"{inter} has a header but no interactions: add rows (user, item, timestamp), see docs/data.md"
    return (f"dataset '{config['dataset']}' in {dataset_folder(config)}: every interaction (or item) was filtered "
            f"out; check user_inter_num_interval, item_inter_num_interval, val_interval, load_col and image_policy")


def _non_blank_lines(path, encoding):
    with path.open(encoding=encoding) as lines:
        return sum(1 for line in lines if line.strip())
