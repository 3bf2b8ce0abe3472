"""Sampling one image token at a time (guidance, temperature, top-k / top-p) and a user's plans, with per-row
seeded noise.

Each row of a batch draws its noise from its own ``torch.Generator``, seeded from the run seed, the
row's history and its sample index: an image depends on these only, not on which other users share
the batch or on their order, and two users never share a noise stream unless their histories are equal.
"""
import hashlib

import torch


def row_seed(seed, history, sample_index):
    """A 63-bit seed for one (run seed, history, sample index) triple."""
    key = f"{int(seed)}|{int(sample_index)}|{','.join(str(int(i)) for i in history)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def row_generators(seed, histories, sample_index, device="cpu"):
    return [torch.Generator(device=device).manual_seed(row_seed(seed, h, s)) for h, s in zip(histories, sample_index)]


def guide(cond, uncond, guidance_scale):
    """Classifier-free guidance: ``cond + g * (cond - uncond)``; ``g = 0`` is the conditional model alone."""
    if uncond is None or guidance_scale == 0:
        return cond
    return cond + guidance_scale * (cond - uncond)


def filter_logits(logits, top_k=0, top_p=1.0):
    """Set logits outside the top-k / nucleus (top-p) to -inf."""
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, int(top_k), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        remove = remove.scatter(-1, order, remove)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def perturbed(logits, temperature, generators):
    """``logits / temperature`` plus Gumbel noise drawn by each row's own generator: its argmax is a sample of
    ``softmax(logits / temperature)``, its top-k a sample of k distinct values."""
    logits = logits.float()
    uniform = torch.stack([torch.rand(logits.shape[-1], generator=g, device=g.device) for g in generators]).to(logits.device)
    gumbel = -torch.log((-torch.log(uniform.clamp_(1e-20, 1.0))).clamp_min(1e-20))
    return logits / temperature + gumbel


def sample(logits, temperature, generators):
    """Greedy when ``temperature <= 0``; otherwise Gumbel-max with each row's own generator."""
    if temperature is None or temperature <= 0:
        return logits.float().argmax(-1)
    return perturbed(logits, temperature, generators).argmax(-1)


def distinct_plans(logits, k, temperature, generators):
    """``k`` distinct plans per row of ``logits [B, P]``, sampled without replacement from
    ``softmax(logits / temperature)`` (Gumbel-top-k, each row with its own generator): a user's images
    each get their own plan, the likelier ones first."""
    return torch.topk(perturbed(logits, temperature, generators), k, dim=-1).indices
