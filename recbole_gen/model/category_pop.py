"""CategoryPop: "more of the categories you took lately, their popular items first", the category baseline.

Nothing is learnt but counts. An item's score is the recency-weighted frequency of its category (``category_field``:
a token field of the ``.item`` file, loaded through ``load_col``; emoji-seq's ``subgroup``) in the user's history, a
history item ``n`` steps back weighing ``category_decay ** n``; items of equally scored categories (and items of
categories the user never took) follow their popularity in the training split, and items equal in both follow the
seeded tie order (:mod:`recbole_gen.model.ties`), not their ids. Consumed items are left out by the evaluation under
``repeatable: False``, as for every ranker. It reads only what a deployment has (the history, the
items' categories, training counts), and its decay is chosen on validation like every ranker's settings
(benchmarks/baselines/).
"""
from dataclasses import dataclass

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import FeatureType, InputType

from recbole_gen.config import ConfigError, Settings
from recbole_gen.data.dataloader import training_counts
from recbole_gen.model.ties import tie_order
from recbole_gen.model.training_free import TrainingFree


def item_categories(dataset, field):
    """``LongTensor[item_num]``: each item's value id of the token field ``field`` of the ``.item`` file (0 = none)."""
    if dataset.item_feat is None or field not in dataset.item_feat:
        raise ConfigError(f"category_field '{field}' is not a loaded item field of '{dataset.dataset_name}': add it "
                          f"to load_col's item list (load_col: {{inter: [...], item: [{dataset.iid_field}, {field}]}})")
    if dataset.field2type[field] != FeatureType.TOKEN:
        raise ConfigError(f"category_field '{field}' must be a token field (one category per item), it is "
                          f"{dataset.field2type[field].value}")
    return dataset.item_feat[field].long().clone()


@dataclass(frozen=True)
class CategoryPopSettings(Settings):
    """CategoryPop's keys (defaults in properties/model/CategoryPop.yaml)."""

    category_field: str
    category_decay: float

    def check(self):
        self.require(0 <= self.category_decay <= 1, "category_decay", "in [0, 1]")


class CategoryPop(TrainingFree, SequentialRecommender):
    input_type = InputType.POINTWISE
    settings_class = CategoryPopSettings

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.settings = CategoryPopSettings.from_config(config)
        self.register_buffer("item_category", item_categories(dataset, self.settings.category_field))
        self.register_buffer("item_count", training_counts(dataset))
        self.register_buffer("tie_order", tie_order(self.n_items, config["seed"]), persistent=False)

    def full_sort_predict(self, interaction):
        """``-rank`` of every item: categories by their weight in the history, then training popularity."""
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        steps_back = length.unsqueeze(1) - 1 - torch.arange(seq.shape[1], device=seq.device)
        weights = torch.where((steps_back >= 0) & (seq > 0),
                              self.settings.category_decay ** steps_back.clamp(min=0).double(), 0.0)
        categories = self.item_category[seq]
        taste = torch.zeros(len(seq), int(self.item_category.max()) + 1, dtype=torch.float64, device=seq.device)
        taste.scatter_add_(1, categories, weights)
        taste[:, 0] = 0  # no category
        # lexicographic (category weight to 1e-9, then count, then tie_order: a stable sort of the columns taken in that
        # order) in exact float64 integers; returned as -rank, which float32 holds exactly, so every consumer of the
        # scores sees this order
        key = torch.round(taste[:, self.item_category] * 1e9) * (self.item_count.max().double() + 1) + self.item_count.double()
        ranks = torch.empty_like(key, dtype=torch.float32)
        order = self.tie_order[torch.argsort(key[:, self.tie_order], dim=1, descending=True, stable=True)]
        ranks.scatter_(1, order, -torch.arange(key.shape[1], device=key.device, dtype=torch.float32).expand_as(key))
        return ranks
