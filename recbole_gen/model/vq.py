"""The image tokenizer: a small ``JanusVQVAE`` trained once on the catalogue, then frozen.

Janus's VQ encodes with raw squared distances but decodes L2-normalised codebook vectors, and its
forward passes no gradient to the encoder. :func:`train_vq` therefore runs its own step: encoder
outputs and codebook are both L2-normalised, the nearest code is found by cosine, the decoder sees
the normalised code (straight-through), and codes unused for a while are restarted from encoder
outputs. The trained codebook is stored normalised, so Janus's own ``encode`` (raw distances to
unit vectors = cosine ranking) and ``decode`` agree with training.

Pixels are ``[N, 3, S, S]`` floats in ``[0, 1]``; the VQ works in ``[-1, 1]`` as Janus does.
"""
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import JanusVQVAE, JanusVQVAEConfig

from recbole_gen.model.artifacts import cache_key, load_or_build, progress

logger = logging.getLogger(__name__)

#: settings that define the tiny VQ (also the tiny Janus's ``vq_config``); see properties/model/GenLMM.yaml
VQ_KEYS = ("lmm_image_size", "vq_grid", "vq_codebook_size", "vq_embed_dim", "vq_base_channels", "vq_latent_channels",
           "vq_train_steps", "vq_batch_size", "vq_lr", "vq_seed")


def vq_settings(config):
    """The VQ-defining subset of a config (a RecBole Config or a dict), cast to plain Python types."""
    out = {key: config[key] for key in VQ_KEYS}
    out["vq_lr"] = float(out["vq_lr"])
    for key in VQ_KEYS:
        if key != "vq_lr":
            out[key] = int(out[key])
    return out


