"""The one training-step shape every loop here shares: SFT, the catalogue pre-training, the image tokenizer's
training and RL. Backward of each micro-batch, then every ``accumulation`` micro-batches: clip, step, advance
the learning-rate schedule, zero the gradients; a wall-clock budget; a progress string for log lines."""
import math
import time

import torch
from torch.nn.utils import clip_grad_norm_

SCHEDULES = ("constant", "linear", "cosine")


def lr_lambda(warmup, total, schedule):
    """Linear warm-up then constant / linear / cosine decay to 0 at ``total`` steps, as a ``LambdaLR`` factor."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_scheduler must be one of {', '.join(SCHEDULES)}, got {schedule!r}")

    def factor(step):
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or not total:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class OptimizerSteps:
    """``steps.backward(loss)`` per micro-batch; the optimizer steps every ``accumulation`` of them (or when
    ``last``), after clipping the gradient norm to ``grad_clip`` (0 = off) and before the schedule advances.
    ``sync`` (a :class:`~recbole_gen.trainer.distributed.GradientSync`, multi-process runs) averages the gradients
    over the ranks at each step and not on the micro-steps between."""

    def __init__(self, optimizer, params, total_steps=0, warmup=0, schedule="constant", grad_clip=0.0, accumulation=1,
                 sync=None):
        self.optimizer, self.sync = optimizer, sync
        self.params = [p for p in params if p.requires_grad]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps, schedule))
        self.grad_clip, self.accumulation = float(grad_clip), max(1, int(accumulation))
        self.micro, self.step_count = 0, 0
        optimizer.zero_grad(set_to_none=True)

    def backward(self, loss, last=False):
        """Accumulate ``loss``'s gradient; returns True when this call stepped the optimizer."""
        steps = last or (self.micro + 1) % self.accumulation == 0
        if self.sync is not None:
            loss = self.sync.prepare(loss, sync=steps)
        (loss / self.accumulation).backward()
        self.micro += 1
        if not steps:
            return False
        if self.grad_clip:
            clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro, self.step_count = 0, self.step_count + 1
        return True

    @property
    def lr(self):
        return self.scheduler.get_last_lr()[0]

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "steps": self.step_count}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = state["steps"]


class Budget:
    """A wall-clock budget in minutes (0 = none), started on first use."""

    def __init__(self, minutes):
        self.seconds = float(minutes) * 60
        self.started = None

    def start(self):
        if self.started is None:
            self.started = time.time()
        return self

    def exhausted(self):
        return bool(self.seconds) and self.started is not None and time.time() - self.started > self.seconds


def progress(done, total, start):
    """``"done/total, 12s elapsed, ETA 1m05s"`` for the log lines of a long loop."""
    elapsed = time.time() - start
    left = elapsed / max(done, 1) * (total - done)
    return f"{done}/{total}, {elapsed:.0f}s elapsed, ETA {int(left // 60)}m{int(left % 60):02d}s"
