"""Catalogue pre-training: the tiny GenLMM learns to draw every catalogue item before SFT teaches it taste.

A from-scratch tiny model cannot learn both drawing and taste within the main job's budget (docs/genlmm.md).
This stage needs no user data: each step takes ``pretrain_batch_size`` random catalogue items and trains the
model to draw each one from a prompt holding ``pretrain_instruction`` and the item: as its plan (``plan: item |
semantic``, with an empty history: the plan -> drawing path SFT relies on), or, without a plan, as the only
history item. SFT then starts from a model that already knows *how* to draw *what*.
"""
import logging
import time

import torch

from recbole_gen.trainer.loop import OptimizerSteps, progress

logger = logging.getLogger(__name__)


def pretrain(core, steps, batch_size, learning_rate, seed, instruction, log_every=100):
    """Train ``core``'s trainable parameters to draw random catalogue items; returns the losses' summary."""
    prompt = core.prompt.with_instruction(instruction)
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = OptimizerSteps(torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01), params, total_steps=steps,
                               warmup=max(1, steps // 10), schedule="cosine", grad_clip=1.0)
    generator = torch.Generator().manual_seed(seed)
    was_training, start, losses = core.training, time.time(), []
    core.train()
    try:
        for step in range(steps):
            items = torch.randint(1, core.item_num, (batch_size,), generator=generator).to(core.lmm.device)
            histories = [[] for _ in items] if core.has_plan else [[i] for i in items.tolist()]
            loss = core("loss", histories, items, prompt=prompt, parts=True)["image"].mean()
            optimizer.backward(loss)
            losses.append(loss.item())
            if log_every and (step + 1) % log_every == 0:
                logger.info(f"catalogue pre-training step {progress(step + 1, steps, start)}: loss {loss.item():.4f}")
    finally:
        core.train(was_training)
    tail = losses[-max(1, steps // 10):]
    return {"steps": steps, "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4)}
