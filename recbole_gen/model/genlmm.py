"""GenLMM: a RecBole sequential model that draws the next item's image (docs/genlmm.md).

``run_recbole --model=GenLMM --dataset=emoji-seq`` trains it by SFT through
GenLMMTrainer (recbole_gen/trainer/genlmm.py); :meth:`GenLMM.generate_images` draws ``num_samples`` images per
user, which the evaluator embeds and searches, so Hit / NDCG / MRR mean what they mean for SASRec. With a
plan head (``plan: item | semantic``) :meth:`GenLMM.full_sort_predict` also ranks the catalogue by the plan
(``gen_rank_by: plan | both``). The model itself lives in :mod:`recbole_gen.model.core`; this file is the
RecBole wiring.

Only ``item_id_list`` / ``item_length`` are read to generate or rank (never the target item's features);
``calculate_loss`` reads the target item id to fetch its image tokens, in training only.
"""
import torch

from recbole_gen.data.dataloader import training_counts
from recbole_gen.model.content import content_ids
from recbole_gen.model.core import RL_ADAPTER, GenLMMCore, count_parameters
from recbole_gen.model.generative import CoreCheckpoint, Generation, GenerativeRecommender
from recbole_gen.model.genlmm_config import GenLMMSettings


class GenLMM(CoreCheckpoint, GenerativeRecommender):
    settings_class = GenLMMSettings
    base_key = "genlmm_base"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.settings = GenLMMSettings.from_config(config)
        content = {field: content_ids(self.store, field) for field in self.settings.content_fields}
        self.core = GenLMMCore(self.settings, dataset.item_num, self.store.item_texts(), content,
                               item_pixels=self.store.pixels, counts=training_counts(dataset))
        if config["stage"] == "rl" and self.settings.finetune == "lora":
            self.core.add_rl_adapter(seed=config["rl_seed"])
        self.artifact_info = {}

    # the artifact step's view of the tokenizer
    image_tokenizer = property(lambda self: self.core.vq)
    tokenizer_pretrained = property(lambda self: self.core.backbone.is_pretrained)
    tokenizer_image_size = property(lambda self: self.core.backbone.image_size)
    tokenizer_settings = property(lambda self: self.settings)

    def set_item_tokens(self, tokens):
        self.core.set_item_tokens(tokens)

    def __repr__(self):
        s, core = self.settings, self.core
        backbone = f"pretrained {s.lmm_path}" if core.backbone.is_pretrained else "tiny random Janus"
        return (f"GenLMM(backbone={backbone}, finetune={s.finetune}, history_mode={s.history_mode}, plan={s.plan}, "
                f"image tokens={core.num_image_tokens}, parameters={count_parameters(core):,}, "
                f"trainable={count_parameters(core, True):,})")

    # ------------------------------------------------------------ training
    def calculate_loss(self, interaction, plan_teacher=None):
        """SFT loss of a batch; ``plan_teacher``: a teacher's next-item probabilities ``[B, item_num]`` for the plan."""
        item_seq, item_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        drop = None
        if self.training and self.settings.cond_dropout > 0:
            drop = torch.rand(len(item_seq)) < self.settings.cond_dropout
        histories = self.core.histories(item_seq, item_len, drop)
        return self.core("loss", histories, interaction[self.POS_ITEM_ID], no_plan=drop, plan_teacher=plan_teacher,
                         exclude=None if self.repeatable else item_seq)

    # ---------------------------------------------------------- generation and ranking
    @torch.no_grad()
    def generate_images(self, interaction, num_samples=None, seed=None, exclude=None, plans=None, **generation):
        """Draw ``num_samples`` images per user (``plans [B, n]`` forces what to draw: a redraw); item plans never
        fall on ``exclude``'s items."""
        histories = self.core.histories(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        kwargs = {**self.settings.generation, **generation}
        n = num_samples or self.settings.num_samples
        seed = self.settings.generation_seed if seed is None else seed
        step = self.settings.generation_batch_size
        tokens, chosen = [], []
        for start in range(0, len(histories), step):
            forced = None if plans is None else plans[start:start + step]
            banned = None if exclude is None else exclude[start:start + step]
            t, p = self.core("generate_tokens", histories[start:start + step], num_samples=n, seed=seed, plans=forced,
                             exclude=banned, **kwargs)
            tokens.append(t)
            chosen.append(p)
        tokens = torch.cat(tokens)
        return Generation(pixels=self.core("decode", tokens), plans=torch.cat(chosen), histories=histories, tokens=tokens,
                          plans_are_items=self.settings.plan != "semantic")

    @torch.no_grad()
    def full_sort_predict(self, interaction):
        """The plan head's scores of every catalogue item (``plan: semantic``: its code's score)."""
        if not self.core.has_plan:
            return super().full_sort_predict(interaction)
        logits = self.core("plan_scores", self.core.histories(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]))
        if self.settings.plan == "semantic":
            logits = logits[:, self.core.plan_code]
            logits[:, 0] = float("-inf")
        return logits

    def describe_generation(self, seed, overrides):
        settings = {**self.settings.generation, **overrides}
        return {"seed": self.settings.generation_seed if seed is None else seed, "plan_kind": self.settings.plan, **settings}

    # ------------------------------------------------------ checkpointing (CoreCheckpoint: only what training changed,
    # LoRA adapters + ``lora_modules_to_save`` (``finetune: lora``) or the trained LMM parts (``full``), the content
    # representation and plan head, and a catalogue-trained image tokenizer; the frozen base is rebuilt from
    # ``lmm_path`` or, for the tiny model, from ``base_seed``)
    def expected_checkpoint_keys(self, given):
        expected = super().expected_checkpoint_keys(given)
        if self.core.has_rl_adapter and not any(f".{RL_ADAPTER}." in k for k in given):
            expected = {k for k in expected if f".{RL_ADAPTER}." not in k}  # an SFT checkpoint under a fresh RL adapter
        return expected

    def checkpoint_settings(self):
        return f"finetune={self.settings.finetune}, plan={self.settings.plan}"

    def load_other_parameter(self, para):
        if not para or "genlmm_base" not in para:
            return
        saved, now = para["genlmm_base"], self.core.base_info()
        for key in ("lmm_path", "base_seed", "finetune"):
            if saved.get(key) != now.get(key):
                raise RuntimeError(f"checkpoint was trained with {key}={saved.get(key)!r}, this model has {now.get(key)!r}")
