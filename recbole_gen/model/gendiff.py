"""GenDiff: a RecBole sequential model that draws the next item's image by history-conditioned diffusion
(docs/gendiff.md), beside GenLMM's any-to-any LMM.

``run_recbole --model=GenDiff --dataset=emoji-seq`` trains the denoiser through GenDiffTrainer
(recbole_gen/trainer/gendiff.py); :meth:`GenDiff.generate_images` draws ``num_samples`` images per user, which the
evaluator embeds and searches like GenLMM's. The model itself lives in :mod:`recbole_gen.model.diffusion`; this
file is the RecBole wiring. Only ``item_id_list`` / ``item_length`` are read to generate; ``calculate_loss`` reads
the target item id to fetch its image, in training only.
"""
import torch

from recbole_gen.model.content import content_ids
from recbole_gen.model.core import NO_PLAN, count_parameters
from recbole_gen.model.diffusion import GenDiffCore
from recbole_gen.model.gendiff_config import GenDiffSettings
from recbole_gen.model.generative import CoreCheckpoint, Generation, GenerativeRecommender


class GenDiff(CoreCheckpoint, GenerativeRecommender):
    settings_class = GenDiffSettings
    base_key = "gendiff_base"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.settings = GenDiffSettings.from_config(config)
        content = {field: content_ids(self.store, field) for field in self.settings.content_fields}
        self.core = GenDiffCore(self.settings, dataset.item_num, content, item_pixels=self.store.pixels)
        self.artifact_info = {}

    # the artifact step's view of the tokenizer (the same catalogue-trained one as GenLMM's, from the same cache)
    image_tokenizer = property(lambda self: self.core.vq)
    tokenizer_image_size = property(lambda self: self.settings.lmm_image_size)
    tokenizer_settings = property(lambda self: self.settings)

    def set_item_tokens(self, tokens):
        self.core.set_item_tokens(tokens)

    def __repr__(self):
        s, core = self.settings, self.core
        denoiser = f"pretrained {s.diffusers_path}" if s.diffusers_path else "tiny UNet2DConditionModel"
        return (f"GenDiff(denoiser={denoiser}, space={core.space} {'x'.join(map(str, core.shape))}, "
                f"history_len={s.history_len}, parameters={count_parameters(core):,}, "
                f"trainable={count_parameters(core, True):,})")

    def histories(self, interaction, drop=None):
        """The last ``history_len`` item ids of each row (``[]`` where ``drop``: condition dropout)."""
        keep = self.settings.history_len
        rows = zip(interaction[self.ITEM_SEQ].tolist(), interaction[self.ITEM_SEQ_LEN].tolist())
        return [[] if keep == 0 or (drop is not None and bool(drop[r])) else [i for i in items[:n] if i > 0][-keep:]
                for r, (items, n) in enumerate(rows)]

    # ------------------------------------------------------------ training
    def calculate_loss(self, interaction):
        drop = None
        if self.training and self.settings.cond_dropout > 0:
            drop = torch.rand(len(interaction)) < self.settings.cond_dropout
        return self.core.loss(self.histories(interaction, drop), interaction[self.POS_ITEM_ID])

    # ---------------------------------------------------------- generation
    @torch.no_grad()
    def generate_images(self, interaction, num_samples=None, seed=None, exclude=None, **generation):
        """Draw ``num_samples`` images per user; ``generation`` overrides ``guidance_scale``, ``num_inference_steps``
        and ``sampler``. GenDiff plans no item, so ``exclude`` has nothing to act on (the evaluation still ranks no
        consumed item)."""
        histories = self.histories(interaction)
        settings = {**self.settings.generation, **generation}
        n = num_samples or self.settings.num_samples
        seed = self.settings.generation_seed if seed is None else seed
        step = self.settings.generation_batch_size
        pixels, tokens = [], []
        for start in range(0, len(histories), step):
            samples = self.core.sample(histories[start:start + step], n, seed, settings["guidance_scale"],
                                       settings["num_inference_steps"], settings["sampler"])
            p, t = self.core.decode(samples.flatten(0, 1))
            pixels.append(p.view(*samples.shape[:2], *p.shape[1:]))
            tokens.append(None if t is None else t.view(*samples.shape[:2], -1))
        return Generation(pixels=torch.cat(pixels), plans=torch.full((len(histories), n), NO_PLAN), histories=histories,
                          tokens=None if tokens[0] is None else torch.cat(tokens))

    def describe_generation(self, seed, overrides):
        return {"seed": self.settings.generation_seed if seed is None else seed, **self.settings.generation, **overrides}

    # ------------------------------------------------------ checkpointing (CoreCheckpoint: only the UNet, the history
    # representation and the catalogue-trained tokenizer; a pretrained VAE is rebuilt from ``diffusers_path``)
    def load_other_parameter(self, para):
        saved, now = (para or {}).get("gendiff_base"), self.core.base_info()
        if saved is not None and saved != now:
            raise RuntimeError(f"checkpoint was trained with {saved}, this model has {now}")
