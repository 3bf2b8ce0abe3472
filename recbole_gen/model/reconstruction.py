"""TokenizerReconstruction: a reference row, not a competitor. It "draws" an item by decoding the item's own image
tokens with the tokenizer the generators draw through, so its images are the best any generator using that
tokenizer can show for that item.

``reconstruct: target`` reconstructs the true next item: it READS THE TARGET, by design, and is the ceiling of
every generator's retrieval and image metrics on this tokenizer (shown apart from competitors in the benchmark).
``reconstruct: last`` reconstructs the last history item: the trivial continuity reference, as a generator.
It shares the catalogue-trained tokenizer (and its cache) with GenLMM; it has nothing to train
(:class:`~recbole_gen.model.training_free.TrainingFree`).
"""
from dataclasses import dataclass

import torch
from transformers import JanusVQVAE

from recbole_gen.model import vq as vqlib
from recbole_gen.model.generative import Generation, GenerativeRecommender
from recbole_gen.model.training_free import TrainingFree
from recbole_gen.model.vq import TokenizerArchitecture

SOURCES = ("target", "last")


@dataclass(frozen=True)
class ReconstructionSettings(TokenizerArchitecture):
    """Keys and defaults in properties/model/TokenizerReconstruction.yaml (the tokenizer's: properties/overall.yaml)."""

    reconstruct: str

    def check(self):
        super().check()
        self.require(self.reconstruct in SOURCES, "reconstruct", f"one of {', '.join(SOURCES)}")


class TokenizerReconstruction(TrainingFree, GenerativeRecommender):
    settings_class = ReconstructionSettings

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.settings = ReconstructionSettings.from_config(config)
        self.vq = JanusVQVAE(vqlib.build_vq_config(self.settings)).eval().requires_grad_(False)
        self.item_tokens = vqlib.ItemTokens(dataset.item_num, self.settings.vq_grid ** 2, self.settings.vq_codebook_size,
                                            "TokenizerReconstruction")

    # the artifact step's view of the tokenizer
    image_tokenizer = property(lambda self: self.vq)
    tokenizer_image_size = property(lambda self: self.settings.lmm_image_size)
    tokenizer_settings = property(lambda self: self.settings)

    def set_item_tokens(self, tokens):
        self.item_tokens.set(tokens)

    @torch.no_grad()
    def generate_images(self, interaction, num_samples=None, seed=None, **generation):
        """One image per user (the reconstruction is deterministic): of the true next item, or of the last history item."""
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        items = interaction[self.ITEM_ID] if self.settings.reconstruct == "target" else \
            self.gather_indexes(seq.unsqueeze(-1), length - 1).squeeze(-1)
        pixels = vqlib.decode(self.vq, self.item_tokens.of(items, self.vq.device)).unsqueeze(1)
        histories = [row[:n].tolist() for row, n in zip(seq.cpu(), length.tolist())]
        return Generation(pixels=pixels, plans=items.view(-1, 1).cpu(), histories=histories)

    def state_dict(self, *args, **kwargs):
        """The tokenizer, so a checkpoint reconstructs without the artifact cache."""
        prefix = kwargs.get("prefix", "")
        return {prefix + "vq." + k: v for k, v in self.vq.state_dict().items()}

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return self.vq.load_state_dict({k[len("vq."):]: v for k, v in state_dict.items() if k.startswith("vq.")},
                                       strict=strict, assign=assign)
