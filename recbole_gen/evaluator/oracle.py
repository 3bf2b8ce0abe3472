"""OracleUtility: a simulated user's utility for a generated image.

A dataset with a saved user simulator (emoji-seq) knows each simulated user's utility for each
*catalogue* item. A generated image is judged through the evaluation encoder: its utility is the
mean simulator utility of its ``k`` nearest catalogue items (``eval_oracle_k``, default 1), so an
image that looks like an item the user likes scores what that item scores.

The judge is pluggable: ``eval_oracle: "package.module:factory"`` names
``factory(config, dataset, catalogue) -> judge``, where ``judge(user_ids LongTensor[B],
sample_emb FloatTensor[B, n, D], nearest_ids LongTensor[B, n]) -> FloatTensor[B, n]``. With
``eval_oracle: ~`` the dataset's simulator is used if ``recbole_gen.data`` provides one
(``load_simulator(config, dataset)`` returning an object with ``utility(user_ids, item_ids) ->
FloatTensor`` over RecBole internal ids); otherwise OracleUtility is NaN.
"""
import importlib
import logging

import torch

from recbole_gen.retrieval.index import as_catalogue_index


class KNNOracleJudge:
    """Utility of a generated image = mean ``utility_fn(user, item)`` over its ``k`` nearest
    catalogue items (internal ids)."""

    def __init__(self, utility_fn, index=None, k=1):
        self.utility_fn, self.index, self.k = utility_fn, None if index is None else as_catalogue_index(index), int(k)

    def __call__(self, user_ids, sample_emb, nearest_ids):
        batch, n = nearest_ids.shape
        if self.k == 1 or self.index is None:
            items = nearest_ids
        else:
            _, items = self.index.search(sample_emb.reshape(batch * n, -1), self.k)
        items = items.reshape(batch, -1)
        utility = torch.as_tensor(self.utility_fn(user_ids, items.clamp(min=0))).float().reshape(batch, -1)
        utility = utility.masked_fill(items < 0, float("nan"))
        return utility.view(batch, n, -1).nanmean(dim=2)


def build_oracle_judge(config, dataset, catalogue):
    """The judge for OracleUtility, or None when the dataset has no simulator."""
    from recbole_gen.data.simulator import load_simulator

    spec, k = config["eval_oracle"], config["eval_oracle_k"]
    if spec:
        module, _, attr = str(spec).partition(":")
        factory = getattr(importlib.import_module(module), attr or "build_judge")
        return factory(config, dataset, catalogue)
    simulator = load_simulator(config, dataset)
    if simulator is None:
        return None
    logging.getLogger().info(f"OracleUtility: simulator {type(simulator).__name__}, judge = mean of {k} nearest items")
    return KNNOracleJudge(simulator.utility, catalogue.index, k=k)
