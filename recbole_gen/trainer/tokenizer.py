"""Training the tiny image tokenizer on a catalogue (a real checkpoint brings its own).

Janus's VQ forward passes no gradient to the encoder, so this is its own step: encoder outputs and codebook are
both L2-normalised, the nearest code is found by cosine, the decoder sees the normalised code (straight-through),
and codes unused for a while are restarted from encoder outputs (without restarts only ~90 of 1,024 codes stay
alive). The codebook is stored normalised, so Janus's ``encode`` and ``decode`` agree with the training.
"""
import logging
import time

import torch
import torch.nn.functional as F

from recbole_gen.data.images import centred_unit
from recbole_gen.model import vq as vqlib
from recbole_gen.trainer.loop import OptimizerSteps, progress

logger = logging.getLogger(__name__)


def train_vq(vq, pixels, steps, batch_size, lr, seed, log_every=200):
    """Train ``vq`` (a ``JanusVQVAE``) on ``pixels`` ([N,3,S,S] in [0,1], no padding row); leaves it frozen."""
    generator = torch.Generator().manual_seed(seed)
    vq.train().requires_grad_(True)
    data = pixels.float() * 2 - 1
    codebook = vq.quantize.embedding.weight
    steps_ = OptimizerSteps(torch.optim.Adam(vq.parameters(), lr=lr), vq.parameters())
    usage = torch.zeros(codebook.shape[0])
    start = time.time()
    for step in range(steps):
        x = data[torch.randint(len(data), (batch_size,), generator=generator)]
        if torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)
        z = vqlib.encode_normalised(vq, x)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codes = F.normalize(codebook, dim=1)
        index = (flat @ codes.t()).argmax(1)
        quant = codes[index]
        straight = (flat + (quant - flat).detach()).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        recon = vq.decoder(vq.post_quant_conv(straight))
        loss = F.mse_loss(recon, x) + F.mse_loss(quant, flat.detach()) + 0.25 * F.mse_loss(flat, quant.detach())
        steps_.backward(loss)
        usage.mul_(0.99).index_add_(0, index, torch.ones(len(index)))
        if step % 50 == 49 and step < steps * 0.9:
            dead = (usage < 0.01).nonzero().flatten()
            if len(dead):
                pick = torch.randint(len(flat), (len(dead),), generator=generator)
                with torch.no_grad():
                    codebook[dead] = flat.detach()[pick] + 0.01 * torch.randn(len(dead), flat.shape[1], generator=generator)
                usage[dead] = 1.0
        if log_every and (step + 1) % log_every == 0:
            logger.info(f"tokenizer step {progress(step + 1, steps, start)}: loss {loss.item():.4f}, "
                        f"live codes {(usage > 0.01).sum().item()}")
    with torch.no_grad():
        codebook.copy_(F.normalize(codebook, dim=1))
    vq.eval().requires_grad_(False)
    return vq


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
        recon = vqlib.decode(vq, vqlib.encode(vq, chunk)).cpu()
        nearest = (centred_unit(recon, mean) @ catalogue.t()).argmax(1)
        hits += int(((pixels[nearest] - chunk).abs().flatten(1).amax(1) == 0).sum())
    return hits / len(pixels)
