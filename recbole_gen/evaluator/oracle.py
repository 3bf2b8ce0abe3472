"""OracleUtility: how much the user would like a generated image, by the dataset's judge.

A dataset with a judge file (:mod:`recbole_gen.data.judge`; emoji-seq writes its simulator's truth as one) knows each
user's utility for each *catalogue* item at each point of their sequence. A generated image is judged through the
evaluation encoder: its utility is the mean utility of its ``k`` nearest catalogue items (``eval_oracle_k``, default
1), so an image that looks like an item the user likes scores what that item scores, and an image whose nearest item
the user already took scores the judge's repeat utility (0 on emoji-seq, whose users never take an item twice): a
copy of the last item earns nothing.

The judge is pluggable: ``eval_oracle: "package.module:factory"`` names ``factory(config, dataset, catalogue) ->
judge``, where ``judge(user_ids LongTensor[B], sample_emb FloatTensor[B, n, D], nearest_ids LongTensor[B, n],
positions LongTensor[B], consumed LongTensor[B, c]) -> FloatTensor[B, n]`` (``positions``: the judged interaction's
index in the user's sequence; ``consumed``: the items the user took before it, 0-padded). With ``eval_oracle: ~`` the
dataset's judge file is used if it has one; otherwise OracleUtility is NaN.
"""
import importlib
import logging

import torch

from recbole_gen.retrieval.index import as_catalogue_index


class KNNOracleJudge:
    """Utility of a generated image = mean ``utility_fn(users, items, positions, consumed)`` over its ``k`` nearest
    catalogue items (internal ids)."""

    def __init__(self, utility_fn, index=None, k=1):
        self.utility_fn, self.index, self.k = utility_fn, None if index is None else as_catalogue_index(index), int(k)

    def __call__(self, user_ids, sample_emb, nearest_ids, positions, consumed):
        batch, n = nearest_ids.shape
        if self.k == 1 or self.index is None:
            items = nearest_ids
        else:
            _, items = self.index.search(sample_emb.reshape(batch * n, -1), self.k)
        items = items.reshape(batch, -1)
        utility = torch.as_tensor(self.utility_fn(user_ids, items.clamp(min=0), positions, consumed)).float()
        utility = utility.reshape(batch, -1).masked_fill(items < 0, float("nan"))
        return utility.view(batch, n, -1).nanmean(dim=2)


def build_oracle_judge(config, dataset, catalogue):
    """The judge for OracleUtility, or None when the dataset has no judge file."""
    from recbole_gen.data.judge import load_judge

    spec, k = config["eval_oracle"], config["eval_oracle_k"]
    if spec:
        module, _, attr = str(spec).partition(":")
        factory = getattr(importlib.import_module(module), attr or "build_judge")
        return factory(config, dataset, catalogue)
    judge = load_judge(config, dataset)
    if judge is None:
        return None
    logging.getLogger().info(f"OracleUtility: judge file over '{judge.judge.field}', an image's utility = mean of its "
                             f"{k} nearest items', a repeat worth {judge.judge.repeat_utility:g}")
    return KNNOracleJudge(judge.utility, catalogue.index, k=k)
