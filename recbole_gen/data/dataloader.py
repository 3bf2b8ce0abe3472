"""Splits and loaders as RecBole makes them, plus what a sequential evaluation needs to know of each row's past.

RecBole 1.2.1 evaluates every sequential model as "repeatable": its ``FullSortEvalDataLoader`` hands a sequential
model no history (general_dataloader.py, ``collate_fn``) and its ``Config`` refuses ``repeatable: False`` for one, so
a user's own past items stay in the ranking and use up slots even where no user ever takes an item twice (RecBole
issues #1449, #1823, #2038). :func:`data_preparation` is RecBole's, with the validation and test loaders of a
sequential model replaced by :class:`SequentialFullSortEvalDataLoader`, which

* adds each row's **consumed items** to the batch (:data:`CONSUMED`: every item the user took before the row's
  target, oldest first, 0-padded; not cut to ``MAX_ITEM_LIST_LENGTH`` as ``item_id_list`` is), which the image
  evaluation reads for repeat-aware judging and a generator reads to plan only what the user can still take;
* with ``repeatable: False`` also returns them as RecBole's ``history_index``, so RecBole's own trainer masks them
  from every model's ranking, exactly as it masks a general model's training items.
"""
from logging import getLogger

import numpy as np
import torch
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import ModelType

#: batch field: each row's consumed items (0-padded, oldest first)
CONSUMED = "consumed_items"


class ConsumedItems:
    """Every user's items in time order as a sequential dataset holds them, and where each row's past ends.

    RecBole's augmentation turns a user's sequence ``i1 .. in`` into rows ``<i1> | i2``, ``<i1, i2> | i3``, ...: the
    user's sequence is the first row's item list followed by the rows' targets, and the row with the ``k``-th target
    (from 0) has consumed the first ``prefix + k`` of them. Built once from the whole dataset (before or after
    RecBole's split, which re-sorts it by time), then :meth:`rows` finds any split's rows in it."""

    def __init__(self, dataset):
        inter = dataset.inter_feat
        uid, time = inter[dataset.uid_field].numpy(), inter[dataset.time_field].numpy()
        order = np.lexsort((np.arange(len(uid)), time, uid))
        uid, time, targets = uid[order], time[order], inter[dataset.iid_field].numpy()[order]
        lists = inter[dataset.item_id_list_field].numpy()[order]
        first = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])  # each user's earliest row
        rows_per_user = np.diff(np.r_[first, len(uid)])
        user = np.repeat(np.arange(len(first)), rows_per_user)
        rank = np.arange(len(uid)) - first[user]
        prefix = inter[dataset.item_list_length_field].numpy()[order][first]
        start = np.r_[0, np.cumsum(prefix + rows_per_user)[:-1]]
        self.items = np.zeros(int((prefix + rows_per_user).sum()), dtype=np.int64)
        self.items[start[user] + prefix[user] + rank] = targets
        owner = np.repeat(np.arange(len(first)), prefix)
        offset = np.arange(len(owner)) - np.repeat(np.cumsum(prefix) - prefix, prefix)
        self.items[start[owner] + offset] = lists[first[owner], offset]
        self._start, self._length = start[user], prefix[user] + rank
        self._times = np.unique(time)
        self._key, self._targets = self._keys(uid, time), targets

    def _keys(self, uid, time):
        """One sortable int64 per (user, time): a user's rows in time order have increasing keys."""
        return uid.astype(np.int64) * (len(self._times) + 1) + np.searchsorted(self._times, time)

    def rows(self, dataset):
        """``(start, length)`` into :attr:`items` of each row of ``dataset`` (a split of the same dataset): the row's
        consumed items are ``items[start:start + length]``."""
        inter = dataset.inter_feat
        keys = self._keys(inter[dataset.uid_field].numpy(), inter[dataset.time_field].numpy())
        targets = inter[dataset.iid_field].numpy()
        found = np.minimum(np.searchsorted(self._key, keys), max(len(self._key) - 1, 0))
        for row in np.flatnonzero(self._targets[found] != targets):  # a user's rows sharing one timestamp
            while found[row] + 1 < len(self._key) and self._key[found[row]] == keys[row] \
                    and self._targets[found[row]] != targets[row]:
                found[row] += 1
        if len(keys) and ((self._key[found] != keys) | (self._targets[found] != targets)).any():
            raise ValueError("an evaluation row of the split has no counterpart in the dataset it was split from")
        return self._start[found], self._length[found]


def training_counts(dataset):
    """Interactions per item ``FloatTensor[item_num]`` in a training split: every row's item, and for a sequential
    split also each user's first item (which RecBole's augmentation keeps only in the first row's ``item_id_list``)."""
    inter = dataset.inter_feat
    items = [inter[dataset.iid_field]]
    if isinstance(dataset, SequentialDataset):
        first_rows = inter[dataset.item_list_length_field] == 1
        items.append(inter[dataset.item_id_list_field][first_rows, 0])
    return torch.bincount(torch.cat(items), minlength=dataset.item_num).float()


class SequentialFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's full-sort evaluation loader for a sequential model, with each row's consumed items
    (:data:`CONSUMED`) in the batch and, under ``repeatable: False``, as ``history_index`` (masked by the trainer)."""

    def __init__(self, config, dataset, sampler, consumed, shuffle=False):
        self.consumed = consumed
        self.consumed_start, self.consumed_length = consumed.rows(dataset)
        self.repeatable = config["repeatable"]
        super().__init__(config, dataset, sampler, shuffle=shuffle)

    def collate_fn(self, index):
        interaction, _, positive_u, positive_i = super().collate_fn(index)
        index = np.asarray(index)
        starts, lengths = self.consumed_start[index], self.consumed_length[index]
        rows = np.repeat(np.arange(len(index)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        items = torch.from_numpy(self.consumed.items[np.repeat(starts, lengths) + offsets].astype(np.int64))
        rows, offsets = torch.from_numpy(rows), torch.from_numpy(offsets)
        padded = torch.zeros((len(index), max(1, int(lengths.max(initial=0)))), dtype=torch.long)
        padded[rows, offsets] = items
        interaction.update(Interaction({CONSUMED: padded}))
        return interaction, None if self.repeatable else (rows, items), positive_u, positive_i


def data_preparation(config, dataset):
    """RecBole's ``data_preparation``; a sequential model's full-sort validation and test loaders know each row's
    consumed items (:class:`SequentialFullSortEvalDataLoader`)."""
    train_data, valid_data, test_data = recbole_data_preparation(config, dataset)
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return train_data, valid_data, test_data
    consumed = ConsumedItems(dataset)
    loaders = [train_data]
    for loader in (valid_data, test_data):
        if type(loader) is FullSortEvalDataLoader:
            loader = SequentialFullSortEvalDataLoader(config, loader._dataset, loader._sampler, consumed)
        loaders.append(loader)
    if not config["repeatable"]:
        getLogger().info("repeatable: False: each user's consumed items are left out of every evaluated ranking")
    return tuple(loaders)
