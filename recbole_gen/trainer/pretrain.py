"""The stages before SFT: the tiny GenLMM learns to draw every catalogue item, then what comes next.

A from-scratch tiny model cannot learn both drawing and taste within the main job's budget (docs/genlmm.md).

* **Catalogue pre-training** (:func:`pretrain`) needs no user data: each step takes ``pretrain_batch_size`` random
  catalogue items and trains the model to draw each one from a prompt holding ``pretrain_instruction`` and the item:
  as its plan (``plan: item | semantic``, with an empty history: the plan -> drawing path SFT relies on), or,
  without a plan, as the only history item.
* **The plan stage** (:func:`plan_stage`) trains the plan head alone on the training split's rows (history -> next
  item): the plan needs no image token, so a step costs a prompt's forward pass instead of a prompt and a drawing,
  and the plan head gets many more examples than SFT's joint steps give it. Only the head's own parameters move: the
  item vectors and the language model also condition the drawing, and training them for the plan alone undid the
  pre-training's drawing (docs/genlmm.md: PlanFidelity 0.025 after SFT, against 0.19 without the stage).

SFT then starts from a model that already knows *how* to draw *what*, and what users take next.
"""
import logging
import time

import torch

from recbole_gen.trainer.loop import OptimizerSteps, progress

logger = logging.getLogger(__name__)


def pretrain(core, steps, batch_size, learning_rate, seed, instruction, log_every=100):
    """Train ``core``'s trainable parameters to draw random catalogue items; returns the losses' summary."""
    prompt = core.prompt.with_instruction(instruction)

    def loss(items):
        histories = [[] for _ in items] if core.has_plan else [[i] for i in items.tolist()]
        return core("loss", histories, items.to(core.lmm.device), prompt=prompt, parts=True)["image"].mean()

    return _train(core, loss, core.item_num - 1, steps, batch_size, learning_rate, seed, "catalogue pre-training",
                  log_every, offset=1)


def plan_stage(core, histories, targets, steps, batch_size, learning_rate, seed, exclude=None, log_every=100):
    """Train ``core``'s plan head (:meth:`~recbole_gen.model.core.GenLMMCore.plan_head_parameters`) on the plan's
    cross-entropy over the rows ``histories`` (lists of item ids) -> ``targets`` (``LongTensor``), leaving each row's
    ``exclude`` items (``[rows, c]``, 0-padded: what its user already took, under ``repeatable: False``) out of the
    softmax; returns the losses' summary."""
    targets = torch.as_tensor(targets)

    def loss(rows):
        return core("plan_only_loss", [histories[r] for r in rows.tolist()], targets[rows].to(core.lmm.device),
                    None if exclude is None else exclude[rows])

    return _train(core, loss, len(histories), steps, batch_size, learning_rate, seed, "plan stage", log_every,
                  params=core.plan_head_parameters())


def _train(core, loss_of, population, steps, batch_size, learning_rate, seed, name, log_every, offset=0, params=None):
    """``steps`` AdamW steps (10% warm-up, cosine decay) of ``params`` (default: every trainable parameter) on
    ``loss_of(indices)`` for ``batch_size`` indices (on the CPU) drawn uniformly from ``offset .. offset + population
    - 1`` with ``seed``'s generator."""
    params = [p for p in core.parameters() if p.requires_grad] if params is None else params
    optimizer = OptimizerSteps(torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01), params, total_steps=steps,
                               warmup=max(1, steps // 10), schedule="cosine", grad_clip=1.0)
    generator = torch.Generator().manual_seed(seed)
    was_training, start, losses = core.training, time.time(), []
    core.train()
    try:
        for step in range(steps):
            indices = torch.randint(offset, offset + population, (batch_size,), generator=generator)
            loss = loss_of(indices)
            optimizer.backward(loss)
            losses.append(loss.item())
            if log_every and (step + 1) % log_every == 0:
                logger.info(f"{name} step {progress(step + 1, steps, start)}: loss {loss.item():.4f}")
    finally:
        core.train(was_training)
    tail = losses[-max(1, steps // 10):]
    return {"steps": steps, "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4)}
