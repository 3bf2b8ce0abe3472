"""SFTTrainer: RecBole's Trainer contract (``fit`` / ``evaluate`` / checkpoints) with what a generator's supervised
training needs; GenLMMTrainer is GenLMM's SFT (GenDiff's trainer: recbole_gen/trainer/gendiff.py).

``fit`` is its own (as RecBole-GNN's NCLTrainer's is): epochs of :meth:`SFTTrainer._train_epoch` in the one
training-step shape of :mod:`recbole_gen.trainer.loop` (gradient accumulation, clipping, warm-up then
constant / linear / cosine schedule over the whole run), a wall-clock budget (``max_train_minutes``: training
stops at the first batch past it, the model is validated once more and saved, so a CPU run fits a job's time
limit), RecBole's validation every ``eval_step`` epochs with early stopping, and a log line every
``log_every_steps`` optimizer steps. With ``plan_teacher_file`` a frozen recommender trained on the same split
teaches GenLMM's plan head (KL to its next-item distribution, weight ``plan_teacher_weight``). Under ``--nproc > 1``
it does RecBole's DDP duties itself (:mod:`recbole_gen.trainer.distributed`): gradients averaged over the ranks at
each optimizer step, a per-epoch shuffle shared by the ranks, the budget stop and logged scalars agreed by all.
"""
import math
import time
from dataclasses import dataclass
from typing import Optional

from recbole.trainer import Trainer
from recbole.utils import early_stopping, set_color
from tqdm import tqdm

from recbole_gen.config import Settings
from recbole_gen.trainer.distributed import any_rank, gradient_sync, is_distributed, mean_over_ranks, world_size
from recbole_gen.trainer.loop import SCHEDULES, Budget, OptimizerSteps

