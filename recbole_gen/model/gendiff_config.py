"""GenDiff's settings: one typed view of the model's config keys, built once from a RecBole config.

Every field is a config key; its default and its one-line meaning are in properties/model/GenDiff.yaml (defaults
live only there). The image tokenizer's keys (:class:`~recbole_gen.model.vq.TokenizerArchitecture`, in
properties/overall.yaml) are shared with GenLMM, so both models use one catalogue-trained tokenizer and its cache.
"""
from dataclasses import dataclass
from typing import Optional

from recbole_gen.model.vq import TokenizerArchitecture

SPACES = ("latent", "pixel")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SAMPLERS = ("ddim", "dpm_solver")


@dataclass(frozen=True)
class GenDiffSettings(TokenizerArchitecture):
    # denoiser (diffusers)
    diffusers_path: Optional[str]
    base_seed: int
    diffusion_space: str
    image_size: int
    unet_channels: list
    unet_layers_per_block: int
    unet_attention_heads: int
    unet_norm_groups: int
    history_width: int
    # history
    history_len: int
    content_fields: list
    # diffusion training
    num_train_timesteps: int
    beta_schedule: str
    prediction_type: str
    cond_dropout: float
    # sampling
    sampler: str
    num_inference_steps: int
    guidance_scale: float
    snap_to_codes: bool
    num_samples: int
    generation_seed: int
    generation_batch_size: int

    def check(self):
        super().check()
        self.require(self.diffusion_space in SPACES, "diffusion_space", f"one of {', '.join(SPACES)}")
        self.require(self.prediction_type in PREDICTIONS, "prediction_type", f"one of {', '.join(PREDICTIONS)}")
        self.require(self.beta_schedule in BETA_SCHEDULES, "beta_schedule", f"one of {', '.join(BETA_SCHEDULES)}")
        self.require(self.sampler in SAMPLERS, "sampler", f"one of {', '.join(SAMPLERS)}")
        self.require(len(self.unet_channels) >= 1 and all(int(c) >= 1 for c in self.unet_channels), "unet_channels",
                     "a non-empty list of positive widths")
        for key in ("history_len", "guidance_scale"):
            self.require(getattr(self, key) >= 0, key, ">= 0")
        for key in ("image_size", "unet_layers_per_block", "unet_attention_heads", "unet_norm_groups", "history_width",
                    "num_train_timesteps",
                    "num_inference_steps", "num_samples", "generation_batch_size"):
            self.require(getattr(self, key) >= 1, key, ">= 1")
        self.require(0 <= self.cond_dropout < 1, "cond_dropout", "in [0, 1)")

    @property
    def generation(self):
        """The sampling keyword arguments of ``GenDiffCore.sample``."""
        return {"guidance_scale": self.guidance_scale, "num_inference_steps": self.num_inference_steps,
                "sampler": self.sampler}
