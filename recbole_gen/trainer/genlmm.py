"""GenLMMTrainer: RecBole's Trainer with what an LMM's SFT needs.

- gradient accumulation (``gradient_accumulation_steps``) and gradient clipping (``grad_clip``, max norm);
- a learning-rate schedule over optimizer steps: linear warm-up (``warmup_steps``) then ``lr_scheduler``
  (constant / linear / cosine) down to zero at the end of ``epochs``;
- a wall-clock budget (``max_train_minutes``): training stops at the first batch past it, the model is
  validated once more and saved, so a CPU run fits a job's time limit;
- progress like RecBole's (tqdm with ``show_progress``) plus a log line every ``log_every_steps``
  optimizer steps with loss, learning rate and target image tokens per second.
Everything else (validation, early stopping, checkpoints, ``evaluate``) is RecBole's.
"""
import math
import time

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_gen.model.core import lr_lambda
from recbole_gen.utils import config_value


class GenLMMTrainer(Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.accumulation = max(1, int(config_value(config, "gradient_accumulation_steps", 1)))
        self.grad_clip = float(config_value(config, "grad_clip", 0.0))
        self.warmup_steps = int(config_value(config, "warmup_steps", 0))
        self.schedule = str(config_value(config, "lr_scheduler", "constant"))
        self.max_train_seconds = float(config_value(config, "max_train_minutes", 0)) * 60
        self.log_every = int(config_value(config, "log_every_steps", 50))
        self.global_step = 0
        self.scheduler = None
        self.budget_exhausted = False
        self._train_started = None
        self.throughput = {}

    def _build_optimizer(self, **kwargs):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return super()._build_optimizer(params=params, **kwargs)

    def _ensure_scheduler(self, train_data):
        if self.scheduler is None:
            per_epoch = math.ceil(len(train_data) / self.accumulation)
            total = per_epoch * self.epochs
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.warmup_steps, total, self.schedule))

    def _over_budget(self):
        return bool(self.max_train_seconds) and time.time() - self._train_started > self.max_train_seconds

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._ensure_scheduler(train_data)
        if self._train_started is None:
            self._train_started = time.time()
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        tokens_per_row = self.model.core.num_image_tokens
        iter_data = tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink")) \
            if show_progress else train_data
        total, batches, rows, started = 0.0, 0, 0, time.time()
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        last = len(train_data) - 1
        for batch_idx, interaction in enumerate(iter_data):
            interaction = interaction.to(self.device)
            loss = loss_func(interaction)
            self._check_nan(loss)
            (loss / self.accumulation).backward()
            total += loss.item()
            batches += 1
            rows += len(interaction)
            if (batch_idx + 1) % self.accumulation == 0 or batch_idx == last:
                if self.grad_clip:
                    clip_grad_norm_(params, self.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                if self.log_every and self.global_step % self.log_every == 0:
                    rate = rows * tokens_per_row / (time.time() - started)
                    self.logger.info(f"step {self.global_step}: loss {loss.item():.4f}, lr {self.scheduler.get_last_lr()[0]:.2e}, "
                                     f"{rate:,.0f} target image tokens/s")
                if show_progress:
                    iter_data.set_postfix(loss=f"{loss.item():.3f}")
            if self._over_budget():
                self.budget_exhausted = True
                self.logger.info(set_color(f"max_train_minutes reached after {self.global_step} optimizer steps", "yellow"))
                break
        elapsed = time.time() - started
        self.throughput = {"target_tokens_per_s": rows * tokens_per_row / max(elapsed, 1e-9), "rows": rows, "seconds": elapsed}
        return total / max(batches, 1)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """RecBole's ``fit``, one epoch at a time so ``max_train_minutes`` can end it with a final validation."""
        epochs, eval_step = self.epochs, self.eval_step
        result = (self.best_valid_score, self.best_valid_result)
        try:
            for epoch in range(self.start_epoch, epochs):
                self.epochs = epoch + 1
                result = super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                                     callback_fn=callback_fn) if not self.budget_exhausted else result
                self.start_epoch = epoch + 1
                if self.budget_exhausted or (valid_data and self.eval_step > 0 and self.cur_step > self.stopping_step):
                    if self.budget_exhausted and valid_data and eval_step > 0 and (epoch + 1) % eval_step:
                        self.eval_step = 1  # validate (and save if best) the budget-cut model once
                        score, res = self._valid_epoch(valid_data, show_progress=show_progress)
                        if (score > self.best_valid_score) == bool(self.valid_metric_bigger) or self.best_valid_result is None:
                            self.best_valid_score, self.best_valid_result = score, res
                            if saved:
                                self._save_checkpoint(epoch, verbose=verbose)
                        result = (self.best_valid_score, self.best_valid_result)
                    break
        finally:
            self.epochs, self.eval_step = epochs, eval_step
        return result
