"""CategoryTaste: "the categories this user likes, each item by its share of its category", the history-taste baseline.

Nothing is learnt but counts. An item's score is ``log P(category | history) + log P(item | category)``
(:class:`~recbole_gen.model.taste.HistoryTaste`): the user's taste for its category (``category_field``, as for
CategoryPop) is a smoothed histogram of the history's categories, each history item weighing ``taste_decay ** steps
back`` and the last one ``taste_continuity`` more, and the item's share of its category is its training interactions
(plus one) over its category's. Where CategoryPop ranks lexicographically (the last categories first, then
popularity), this weighs the two, so a popular item of a category the user took long ago can rank above a rare one of
the last item's. It is the untrained form of GenLMM's plan head (``plan_history_match`` with ``plan_item_bias``): the
plan head has to beat it to be worth its training. Its settings are chosen on validation like every ranker's
(benchmarks/baselines/); ties fall to the evaluation's seeded order (:mod:`recbole_gen.model.ties`).
"""
from dataclasses import dataclass

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_gen.config import Settings
from recbole_gen.data.dataloader import training_counts
from recbole_gen.model.category_pop import item_categories
from recbole_gen.model.taste import HistoryTaste
from recbole_gen.model.training_free import TrainingFree


@dataclass(frozen=True)
class CategoryTasteSettings(Settings):
    """CategoryTaste's keys (defaults in properties/model/CategoryTaste.yaml)."""

    category_field: str
    taste_continuity: float
    taste_smoothing: float
    taste_decay: float

    def check(self):
        self.require(0 <= self.taste_continuity < 1, "taste_continuity", "in [0, 1)")
        self.require(self.taste_smoothing > 0, "taste_smoothing", "> 0")
        self.require(0 < self.taste_decay <= 1, "taste_decay", "in (0, 1]")


class CategoryTaste(TrainingFree, SequentialRecommender):
    input_type = InputType.POINTWISE
    settings_class = CategoryTasteSettings

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        s = self.settings = CategoryTasteSettings.from_config(config)
        counts = training_counts(dataset)
        self.taste = HistoryTaste(item_categories(dataset, s.category_field), counts, self.max_seq_length,
                                  s.taste_continuity, s.taste_smoothing, s.taste_decay).requires_grad_(False)
        self.register_buffer("log_count", torch.log1p(counts))

    def full_sort_predict(self, interaction):
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        back = length.unsqueeze(1) - 1 - torch.arange(seq.shape[1], device=seq.device)  # column k: k + 1 steps back
        recent = torch.where(back >= 0, seq.gather(1, back.clamp(min=0)), 0)
        return self.taste(recent) + self.log_count
