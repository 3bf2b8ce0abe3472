"""The image tokenizer: Janus's ``JanusVQVAE``, built from config; its weights come from a real checkpoint
(``lmm_path``) or from a once-per-catalogue training (recbole_gen/trainer/tokenizer.py), then frozen.

Janus's VQ encodes with raw squared distances but decodes L2-normalised codebook vectors; the catalogue-trained
tokenizer keeps its codebook normalised, so :func:`encode` (cosine to unit codes) and :func:`decode` agree with
its training. Pixels are ``[N, 3, S, S]`` floats in ``[0, 1]``; the VQ works in ``[-1, 1]`` as Janus does.
"""
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from transformers import JanusVQVAEConfig

from recbole_gen.config import Settings
from recbole_gen.data.cache import CachedRows


@dataclass(frozen=True)
class TokenizerArchitecture(Settings):
    """The image tokenizer's architecture keys (properties/overall.yaml), shared by every generator's settings, so
    GenLMM, GenDiff and TokenizerReconstruction build the same tokenizer and share its cache."""

    lmm_image_size: int
    vq_grid: int
    vq_codebook_size: int
    vq_embed_dim: int
    vq_base_channels: int
    vq_latent_channels: int

    def check(self):
        for key in VQ_ARCHITECTURE:
            self.require(getattr(self, key) >= 1, key, ">= 1")
        ratio = self.lmm_image_size // self.vq_grid
        self.require(ratio * self.vq_grid == self.lmm_image_size and ratio & (ratio - 1) == 0, "lmm_image_size",
                     f"vq_grid ({self.vq_grid}) times a power of two")
        self.require(self.vq_base_channels % 32 == 0, "vq_base_channels", "a multiple of 32 (GroupNorm)")


#: the settings that define the tiny tokenizer's architecture (also the tiny Janus's ``vq_config``)
VQ_ARCHITECTURE = tuple(field.name for field in fields(TokenizerArchitecture))


def build_vq_config(settings, image_token_embed_dim=64, projection_dim=64):
    """A ``JanusVQVAEConfig`` from a :class:`TokenizerArchitecture` (e.g. a GenLMM's settings)."""
    downs = int(round(np.log2(settings.lmm_image_size // settings.vq_grid)))  # checked: a power of two
    return JanusVQVAEConfig(
        embed_dim=settings.vq_embed_dim, num_embeddings=settings.vq_codebook_size,
        latent_channels=settings.vq_latent_channels, base_channels=settings.vq_base_channels,
        channel_multiplier=[1] + [2] * downs, num_res_blocks=1, num_patches=settings.vq_grid,
        image_token_embed_dim=int(image_token_embed_dim), projection_dim=int(projection_dim),
    )


def encode_normalised(vq, x):
    """Encoder outputs on the unit sphere [B, D, g, g] (the space the codebook lives in)."""
    z = vq.quant_conv(vq.encoder(x))  # [B, D, g, g]
    return F.normalize(z, dim=1)


@torch.no_grad()
def encode(vq, pixels, batch_size=256):
    """Pixels [N,3,S,S] in [0,1] -> image tokens LongTensor [N, grid*grid]."""
    out = []
    for chunk in torch.split(pixels, batch_size):
        out.append(nearest_codes(vq, encode_normalised(vq, (chunk.float() * 2 - 1).to(vq.device, vq.dtype))).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.long)


def nearest_codes(vq, z):
    """Latents [B, D, g, g] -> the tokens of their nearest codes by cosine [B, grid*grid]."""
    codes = F.normalize(vq.quantize.embedding.weight.float(), dim=1)
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return (flat @ codes.t()).argmax(1).view(len(z), -1)


def token_dtype(codebook_size):
    """The smallest integer type holding ``codebook_size`` codes (int16 up to 32,768: Janus-Pro's 16,384 too)."""
    return np.int16 if codebook_size <= 2 ** 15 else np.int32


class ItemTokens:
    """The catalogue's image tokens ``[item_num, tokens per image]``, kept out of the module's buffers: DDP would
    broadcast a buffer on every forward and ``.to(device)`` would copy it. A read-only table on the CPU (the store's
    token cache, memory-mapped, or a compact integer array) whose rows :meth:`of` gathers per batch onto the
    model's device. Checkpoints never held it: the artifact step hands it in (recbole_gen/trainer/artifacts.py).
    """

    def __init__(self, item_num, tokens_per_item, codebook_size, owner):
        self.shape, self.dtype, self.owner, self.rows = (item_num, tokens_per_item), token_dtype(codebook_size), owner, None

    def require(self):
        if self.rows is None:
            raise RuntimeError(f"{self.owner} has no catalogue image tokens yet: prepare its artifacts first with "
                               "prepare_artifacts(config, model) from recbole_gen/trainer/artifacts.py (run_recbole, "
                               "load_data_and_model and the benchmark do)")

    def set(self, tokens):
        """``tokens``: ``CachedRows`` of the token cache (kept as it is: row 0, padding, has no entry) or any array."""
        if tuple(tokens.shape) != self.shape:
            raise ValueError(f"item tokens have shape {tuple(tokens.shape)}, expected {self.shape}")
        if not isinstance(tokens, CachedRows):
            tokens = torch.as_tensor(tokens).cpu().numpy().astype(self.dtype)
            tokens[0] = 0
        self.rows = tokens

    def of(self, items, device):
        """Tokens of ``items`` (LongTensor, any shape) as LongTensor ``[*items.shape, tokens per image]`` on ``device``."""
        self.require()
        return torch.from_numpy(self.rows[items.cpu().numpy()].astype(np.int64)).to(device)


@torch.no_grad()
def decode(vq, tokens, batch_size=256):
    """Image tokens [N, grid*grid] -> pixels [N,3,S,S] in [0,1] (float32, on the VQ's device)."""
    out = [vq.decode(chunk.to(vq.device)).float().add(1).div(2).clamp(0, 1) for chunk in torch.split(tokens, batch_size)]
    return torch.cat(out)
