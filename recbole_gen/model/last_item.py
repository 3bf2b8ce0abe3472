"""LastItem: a "generator" that copies the user's last history item, the trivial continuity reference.

Where the next item tends to look like the last one (emoji-seq's users stay in a subgroup with probability ``rho``)
a copy of the last image already earns TargetSim, HistorySim and some Hit@K; a generator that draws from the
history has to show more than this. Its images are the last item's catalogue image, so its Novelty is 0, its
Diversity 0, and the evaluator ranks the catalogue by closeness to that image (the last item itself first).
"""
import torch

from recbole_gen.model.generative import Generation, GenerativeRecommender
from recbole_gen.model.training_free import TrainingFree


class LastItem(TrainingFree, GenerativeRecommender):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.num_samples = config["num_samples"]

    def generate_images(self, interaction, num_samples=None, seed=None, exclude=None, **generation):
        """The last item's image ``num_samples`` times (a copy: ``exclude`` changes nothing, it is the point)."""
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        last = seq.gather(1, (length - 1).clamp(min=0).view(-1, 1)).squeeze(1)
        n = num_samples or self.num_samples
        pixels = self.store.pixels(last).unsqueeze(1).expand(-1, n, -1, -1, -1).to(seq.device)
        return Generation(pixels=pixels, plans=last.view(-1, 1).expand(-1, n),
                          histories=[row[:int(size)].tolist() for row, size in zip(seq.cpu(), length.cpu())])
