"""TokenizerReconstruction: it "draws" an item by decoding the item's own image tokens with the tokenizer the
generators draw through, so its images are the best any generator using that tokenizer can show for that item.

``reconstruct: target`` reconstructs the true next item: it READS THE TARGET, by design, and is the ceiling of
every generator's retrieval and image metrics on this tokenizer (a reference row, shown apart in the benchmark).
``reconstruct: last`` reconstructs the last history item: the trivial continuity reference, as a generator.
``reconstruct: ranker`` is a ranker's **drawn twin**: the top ``num_samples`` items of a trained RecBole model
(``reconstruct_from``: its checkpoint, e.g. the benchmark's ``@SASRec``), consumed items left out as in the
ranker's own evaluation, redrawn and then evaluated exactly as a generator's images are: the ranker's answer in
the generators' channel. It shares the catalogue-trained tokenizer (and its cache) with GenLMM; it has nothing to
train (:class:`~recbole_gen.model.training_free.TrainingFree`).
"""
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import JanusVQVAE

from recbole_gen.model import vq as vqlib
from recbole_gen.model.frozen import load_recommender
from recbole_gen.model.generative import Generation, GenerativeRecommender
from recbole_gen.model.ties import tie_order, top_items
from recbole_gen.model.training_free import TrainingFree
from recbole_gen.model.vq import TokenizerArchitecture

SOURCES = ("target", "last", "ranker")


@dataclass(frozen=True)
class ReconstructionSettings(TokenizerArchitecture):
    """Keys and defaults in properties/model/TokenizerReconstruction.yaml (the tokenizer's: properties/overall.yaml)."""

    reconstruct: str
    reconstruct_from: Optional[str]
    num_samples: int

    def check(self):
        super().check()
        self.require(self.reconstruct in SOURCES, "reconstruct", f"one of {', '.join(SOURCES)}")
        self.require((self.reconstruct == "ranker") == bool(self.reconstruct_from), "reconstruct_from",
                     "a ranker's checkpoint with reconstruct: ranker, and ~ otherwise")
        self.require(self.num_samples >= 1, "num_samples", ">= 1")


class TokenizerReconstruction(TrainingFree, GenerativeRecommender):
    settings_class = ReconstructionSettings

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.settings = ReconstructionSettings.from_config(config)
        self.vq = JanusVQVAE(vqlib.build_vq_config(self.settings)).eval().requires_grad_(False)
        self.item_tokens = vqlib.ItemTokens(dataset.item_num, self.settings.vq_grid ** 2, self.settings.vq_codebook_size,
                                            "TokenizerReconstruction")
        self.ranker = None
        if self.settings.reconstruct == "ranker":
            self.ranker = load_recommender(self.settings.reconstruct_from, dataset, device=config["device"])
        self.register_buffer("tie_order", tie_order(dataset.item_num, config["seed"]), persistent=False)

    # the artifact step's view of the tokenizer
    image_tokenizer = property(lambda self: self.vq)
    tokenizer_image_size = property(lambda self: self.settings.lmm_image_size)
    tokenizer_settings = property(lambda self: self.settings)

    def set_item_tokens(self, tokens):
        self.item_tokens.set(tokens)

    @torch.no_grad()
    def generate_images(self, interaction, num_samples=None, seed=None, exclude=None, **generation):
        """The items' redraws: one per user of the true next item or the last history item (deterministic), or the
        ranker's top ``num_samples`` items that are not in ``exclude``."""
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        items = self._items(interaction, num_samples or self.settings.num_samples, exclude)
        pixels = vqlib.decode(self.vq, self.item_tokens.of(items.flatten(), self.vq.device))
        histories = [row[:n].tolist() for row, n in zip(seq.cpu(), length.tolist())]
        return Generation(pixels=pixels.view(*items.shape, *pixels.shape[1:]), plans=items.cpu(), histories=histories)

    def _items(self, interaction, n, exclude):
        """``[B, k]`` items to redraw."""
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.settings.reconstruct == "target":
            return interaction[self.ITEM_ID].view(-1, 1)
        if self.settings.reconstruct == "last":
            return self.gather_indexes(seq.unsqueeze(-1), length - 1).view(-1, 1)
        users = interaction[self.USER_ID] if self.USER_ID in interaction else None
        scores = self.ranker.scores(seq, length, users)
        if exclude is not None:
            scores.scatter_(1, exclude.cpu().long(), float("-inf"))
        return top_items(scores, n, self.tie_order).to(seq.device)

    def state_dict(self, *args, **kwargs):
        """The tokenizer, so a checkpoint reconstructs without the artifact cache."""
        prefix = kwargs.get("prefix", "")
        return {prefix + "vq." + k: v for k, v in self.vq.state_dict().items()}

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return self.vq.load_state_dict({k[len("vq."):]: v for k, v in state_dict.items() if k.startswith("vq.")},
                                       strict=strict, assign=assign)
