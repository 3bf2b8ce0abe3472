"""ImageKNN: "retrieve by image similarity to the history", the content baseline a generator has to beat.

Nothing is learnt. Each catalogue item's score is its cosine to a recency-weighted sum of the user's history items'
image embeddings (weight ``knn_decay ** steps back``: 1 = the plain mean of the history, 0 = the last item alone),
in a content space of its own (``knn_encoder``: by default the item images' pixels minus the catalogue's mean image,
the feature that best tells emoji apart; ``efficientnet-lite0`` or ``open_clip`` for photographs). Items the user
already has are not recommended again (``knn_exclude_history``): otherwise the history itself would fill the top.
It reads only what a deployment has, the history and the item images.
"""
from dataclasses import dataclass

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_gen.config import Settings
from recbole_gen.model.training_free import TrainingFree
from recbole_gen.retrieval.catalogue import ImageCatalogue
from recbole_gen.retrieval.encoders import build_image_encoder_from_config


@dataclass(frozen=True)
class ImageKNNSettings(Settings):
    """ImageKNN's keys (defaults in properties/model/ImageKNN.yaml)."""

    knn_decay: float
    knn_exclude_history: bool

    def check(self):
        self.require(0 <= self.knn_decay <= 1, "knn_decay", "in [0, 1]")


class ImageKNN(TrainingFree, SequentialRecommender):
    input_type = InputType.POINTWISE
    settings_class = ImageKNNSettings
    uses_item_images = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if getattr(dataset, "image_store", None) is None:
            raise ValueError("ImageKNN compares item images: build its dataset with "
                             "recbole_gen.data.create_dataset(config, images=True) (run_recbole does)")
        self.settings = ImageKNNSettings.from_config(config)
        encoder = build_image_encoder_from_config(config, "knn_encoder")
        catalogue = ImageCatalogue.from_store(dataset.image_store, encoder, fd_dim=0)
        self.register_buffer("item_embeddings", catalogue.embeddings, persistent=False)  # rebuilt from the images
        self.register_buffer("has_image", catalogue.has_image, persistent=False)

    def full_sort_predict(self, interaction):
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        steps_back = length.unsqueeze(1) - 1 - torch.arange(seq.shape[1], device=seq.device)
        weights = torch.where(steps_back >= 0, self.settings.knn_decay ** steps_back.clamp(min=0).float(), 0.0)
        profile = torch.einsum("bl,bld->bd", weights, self.item_embeddings[seq])
        scores = (profile @ self.item_embeddings.T).masked_fill(~self.has_image, float("-inf"))
        if self.settings.knn_exclude_history:
            scores.scatter_(1, seq, float("-inf"))
        return scores
