"""The simulated users' ground truth as seen from RecBole's internal ids (for OracleUtility).

``load_simulator(config, dataset)`` returns None for a dataset without a saved simulator, else an
object whose ``utility(user_ids, item_ids, positions=None)`` gives each (user, item) pair's oracle
utility in [0, 1] (see :meth:`recbole_gen.data.emoji_seq.EmojiSeqTruth.utility`).
"""
from pathlib import Path

import numpy as np
import torch

from recbole_gen.data.emoji_seq import NAME as EMOJI_SEQ, EmojiSeqTruth


class SimulatorUtility:
    """``EmojiSeqTruth`` over RecBole internal user/item ids.

    ``positions`` (per pair, index into the user's chronological sequence) defaults to each user's
    last position, the test target of RecBole's leave-one-out split (``LS: valid_and_test``,
    ``order: TO``): the utility of an image shown in place of the held-out test item.
    """

    def __init__(self, truth, user_tokens, item_tokens):
        self.truth = truth
        user_row = {u: k for k, u in enumerate(truth.users)}
        item_row = {t: k for k, t in enumerate(truth.items)}
        self.user_rows = np.array([user_row.get(str(t), -1) for t in user_tokens])
        self.item_subgroups = np.array([truth.item_subgroups[item_row[str(t)]] if str(t) in item_row else -1
                                        for t in item_tokens])
        self.lengths = np.diff(truth.offsets)

    def subgroup_distribution(self, user_ids, positions=None):
        """[n, n_subgroups]: the simulator's subgroup distribution for each user at each position."""
        user_ids = np.asarray(user_ids).reshape(-1)
        rows = self.user_rows[user_ids]
        if (rows < 0).any():
            raise KeyError(f"internal user ids {user_ids[rows < 0][:10].tolist()} are not simulated users")
        positions = self.lengths[rows] - 1 if positions is None else np.asarray(positions).reshape(-1)
        return np.stack([self.truth.next_subgroup_distribution(self.truth.users[r], int(p))
                         for r, p in zip(rows, positions)])

    def utility(self, user_ids, item_ids, positions=None):
        """FloatTensor of utilities, shaped like ``item_ids`` ([B] or [B, n], one user per row);
        NaN for padding / items outside the simulated catalogue."""
        users = torch.as_tensor(user_ids).reshape(-1).cpu().numpy()
        items = torch.as_tensor(item_ids).cpu().numpy()
        shape = items.shape
        items = items.reshape(len(users), -1)
        q = self.subgroup_distribution(users, positions)
        q = q / q.max(axis=1, keepdims=True)
        subs = self.item_subgroups[items]
        out = np.take_along_axis(q, np.clip(subs, 0, None), axis=1)
        out[subs < 0] = np.nan
        return torch.from_numpy(out.reshape(shape)).float()


def load_simulator(config, dataset):
    """The simulator of a dataset folder that has one (emoji-seq), else None."""
    folder = Path(config["data_path"])
    if not (folder / f"{EMOJI_SEQ}.truth.npz").is_file():
        return None
    truth = EmojiSeqTruth.load(folder)
    users = dataset.id2token(dataset.uid_field, np.arange(dataset.user_num))
    items = dataset.id2token(dataset.iid_field, np.arange(dataset.item_num))
    return SimulatorUtility(truth, users, items)
