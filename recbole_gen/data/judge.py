"""OracleUtility's ground truth for any dataset: a judge file beside its atomic files.

A dataset folder may hold ``<dataset>.judge.npz``: how much each user would like an item at each point of their
sequence. emoji-seq's builder writes its simulator's truth in this format; a user study's labels or another
simulator can be exported to it, and OracleUtility (and the RL stage's ``oracle`` reward) then work on that dataset.

=================  ==============  ==================================================================================
array              shape, type     meaning
=================  ==============  ==================================================================================
``field``          ``()`` str      the ``.item`` column the utilities are over: a token field (``subgroup``: one
                                   utility per category) or the item id field (``item_id``: one per item)
``values``         ``[V]`` str     that column's values, one per utility column
``users``          ``[U]`` str     user tokens
``offsets``        ``[U+1]`` int   user ``u``'s rows are ``offsets[u] .. offsets[u+1] - 1``, one per position
                                   ``0, 1, ...``: position ``p`` is the user's ``p``-th interaction (from 0, in time
                                   order); a row after the last interaction judges the next, unobserved one
``utility``        ``[R, V]`` f32  the user's utility, in [0, 1], of an item with that value at that position
``repeat_utility`` ``()`` f32      the utility of an item the user already took before that position (emoji-seq:
                                   0, its simulated users never take an item twice)
=================  ==============  ==================================================================================
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recbole_gen.data.images import dataset_folder, read_item_columns
from recbole_gen.files import atomic_write

ARRAYS = ("field", "values", "users", "offsets", "utility", "repeat_utility")


class JudgeFileError(ValueError):
    """A judge file that cannot be read or does not follow the format; the message names the file."""


def judge_path(config):
    return dataset_folder(config) / f"{config['dataset']}.judge.npz"


@dataclass
class JudgeFile:
    """The arrays of a judge file (see the module docstring)."""

    field: str
    values: np.ndarray
    users: np.ndarray
    offsets: np.ndarray
    utility: np.ndarray
    repeat_utility: float

    def save(self, path):
        arrays = {"field": np.array(self.field), "values": np.asarray(self.values).astype(str),
                  "users": np.asarray(self.users).astype(str), "offsets": np.asarray(self.offsets, dtype=np.int64),
                  "utility": np.asarray(self.utility, dtype=np.float32),
                  "repeat_utility": np.array(self.repeat_utility, dtype=np.float32)}
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))

    @classmethod
    def load(cls, path):
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [name for name in ARRAYS if name not in data.files]
                if missing:
                    raise JudgeFileError(f"{path}: a judge file needs the arrays {', '.join(ARRAYS)}; missing "
                                         f"{', '.join(missing)} (format: recbole_gen/data/judge.py, docs/evaluation.md)")
                judge = cls(str(data["field"]), data["values"].astype(str), data["users"].astype(str),
                            data["offsets"].astype(np.int64), data["utility"].astype(np.float32),
                            float(data["repeat_utility"]))
        except (OSError, ValueError) as error:
            if isinstance(error, JudgeFileError):
                raise
            raise JudgeFileError(f"{path}: not a readable judge file ({error})") from None
        judge.check(path)
        return judge

    def check(self, path):
        problems = []
        if len(self.offsets) != len(self.users) + 1 or self.offsets[0] != 0 or (np.diff(self.offsets) < 0).any():
            problems.append(f"offsets must run from 0 up to the row count, one more than the {len(self.users)} users")
        elif self.utility.ndim != 2 or self.utility.shape != (self.offsets[-1], len(self.values)):
            problems.append(f"utility must be [{self.offsets[-1]} rows, {len(self.values)} values], "
                            f"got {list(self.utility.shape)}")
        elif not ((self.utility >= 0) & (self.utility <= 1)).all():
            problems.append("utilities must lie in [0, 1]")
        if not 0 <= self.repeat_utility <= 1:
            problems.append(f"repeat_utility must lie in [0, 1], got {self.repeat_utility}")
        if problems:
            raise JudgeFileError(f"{path}: {'; '.join(problems)} (format: recbole_gen/data/judge.py)")


class DatasetJudge:
    """A judge file over RecBole's internal ids: ``utility(users, items, positions, consumed)``."""

    def __init__(self, judge, dataset):
        self.judge = judge
        row = {token: k for k, token in enumerate(judge.users)}
        self.user_rows = np.array([row.get(str(t), -1) for t in dataset.id2token(dataset.uid_field, np.arange(dataset.user_num))])
        column = {value: k for k, value in enumerate(judge.values)}
        tokens = dataset.id2token(dataset.iid_field, np.arange(dataset.item_num))
        if judge.field == dataset.iid_field:
            values = [str(t) for t in tokens]
        else:
            columns, header = read_item_columns(dataset.config, [judge.field])
            if judge.field not in columns:
                raise JudgeFileError(f"the judge file is over the .item column '{judge.field}', which "
                                     f"{dataset.dataset_name}.item does not have (columns: {header})")
            values = [columns[judge.field].get(str(t), "") for t in tokens]
        self.item_columns = np.array([column.get(v, -1) for v in values])
        self.item_columns[0] = -1  # padding

    def utility(self, user_ids, item_ids, positions, consumed=None):
        """``FloatTensor`` shaped like ``item_ids [B, m]`` (one user per row): each item's utility for the row's user
        at ``positions [B]`` (the index of the judged interaction in the user's sequence), ``repeat_utility`` for an
        item of the row's ``consumed [B, c]`` (0-padded); NaN for padding, unknown users and items outside the file."""
        users = torch.as_tensor(user_ids).reshape(-1).cpu().numpy()
        items = torch.as_tensor(item_ids).cpu().numpy().reshape(len(users), -1)
        positions = np.asarray(torch.as_tensor(positions).cpu()).reshape(-1)
        rows = self.user_rows[users]
        offsets = self.judge.offsets
        start = np.where(rows >= 0, offsets[np.maximum(rows, 0)], 0)
        count = np.where(rows >= 0, offsets[np.maximum(rows, 0) + 1] - start, 0)
        valid = (positions >= 0) & (positions < count)
        line = np.where(valid, start + np.clip(positions, 0, None), 0)
        columns = self.item_columns[items]
        out = self.judge.utility[line[:, None], np.maximum(columns, 0)].astype(np.float32)
        out[(columns < 0) | ~valid[:, None]] = np.nan
        if consumed is not None:
            consumed = torch.as_tensor(consumed).cpu().numpy().reshape(len(users), -1)
            taken = (items[:, :, None] == consumed[:, None, :]).any(-1) & (items > 0)
            out[taken] = self.judge.repeat_utility
        return torch.from_numpy(out)


def load_judge(config, dataset):
    """The dataset's judge (its ``<dataset>.judge.npz``) over internal ids, or None when the folder has none."""
    path = judge_path(config)
    return DatasetJudge(JudgeFile.load(path), dataset) if path.is_file() else None
