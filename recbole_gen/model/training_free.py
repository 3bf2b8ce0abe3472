"""Models with nothing to learn still go through RecBole's trainer (a pass over the data, a checkpoint, the same
evaluation as every other row). The trainer builds an optimizer over the model's parameters and steps on its loss,
so such a model holds one dummy parameter and returns a zero loss, as RecBole's Pop and ItemKNN do. Its scores
for given items (RecBole's ``predict``, for sampled evaluation) are read off its ranking of the whole catalogue."""
import torch


class TrainingFree:
    """Mix in before a RecBole model class: ``class LastItem(TrainingFree, GenerativeRecommender)``."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def calculate_loss(self, interaction):
        return self.dummy.sum() * 0

    def predict(self, interaction):
        return self.full_sort_predict(interaction).gather(1, interaction[self.ITEM_ID].view(-1, 1)).squeeze(1)
