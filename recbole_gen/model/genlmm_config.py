"""GenLMM's settings: one typed view of the model's config keys, built once from a RecBole config.

Every field is a config key; its default and its one-line meaning are in properties/model/GenLMM.yaml (the image
tokenizer's, shared by every generator, in properties/overall.yaml; defaults live only there). :meth:`GenLMMSettings.from_config` converts and range-checks them, so a wrong
value stops the run before the dataset is read further or anything is trained.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from recbole_gen.model.vq import TokenizerArchitecture

HISTORY_MODES = ("semantic", "vq", "vision")
FINETUNE_MODES = ("full", "lora", "none")
PLAN_MODES = ("none", "item", "semantic")
DTYPES = ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


@dataclass(frozen=True)
class GenLMMSettings(TokenizerArchitecture):
    # backbone
    lmm_path: Optional[str]
    dtype: str
    base_seed: int
    lmm_hidden_size: int
    lmm_intermediate_size: int
    lmm_num_layers: int
    lmm_num_heads: int
    lmm_max_position_embeddings: int
    lmm_vision_hidden_size: int
    lmm_vision_layers: int
    lmm_vision_heads: int
    lmm_max_length: Optional[int]
    truncate_history: bool
    # prompt and item content
    history_len: int
    history_mode: str
    history_tokens_per_item: int
    content_fields: list
    item_id_embedding: bool
    use_titles: bool
    max_title_tokens: int
    instruction: str
    # plan, then draw
    plan: str
    plan_codes: int
    plan_item_bias: bool
    plan_history_match: bool
    plan_prior_continuity: float
    plan_prior_smoothing: float
    plan_prior_decay: float
    plan_loss_weight: float
    plan_temperature: float
    # SFT
    text_loss_weight: float
    cond_dropout: float
    finetune: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: str
    lora_modules_to_save: list
    train_vision: bool
    gradient_checkpointing: bool
    # generation
    num_samples: int
    guidance_scale: float
    temperature: float
    top_k: int
    top_p: float
    use_kv_cache: bool
    generation_seed: int
    generation_batch_size: int

    def check(self):
        super().check()
        self.require(self.dtype.lower() in DTYPES, "dtype", f"one of {', '.join(DTYPES)}")
        self.require(self.history_mode in HISTORY_MODES, "history_mode", f"one of {', '.join(HISTORY_MODES)}")
        self.require(self.finetune in FINETUNE_MODES, "finetune", f"one of {', '.join(FINETUNE_MODES)}")
        self.require(self.plan in PLAN_MODES, "plan", f"one of {', '.join(PLAN_MODES)}")
        for key in ("history_len", "max_title_tokens", "top_k", "text_loss_weight", "plan_loss_weight",
                    "guidance_scale", "temperature"):
            self.require(getattr(self, key) >= 0, key, ">= 0")
        for key in ("num_samples", "history_tokens_per_item", "generation_batch_size", "plan_codes", "lmm_hidden_size", "lmm_num_layers", "lmm_num_heads"):
            self.require(getattr(self, key) >= 1, key, ">= 1")
        self.require(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        self.require(0 <= self.cond_dropout < 1, "cond_dropout", "in [0, 1)")
        self.require(self.lmm_path is None or (Path(self.lmm_path) / "config.json").is_file(), "lmm_path",
                     "~ or a folder holding a Hugging Face-format Janus checkpoint (its config.json and weights)")
        self.require(self.plan_temperature > 0, "plan_temperature", "> 0")
        self.require(0 <= self.plan_prior_continuity < 1, "plan_prior_continuity", "in [0, 1)")
        self.require(self.plan_prior_smoothing > 0, "plan_prior_smoothing", "> 0")
        self.require(0 < self.plan_prior_decay <= 1, "plan_prior_decay", "in (0, 1]")

    @property
    def generation(self):
        """The sampling keyword arguments of ``GenLMMCore.generate_tokens``."""
        return {"guidance_scale": self.guidance_scale, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, "use_cache": self.use_kv_cache, "plan_temperature": self.plan_temperature}
