"""Catalogue pre-training: the tiny GenLMM learns to draw every catalogue item before SFT teaches it taste.

A from-scratch tiny model cannot learn both drawing and taste within the main job's budget (issue 4;
benchmarks/genlmm/README.md). This stage needs no user data: each step takes ``pretrain_batch_size``
random catalogue items and trains the model to draw each one from a prompt holding
``pretrain_instruction`` and the item itself as the only history item (its history tokens, and its title
with ``use_titles``), with the same loss as SFT. SFT then starts from a model whose history path already
says *which* image to draw. The result is cached per catalogue and settings, like the image tokenizer,
so every later run on the dataset (and the RL stage) reuses it.

``pretrain_steps: ~`` means :data:`TINY_PRETRAIN_STEPS` for the tiny model and 0 for a pretrained
``lmm_path`` (which already draws).
"""
import logging
import time
from pathlib import Path

import torch

from recbole_gen.model.artifacts import cache_key, load_or_build, progress

logger = logging.getLogger(__name__)

TINY_PRETRAIN_STEPS = 1500

#: settings that do not change what the pre-training learns (left out of its cache key)
_NOT_IN_KEY = {"history_len", "truncate_history", "lmm_max_length", "cond_dropout", "instruction", "gradient_checkpointing"}


def pretrain_steps(settings):
    steps = settings["pretrain_steps"]
    if steps is None:
        return 0 if settings["lmm_path"] else TINY_PRETRAIN_STEPS
    return int(steps)


def pretrain(core, steps, batch_size, learning_rate, seed, instruction, log_every=100):
    """Train ``core``'s trainable parameters to draw random catalogue items from their own prompt; returns info."""
    from recbole_gen.model.core import lr_lambda

    prompt = core.prompt.with_instruction(instruction)
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(max(1, steps // 10), steps, "cosine"))
    generator = torch.Generator().manual_seed(int(seed))
    n_items = core.item_tokens.shape[0]
    was_training, start, losses = core.training, time.time(), []
    core.train()
    try:
        for step in range(steps):
            items = torch.randint(1, n_items, (batch_size,), generator=generator)
            loss = core.loss([[i] for i in items.tolist()], items.to(core.item_tokens.device), prompt=prompt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if log_every and (step + 1) % log_every == 0:
                logger.info(f"catalogue pre-training step {progress(step + 1, steps, start)}: loss {loss.item():.4f}")
    finally:
        core.train(was_training)
    tail = losses[-max(1, steps // 10):]
    return {"steps": steps, "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4)}


def load_or_pretrain(core, cache_dir):
    """Pre-train ``core`` (or load the cached result); returns the build info, or None when the stage is off."""
    s = core.settings
    steps = pretrain_steps(s)
    if steps <= 0:
        return None
    run = {"steps": steps, "batch_size": int(s["pretrain_batch_size"]), "learning_rate": float(s["pretrain_learning_rate"]),
           "seed": int(s["pretrain_seed"]), "instruction": str(s["pretrain_instruction"])}
    model = {k: v for k, v in s.items() if k not in _NOT_IN_KEY and not k.startswith("pretrain_")}
    key = cache_key({"pretrain": run, "model": model, "vq": (core.vq_info or {}).get("key")}, core.item_pixels[1:].cpu())

    def build():
        info = pretrain(core, steps, run["batch_size"], run["learning_rate"], run["seed"], run["instruction"])
        return core.saved_state_dict(), {"settings": run, "items": core.item_tokens.shape[0] - 1, **info}

    state, info = load_or_build(Path(cache_dir) / "genlmm_pretrain", "pretrain", key, build,
                                f"GenLMM's catalogue pre-training ({steps} steps)")
    core.load_state_dict(state, strict=False)
    return info
