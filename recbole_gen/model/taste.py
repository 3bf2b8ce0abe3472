"""A user's taste for a category, read from their history: the plan head's category term.

Each item is scored ``log P(value | history) + log P(item | value)`` for one content field (an ``.item`` column such
as emoji-seq's subgroup): ``P(value | history)`` is a smoothed, recency-weighted histogram of the history items'
values (the last item weighing most: continuity), ``P(item | value)`` is the item's share of its value's training
interactions. The first factor lives here; the item's own count is the plan head's per-item bias
(``plan_item_bias``, the log of its training interactions), so this module adds only ``-log`` of its value's
interactions. Multiplied, the two rank like the history-taste ranker of benchmarks/baselines/bayes_bound.py (a
category's probability times the item's share within it: the form of the simulator's own next-item probability), which
ranks above the plan head's first, additive and nearly lexicographic, category term on emoji-pop and level with it on
emoji-seq (docs/genlmm.md). Every number here is a parameter that training moves from a start chosen on validation.
"""
import math

import torch
import torch.nn as nn


class HistoryTaste(nn.Module):
    def __init__(self, values, counts, steps, continuity, smoothing, decay):
        """``values``: ``LongTensor[item_num]`` the field's value id per item (0 = none); ``counts``: each item's
        training interactions; ``steps``: history items read (the last ``steps``). The histogram starts with weight
        ``decay ** k`` for the item ``k + 1`` steps back plus, on the last item, what makes ``continuity`` of the
        next value's probability its value's for a full history; ``smoothing`` is added to every value's weight
        (relative to one history item)."""
        super().__init__()
        self.register_buffer("values", values.long().clone(), persistent=False)
        vocabulary = int(values.max()) + 1
        weights = decay ** torch.arange(steps, dtype=torch.float64)
        weights[0] += continuity / (1 - continuity) * (weights.sum() + smoothing * (vocabulary - 1))
        self.log_weights = nn.Parameter(weights.log().float())
        self.log_smoothing = nn.Parameter(torch.tensor(math.log(smoothing)))
        # each item counts once more than it was taken (an item never taken still has a share); row 0 is padding
        share = torch.zeros(vocabulary, dtype=torch.float64).index_add_(0, self.values[1:], counts[1:].double() + 1)
        self.value_bias = nn.Parameter(-share.clamp(min=1).log().float())

    def forward(self, recent):
        """``recent``: ``LongTensor[B, steps]`` item ids, column ``k`` the item ``k + 1`` steps back (0 = none) ->
        ``[B, item_num]``: each item's log taste for its value. An item without a value gets the smoothing alone."""
        weights = self.log_weights.exp() * (recent > 0)
        histogram = torch.zeros(len(recent), len(self.value_bias), dtype=weights.dtype, device=recent.device)
        histogram.scatter_add_(1, self.values[recent], weights)
        histogram[:, 0] = 0  # a history item without a value says nothing about the next one's
        return (self.log_smoothing.exp() + histogram[:, self.values]).log() + self.value_bias[self.values]