DIST_STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class LoopSettings(Settings):
    """The supervised loop's keys beyond RecBole's own (defaults in the model's yaml)."""

    gradient_accumulation_steps: int
    grad_clip: float
    warmup_steps: int
    lr_scheduler: str
    max_train_minutes: float
    log_every_steps: int

    def check(self):
        self.require(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", ">= 1")
        self.require(self.lr_scheduler in SCHEDULES, "lr_scheduler", f"one of {', '.join(SCHEDULES)}")
        for key in ("grad_clip", "warmup_steps", "max_train_minutes", "log_every_steps"):
            self.require(getattr(self, key) >= 0, key, ">= 0")


@dataclass(frozen=True)
class SFTSettings(LoopSettings):
    """GenLMM's SFT: the loop's keys and its plan teacher's (defaults in properties/model/GenLMM.yaml)."""

    plan_teacher_file: Optional[str]
    plan_teacher_weight: float
    dist_strategy: str

    def check(self):
        super().check()
        self.require(0 <= self.plan_teacher_weight <= 1, "plan_teacher_weight", "in [0, 1]")
        self.require(self.dist_strategy in DIST_STRATEGIES, "dist_strategy", f"one of {', '.join(DIST_STRATEGIES)}")


class SFTTrainer(Trainer):
    """The supervised loop of a generative recommender: its ``calculate_loss`` per batch (:meth:`_loss`)."""

    settings_class = LoopSettings
    sft_settings = LoopSettings  # the loop's keys this trainer reads (a subclass may read more)

    def __init__(self, config, model):
        self.sft = self.sft_settings.from_config(config)
        self._shard(config, model)
        super().__init__(config, model)
        self.budget = Budget(self.sft.max_train_minutes)
        self.world = world_size(config)
        self.steps = None
        self.throughput = {}

    def _shard(self, config, model):
        """``dist_strategy: fsdp`` shards the model here, before RecBole's trainer would wrap it in DDP (a trainer
        that supports it overrides this)."""

    @property
    def optimizer_steps(self):
        """Optimizer steps taken so far (the benchmark reports them: a run is sized in steps, not minutes)."""
        return self.steps.step_count if self.steps is not None else 0

    def _build_optimizer(self, **kwargs):
        return super()._build_optimizer(params=[p for p in self.model.parameters() if p.requires_grad], **kwargs)

    def _loss(self, interaction):
        """One training batch's loss."""
        return self.model.calculate_loss(interaction)

    def _throughput_unit(self):
        """What the progress line counts per second, and how many of it one training row holds."""
        return "rows", 1

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        model, sft = self.model, self.sft
        if self.steps is None:
            total = math.ceil(len(train_data) / sft.gradient_accumulation_steps) * self.epochs
            self.steps = OptimizerSteps(self.optimizer, model.parameters(), total, sft.warmup_steps, sft.lr_scheduler,
                                        sft.grad_clip, sft.gradient_accumulation_steps, sync=gradient_sync(self))
        if is_distributed(self.config) and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)  # each epoch its own shuffle, the same on every rank
        self.budget.start()
        model.train()
        unit, per_row = self._throughput_unit()
        iter_data = tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink")) \
            if show_progress else train_data
        total, batches, rows, started = 0.0, 0, 0, time.time()
        for batch_idx, interaction in enumerate(iter_data):
            loss = self._loss(interaction.to(self.device))
            self._check_nan(loss)
            stepped = self.steps.backward(loss, last=batch_idx == len(train_data) - 1)
            total, batches, rows = total + loss.item(), batches + 1, rows + len(interaction)
            if stepped and sft.log_every_steps and self.steps.step_count % sft.log_every_steps == 0:
                logged = mean_over_ranks(self.config, {"loss": loss.item(), "rate": rows * per_row / (time.time() - started)})
                self.logger.info(f"step {self.steps.step_count}: loss {logged['loss']:.4f}, lr {self.steps.lr:.2e}, "
                                 f"{logged['rate'] * self.world:,.0f} {unit}/s")
            if show_progress:
                iter_data.set_postfix(loss=f"{loss.item():.3f}")
            if any_rank(self.config, self.budget.exhausted()):  # all ranks stop at the same batch
                self.logger.info(set_color(f"max_train_minutes reached after {self.steps.step_count} optimizer steps", "yellow"))
                break
        elapsed = time.time() - started
        epoch = mean_over_ranks(self.config, {"loss": total / max(batches, 1), "rows": rows})
        rows = round(epoch["rows"] * self.world)
        self.throughput = {"per_s": rows * per_row / max(elapsed, 1e-9), "unit": unit, "rows": rows, "seconds": elapsed}
        return epoch["loss"]

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Train until ``epochs``, early stopping on validation or the wall-clock budget; returns
        ``(best_valid_score, best_valid_result)`` like RecBole's ``fit``."""
        self.eval_collector.data_collect(train_data)
        validate = bool(valid_data) and self.eval_step > 0
        for epoch in range(self.start_epoch, self.epochs):
            started = time.time()
            loss = self._train_epoch(train_data, epoch, show_progress=show_progress)
            self.train_loss_dict[epoch] = loss
            if verbose:
                self.logger.info(self._generate_train_loss_output(epoch, started, time.time(), loss))
            self._add_train_loss_to_tensorboard(epoch, loss)
            out_of_time = any_rank(self.config, self.budget.exhausted())
            if not validate:
                if saved:
                    self._save_checkpoint(epoch, verbose=verbose)
            elif (epoch + 1) % self.eval_step == 0 or out_of_time or epoch == self.epochs - 1:
                if self._validate(valid_data, epoch, verbose, saved, show_progress, callback_fn):
                    break
            if out_of_time:
                break
        if saved and not self.train_loss_dict:  # epochs: 0 (e.g. evaluating an init_from checkpoint as it is)
            self._save_checkpoint(self.start_epoch, verbose=verbose)
        return self.best_valid_score, self.best_valid_result

    def _validate(self, valid_data, epoch, verbose, saved, show_progress, callback_fn):
        """One validation: early-stopping bookkeeping, a checkpoint when best; returns True to stop."""
        started = time.time()
        score, result = self._valid_epoch(valid_data, show_progress=show_progress)
        self.best_valid_score, self.cur_step, stop, improved = early_stopping(
            score, self.best_valid_score, self.cur_step, max_step=self.stopping_step, bigger=self.valid_metric_bigger)
        if verbose:
            self.logger.info(set_color(f"epoch {epoch} evaluating", "green") + f" [time: {time.time() - started:.2f}s, "
                             f"valid_score: {score:f}]\n" + set_color("valid result", "blue") + f": {result}")
        self.tensorboard.add_scalar("Vaild_score", score, epoch)
        if improved:
            if saved:
                self._save_checkpoint(epoch, verbose=verbose)
            self.best_valid_result = result
        if callback_fn:
            callback_fn(epoch, score)
        if stop and verbose:
            self.logger.info(f"Finished training, best eval result in epoch {epoch - self.cur_step * self.eval_step}")
        return stop


class GenLMMTrainer(SFTTrainer):
    """GenLMM's SFT; with ``plan_teacher_file`` a frozen recommender's next-item distribution teaches the plan head."""

    settings_class = SFTSettings
    sft_settings = SFTSettings

    def __init__(self, config, model):
        super().__init__(config, model)
        self.teacher = None

    def _shard(self, config, model):
        if self.sft.dist_strategy != "fsdp" or not is_distributed(config):
            return
        if model.settings.finetune != "full":
            raise ValueError(f"dist_strategy: fsdp shards a full fine-tuning (finetune: full); finetune: "
                             f"{model.settings.finetune} trains few parameters and runs on DDP (dist_strategy: ddp)")
        model.core.shard()

    def _throughput_unit(self):
        return "target image tokens", self.model.core.num_image_tokens

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._plan_teacher(train_data)
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)

    def _plan_teacher(self, train_data):
        from recbole_gen.model.frozen import load_recommender

        if self.sft.plan_teacher_file and self.teacher is None:
            if not self.model.core.has_plan:
                raise ValueError("plan_teacher_file teaches the plan head: set plan: item or semantic")
            self.teacher = load_recommender(self.sft.plan_teacher_file, train_data._dataset, device=self.device)

    def _loss(self, interaction):
        target = None
        if self.teacher is not None:
            target = self.teacher.probs(interaction[self.model.ITEM_SEQ], interaction[self.model.ITEM_SEQ_LEN]).to(self.device)
        return self.model.calculate_loss(interaction, plan_teacher=target)