def build_vq_config(settings, image_token_embed_dim=64, projection_dim=64):
    size, grid = settings["lmm_image_size"], settings["vq_grid"]
    downs = int(round(np.log2(size // grid)))
    if 2 ** downs * grid != size:
        raise ValueError(f"lmm_image_size {size} must be vq_grid {grid} times a power of two")
    if settings["vq_base_channels"] % 32:
        raise ValueError(f"vq_base_channels must be a multiple of 32 (GroupNorm), got {settings['vq_base_channels']}")
    return JanusVQVAEConfig(
        embed_dim=settings["vq_embed_dim"], num_embeddings=settings["vq_codebook_size"],
        latent_channels=settings["vq_latent_channels"], base_channels=settings["vq_base_channels"],
        channel_multiplier=[1] + [2] * downs, num_res_blocks=1, num_patches=grid,
        image_token_embed_dim=int(image_token_embed_dim), projection_dim=int(projection_dim),
    )


def _encode_normalised(vq, x):
    z = vq.quant_conv(vq.encoder(x))  # [B, D, g, g]
    return F.normalize(z, dim=1)


def train_vq(pixels, settings, log_every=200):
    """Train a JanusVQVAE on ``pixels`` ([N,3,S,S] in [0,1], no padding row); returns it frozen, in eval mode."""
    generator = torch.Generator().manual_seed(settings["vq_seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["vq_seed"])
        vq = JanusVQVAE(build_vq_config(settings))
    vq.train()
    data = pixels.float() * 2 - 1
    codebook = vq.quantize.embedding.weight
    optimizer = torch.optim.Adam(vq.parameters(), lr=settings["vq_lr"])
    usage = torch.zeros(codebook.shape[0])
    start = time.time()
    for step in range(settings["vq_train_steps"]):
        idx = torch.randint(len(data), (settings["vq_batch_size"],), generator=generator)
        x = data[idx]
        if torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)
        z = _encode_normalised(vq, x)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codes = F.normalize(codebook, dim=1)
        index = (flat @ codes.t()).argmax(1)
        quant = codes[index]
        commit = F.mse_loss(flat, quant.detach())
        embed = F.mse_loss(quant, flat.detach())
        straight = (flat + (quant - flat).detach()).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        recon = vq.decoder(vq.post_quant_conv(straight))
        loss = F.mse_loss(recon, x) + embed + 0.25 * commit
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        usage.mul_(0.99).index_add_(0, index, torch.ones(len(index)))
        if step % 50 == 49 and step < settings["vq_train_steps"] * 0.9:
            dead = (usage < 0.01).nonzero().flatten()
            if len(dead):
                pick = torch.randint(len(flat), (len(dead),), generator=generator)
                with torch.no_grad():
                    codebook[dead] = flat.detach()[pick] + 0.01 * torch.randn(len(dead), flat.shape[1], generator=generator)
                usage[dead] = 1.0
        if log_every and (step + 1) % log_every == 0:
            logger.info(f"VQ step {progress(step + 1, settings['vq_train_steps'], start)}: loss {loss.item():.4f}, "
                        f"live codes {(usage > 0.01).sum().item()}")
    with torch.no_grad():
        codebook.copy_(F.normalize(codebook, dim=1))
    vq.eval().requires_grad_(False)
    return vq


@torch.no_grad()
def encode(vq, pixels, batch_size=256):
    """Pixels [N,3,S,S] in [0,1] -> image tokens LongTensor [N, grid*grid]."""
    out = []
    for chunk in torch.split(pixels, batch_size):
        z = _encode_normalised(vq, (chunk.float() * 2 - 1).to(vq.device, vq.dtype)).float()
        codes = F.normalize(vq.quantize.embedding.weight.float(), dim=1)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        out.append((flat @ codes.t()).argmax(1).view(len(chunk), -1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.long)


@torch.no_grad()
def decode(vq, tokens, batch_size=256):
    """Image tokens [N, grid*grid] -> pixels [N,3,S,S] in [0,1] (float32, on the VQ's device)."""
    out = [vq.decode(chunk.to(vq.device)).float().add(1).div(2).clamp(0, 1) for chunk in torch.split(tokens, batch_size)]
    return torch.cat(out)


def centred_unit(pixels, mean):
    """The evaluation-style pixel feature: flatten, subtract the catalogue mean image, L2-normalise."""
    return F.normalize((pixels.float() - mean).flatten(1), dim=1)


@torch.no_grad()
def reconstruction_accuracy(vq, pixels, batch_size=256):
    """Share of items whose reconstruction's nearest catalogue item (pixel cosine after subtracting the
    catalogue mean image) is the item itself or a pixel-identical duplicate of it."""
    pixels = pixels.float()
    mean = pixels.mean(0)
    catalogue = centred_unit(pixels, mean)
    hits = 0
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start:start + batch_size]
        recon = decode(vq, encode(vq, chunk)).cpu()
        nearest = (centred_unit(recon, mean) @ catalogue.t()).argmax(1)
        same = (pixels[nearest] - chunk).abs().flatten(1).amax(1) == 0
        hits += int(same.sum())
    return hits / len(pixels)


def load_or_train_vq(pixels, settings, cache_dir):
    """The trained VQ for this catalogue and these settings, from ``cache_dir/genlmm_vq`` or trained now and cached.

    ``pixels`` has no padding row. Returns ``(vq, info)``; ``info`` holds the cache key, the build time and
    the reconstruction accuracy measured when it was built.
    """
    def build():
        vq = train_vq(pixels, settings)
        accuracy = reconstruction_accuracy(vq, pixels)
        logger.info(f"VQ reconstruction nearest-neighbour accuracy {accuracy:.3f}")
        return vq.state_dict(), {"settings": settings, "items": len(pixels), "nn_accuracy": accuracy}

    state, info = load_or_build(Path(cache_dir) / "genlmm_vq", "vq", cache_key(settings, pixels), build,
                                f"the GenLMM image tokenizer on {len(pixels)} catalogue images")
    vq = JanusVQVAE(build_vq_config(settings))
    vq.load_state_dict(state)
    return vq.eval().requires_grad_(False), info
