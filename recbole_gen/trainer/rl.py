"""Stage 2 of GenLMM: online learning from rewards (docs/rl.md), three ways, each a ``--stage``:

    run_recbole --model=GenLMM --dataset=emoji-seq --stage=rl --init_from=saved/GenLMM-<sft>.pth \
        [--reward_recommender_file=saved/SASRec-<...>.pth]          # or --stage=raft, --stage=dpo

Every step (:meth:`RolloutTrainer._rl_step`) draws ``rl_batch_size`` distinct training rows (history -> next item)
per process with the trainer's own seeded generator (under ``--nproc > 1`` each rank its own rows, each row's group
on one rank, gradients averaged over the ranks), samples ``rl_group_size`` images per row (with a plan head, each image's plan is
sampled too and is part of the action), scores them with the rewards (:mod:`recbole_gen.trainer.rewards`), then
updates the policy:

* ``rl`` (:class:`GenLMMRLTrainer`, GRPO): group-normalised advantages, ``rl_inner_epochs`` updates of the clipped
  policy-gradient loss on the log-probabilities of the plan and the image tokens plus ``rl_kl_coef`` x
  KL(policy || reference) on both;
* ``raft`` (:class:`GenLMMRAFTTrainer`, rejection-sampling fine-tuning): the SFT loss on each row's best-scored sample;
* ``dpo`` (:class:`GenLMMDPOTrainer`): samples drawn from the frozen SFT model, each row's best and worst make a
  chosen/rejected pair, DPO's loss with ``rl_dpo_beta``.

The reference (the SFT model loaded from ``init_from``) is, with ``finetune: lora``, the same model with the RL
adapter switched off (:meth:`GenLMMCore.reference_policy`); with ``finetune: full`` a frozen copy. Policy
log-probabilities are the conditional model's at the rollout temperatures (``log_softmax(logits / rl_temperature)``,
plans at ``plan_temperature``; RAFT and DPO score at temperature 1, as SFT does); with guidance or top-k/top-p in
the rollouts the samples come from a slightly different distribution than the one scored (docs/rl.md). Rollouts
and updates run in eval mode (no dropout), so the first inner epoch's ratio is exactly 1.
"""
import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Optional

import torch
from recbole.utils import set_color

from recbole_gen.checkpoint import load_checkpoint, save_checkpoint
from recbole_gen.config import Settings, plain_config
from recbole_gen.ranks import barrier
from recbole_gen.trainer.distributed import any_rank, gradient_sync, is_distributed, mean_over_ranks, rank_of
from recbole_gen.trainer.genlmm import GenLMMTrainer
from recbole_gen.trainer.loop import OptimizerSteps
from recbole_gen.trainer.rewards import REWARDS, Rollout, RewardSet, group_normalise


@dataclass(frozen=True)
class RLSettings(Settings):
    """The RL stages' keys (defaults and meanings in properties/model/GenLMM.yaml)."""

    init_from: Optional[str]
    rl_steps: int
    rl_batch_size: int
    rl_group_size: int
    rl_inner_epochs: int
    rl_learning_rate: float
    rl_clip_eps: float
    rl_kl_coef: float
    rl_dpo_beta: float
    rl_temperature: float
    rl_guidance_scale: float
    rl_top_k: int
    rl_top_p: float
    rl_advantage_eps: float
    rl_normalise_rewards: bool
    rl_target_weight: float
    rl_recommender_weight: float
    rl_plan_weight: float
    rl_history_weight: float
    rl_diversity_weight: float
    rl_oracle_weight: float
    rl_reward_encoder: str
    rl_recommender_k: int
    rl_diversity_threshold: float
    reward_recommender_file: Optional[str]
    rl_recommender_epochs: int
    rl_seed: int
    rl_save_every: int
    rl_log_every: int
    rl_eval_every: int
    rl_resume_from: Optional[str]
    rl_grad_clip: float

    def check(self):
        self.require(self.rl_temperature > 0, "rl_temperature", "> 0 (RL needs sampled, not greedy, rollouts)")
        for key in ("rl_steps", "rl_batch_size", "rl_group_size", "rl_inner_epochs", "rl_recommender_k"):
            self.require(getattr(self, key) >= 1, key, ">= 1")
        for key in ("rl_learning_rate", "rl_clip_eps", "rl_kl_coef", "rl_dpo_beta", "rl_grad_clip", "rl_save_every",
                    "rl_log_every", "rl_eval_every"):
            self.require(getattr(self, key) >= 0, key, ">= 0")
        self.require(0 < self.rl_top_p <= 1, "rl_top_p", "in (0, 1]")

    def weights(self):
        return {name: getattr(self, f"rl_{name}_weight") for name in REWARDS}


class RLDivergenceError(RuntimeError):
    """A reward or loss became NaN/inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- the loss, piece by piece
def group_advantages(rewards, eps=1e-6):
    """``[B, G]`` rewards -> GRPO's advantages: rewards normalised within each row's group (a constant group: 0)."""
    return group_normalise(rewards, eps)


def clipped_policy_loss(logp, old_logp, advantages, clip_eps=0.2, mask=None):
    """PPO's clipped surrogate per token: ``-min(ratio * A, clip(ratio, 1 - e, 1 + e) * A)`` with
    ``ratio = exp(logp - old_logp)``; ``logp``/``old_logp`` ``[N, T]``, ``advantages`` ``[N]`` (one per
    sample, shared by its tokens). Mean over each sample's tokens, then over samples.
    Returns ``(loss, clip_fraction)`` (share of tokens where the clipped term is the one used)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped).float()
    if mask is None:
        mask = torch.ones_like(per_token)
    per_sample = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_sample.mean(), ((was_clipped * mask).sum() / mask.sum().clamp(min=1)).detach()


def kl_penalty(logp, ref_logp):
    """Per-token estimate of KL(policy || reference) at the sampled tokens (the non-negative "k3"
    estimator ``exp(d) - d - 1`` with ``d = ref_logp - logp``); exactly 0 where they agree."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta):
    """DPO's loss on sequence log-probabilities ``[P]`` of chosen and rejected samples under the policy and the
    reference: ``-log sigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))``, mean over pairs.
    Returns ``(loss, margin, accuracy)`` (the implicit reward margin and the share of pairs it orders right)."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -torch.nn.functional.logsigmoid(margin).mean(), margin.mean().detach(), (margin > 0).float().mean()


# --------------------------------------------------------------------------- the trainers
class RolloutTrainer(GenLMMTrainer):
    """What every RL stage shares: rows, rollouts, rewards, the reference policy, logging, checkpoints and resume,
    RecBole's trainer contract (``fit``/``evaluate``). Subclasses implement :meth:`_update`. The quick start loads
    ``init_from`` into the model before the trainer is built."""

    settings_class = RLSettings

    def __init__(self, config, model):
        super().__init__(config, model)
        self.rl = RLSettings.from_config(config)
        if self.rl.rl_oracle_weight and "oracleutility" in [str(m).lower() for m in config["metrics"]]:
            raise ValueError("rl_oracle_weight > 0 trains on the judge's utility, so OracleUtility is no longer a "
                             "held-out metric: remove it from metrics or set rl_oracle_weight: 0")
        if not self.rl.init_from:
            self.logger.warning(set_color(f"stage={config['stage']} without init_from: it starts from (and is leashed "
                                          f"to) an untrained GenLMM", "yellow"))
        # the reference: LoRA switches the RL adapter off; full fine-tuning keeps a frozen copy of the SFT weights
        self.reference = None if model.core.has_rl_adapter else copy.deepcopy(model.core).eval().requires_grad_(False)
        self.optimizer = self._build_optimizer(learning_rate=self.rl.rl_learning_rate)
        self.rl_optimizer = OptimizerSteps(self.optimizer, self.model.parameters(), grad_clip=self.rl.rl_grad_clip,
                                           sync=gradient_sync(self))
        self.rl_step = 0
        self.rl_history = []          # one dict of logged scalars per step
        self.rl_valid_history = []    # the validation result every rl_eval_every steps: {"step": k, metric: value}
        self.sampler = torch.Generator().manual_seed(self.rl.rl_seed)
        self.rewards = None
        self.last_good_checkpoint = None

    def _shard(self, config, model):
        if self.sft.dist_strategy == "fsdp" and is_distributed(config):
            raise ValueError("RL runs on DDP (dist_strategy: ddp): its LoRA adapter or full fine-tuning keeps a "
                             "reference copy and scores rollouts outside a sharded forward; dist_strategy: fsdp is "
                             "for the SFT stage")

    # ------------------------------------------------------------------ setup
    def build_rewards(self, train_data):
        """The reward set for this run (reward encoder catalogue, recommender, judge)."""
        from recbole_gen.model.frozen import load_recommender
        from recbole_gen.retrieval.catalogue import ImageCatalogue
        from recbole_gen.trainer.recommender import train_recommender

        rl, model = self.rl, self.model
        weights = rl.weights()
        catalogue = ImageCatalogue.from_config(self.config, model.store, prefix="rl_reward_encoder")  # by all ranks
        recommender = judge = None
        if weights["recommender"] or weights["plan"]:
            if is_distributed(self.config) and not rl.reward_recommender_file:
                raise ValueError("under --nproc > 1 each rank sees a shard of the training split, so the reward "
                                 "recommender cannot be trained on demand: train SASRec first (run_recbole "
                                 "--model=SASRec) and pass its checkpoint as reward_recommender_file")
            if rl.reward_recommender_file:
                recommender = load_recommender(rl.reward_recommender_file, train_data._dataset, device=self.device)
            else:
                recommender = train_recommender(self.config, train_data, rl.rl_recommender_epochs, rl.rl_seed,
                                                self.checkpoint_dir)
        if weights["oracle"]:
            from recbole_gen.data.judge import load_judge

            judge = load_judge(self.config, train_data._dataset)
        self.logger.info(f"RL rewards: {', '.join(f'{k}={v:g}' for k, v in weights.items() if v)}; reward encoder "
                         f"{catalogue.encoder.describe()} (evaluation encoder: {self.config['eval_encoder']})")
        codes = model.core.plan_code if model.settings.plan == "semantic" else None
        return RewardSet(catalogue, weights, recommender, judge, rl.rl_recommender_k, rl.rl_diversity_threshold,
                         history_len=model.settings.history_len, normalise=rl.rl_normalise_rewards, plan_codes=codes)

    # ------------------------------------------------------------------ one step
    def rollout_policy(self):
        """The policy the samples come from: the current one (on-policy)."""
        return contextlib.nullcontext(self.model.core)

    def _rl_step(self, inter):
        rl, model = self.rl, self.model
        started = time.time()
        B, G = rl.rl_batch_size, rl.rl_group_size
        rank, world = rank_of(self.config), self.world
        if B * world > len(inter):
            raise ValueError(f"rl_batch_size {B} x {world} processes needs at least {B * world} training rows; the "
                             f"training split has {len(inter)}")
        batch = inter[torch.randperm(len(inter), generator=self.sampler)[rank * B:(rank + 1) * B]]
        item_seq, item_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
        histories = model.core.histories(item_seq, item_len)
        self.model.eval()
        with self.rollout_policy() as policy:
            tokens, plans = policy(
                "generate_tokens", histories, num_samples=G, guidance_scale=rl.rl_guidance_scale,
                temperature=rl.rl_temperature, top_k=rl.rl_top_k, top_p=rl.rl_top_p,
                seed=(rl.rl_seed * 100_003 + self.rl_step) * world + rank,
                plan_temperature=model.settings.plan_temperature, exclude=None if model.repeatable else item_seq)
        rollout = Rollout(model.core("decode", tokens), plans, batch[self.config["USER_ID_FIELD"]], item_seq, item_len,
                          batch[model.POS_ITEM_ID])
        components, total = self.rewards(rollout)
        if any_rank(self.config, not torch.isfinite(total).all()):
            bad = {k: int((~torch.isfinite(v)).sum()) for k, v in components.items()}
            self._diverged(f"non-finite reward (non-finite values per component on rank {rank}: {bad})")
        samples = ([h for h in histories for _ in range(G)], tokens.reshape(B * G, -1), plans.reshape(-1))
        log = self._update(samples, total)
        log = mean_over_ranks(self.config, {"reward": total.mean().item(), "reward_std": total.std().item(),
                                            **{f"reward_{k}": v.mean().item() for k, v in components.items()}, **log,
                                            "step_seconds": time.time() - started})
        if not math.isfinite(log["loss"]):
            self._diverged(f"non-finite loss ({log})")
        self.rl_step += 1
        log = {"step": self.rl_step, **log}
        self.rl_history.append(log)
        return log

    def _update(self, samples, total):
        """Update the policy from ``samples`` ``(histories [B*G], tokens [B*G, T], plans [B*G])`` and their rewards
        ``total [B, G]``; returns the logged scalars (``loss`` among them)."""
        raise NotImplementedError

    def _backward(self, loss):
        """Backward and optimizer step on ``loss``, taken by every rank or by none: skipped where some rank's loss
        is not finite (the step's log shows it); ``None`` (a rank without a sample of its own, e.g. no DPO pair)
        joins the others' step with a zero gradient."""
        if loss is None:
            loss = torch.zeros((), requires_grad=True)
        if not any_rank(self.config, not torch.isfinite(loss)):
            self.rl_optimizer.backward(loss)

    def action_logprobs(self, policy, samples, temperature, plan_temperature):
        """Log-probabilities of each sample's whole action, plan (if any) then image tokens: ``[N, (1 +) T]``, and
        the policy's entropy per image token ``[N, T]``."""
        histories, tokens, plans = samples
        logp, plan_logp, entropy = policy("token_logprobs", histories, tokens, plans, temperature, plan_temperature)
        return (torch.cat([plan_logp.unsqueeze(1), logp], 1) if self.model.core.has_plan else logp), entropy

    def reference_policy(self):
        """Context manager yielding the KL reference (a GenLMMCore): the SFT policy."""
        if self.reference is None:
            return self.model.core.reference_policy()
        return contextlib.nullcontext(self.reference)

    def _diverged(self, what):
        where = (f"the last good checkpoint is {self.last_good_checkpoint} (step {self._last_good_step})"
                 if self.last_good_checkpoint else "no checkpoint was written yet")
        raise RLDivergenceError(f"RL step {self.rl_step + 1}: {what}; stopping. {where}. Lower rl_learning_rate, raise "
                                f"rl_kl_coef, or check the reward inputs (reward encoder, recommender file).")

    def _log(self, log):
        for key, value in log.items():
            if key != "step" and self.tensorboard is not None:
                self.tensorboard.add_scalar(f"rl/{key}", value, log["step"])
        if self.rl.rl_log_every and log["step"] % self.rl.rl_log_every == 0:
            parts = ", ".join(f"{k} {v:.4f}" for k, v in log.items() if k not in ("step", "step_seconds"))
            self.logger.info(f"RL step {log['step']}/{self.rl.rl_steps}: {parts}, {log['step_seconds']:.2f} s")

    # ------------------------------------------------------------------ checkpoints
    def _save_rl_checkpoint(self, verbose=True):
        """RecBole's checkpoint layout (config, state_dict, other_parameter, optimizer, ...) plus ``rl``:
        the step, the row sampler's state and the logged history; plain data, written atomically."""
        state = {
            "config": plain_config(self.config), "epoch": 0, "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score), "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(), "optimizer": self.optimizer.state_dict(),
            "rl": {"step": self.rl_step, "sampler": self.sampler.get_state(), "history": list(self.rl_history),
                   "valid_history": list(self.rl_valid_history), "init_from": self.rl.init_from},
        }
        if rank_of(self.config) == 0:
            save_checkpoint(self.saved_model_file, state)
        barrier()
        self.last_good_checkpoint, self._last_good_step = self.saved_model_file, self.rl_step
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {self.saved_model_file} (RL step {self.rl_step})")

    def resume_rl(self, path):
        """Continue from an RL checkpoint: weights, optimizer, step, row sampler and log history."""
        checkpoint = load_checkpoint(path)
        if "rl" not in checkpoint:
            raise ValueError(f"{path} is not an RL checkpoint (no 'rl' state); use it as init_from instead")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        rl = checkpoint["rl"]
        self.rl_step, self.rl_history = int(rl["step"]), list(rl["history"])
        self.rl_valid_history = list(rl.get("valid_history", []))
        self.sampler.set_state(rl["sampler"])
        self.logger.info(set_color("RL resumed", "blue") + f": {path} at step {self.rl_step}")

    def _after_step(self, log):
        """Hook after each completed step (tests use it to simulate an interruption)."""

    # ------------------------------------------------------------------ RecBole contract
    @property
    def optimizer_steps(self):
        """RL steps taken (each: one rollout batch, ``rl_inner_epochs`` policy updates): the benchmark's steps."""
        return self.rl_step

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Run ``rl_steps`` steps, checkpointing every ``rl_save_every``; with ``valid_data``, validate before the
        first step and every ``rl_eval_every`` steps (held-out curves; rollouts and rows are seeded apart, so this
        changes no step), and always after the last; then save. Returns ``(best_valid_score, best_valid_result)``
        like RecBole."""
        rl = self.rl
        if rl.rl_resume_from:
            self.resume_rl(rl.rl_resume_from)
        if self.rewards is None:
            self.rewards = self.build_rewards(train_data)
        self.eval_collector.data_collect(train_data)
        inter = train_data._dataset.inter_feat
        every = rl.rl_eval_every if valid_data else 0
        if self._validation_due(every):
            self._held_out(valid_data, show_progress, verbose)
        self.model.eval()
        while self.rl_step < rl.rl_steps:
            log = self._rl_step(inter)
            self._log(log)
            if self._validation_due(every):
                self._held_out(valid_data, show_progress, verbose)
            if saved and rl.rl_save_every and self.rl_step % rl.rl_save_every == 0 and self.rl_step < rl.rl_steps:
                self._save_rl_checkpoint(verbose=verbose)
            self._after_step(log)
        if valid_data:
            self.best_valid_result = self._held_out(valid_data, show_progress, verbose)
        if saved:
            self._save_rl_checkpoint(verbose=verbose)
        return self.best_valid_score, self.best_valid_result

    def _validation_due(self, every):
        """A held-out validation at this step: every ``every`` steps before the last (the last always validates),
        once per step (a run resumed from a checkpoint may have validated at its step already)."""
        done = bool(self.rl_valid_history) and self.rl_valid_history[-1]["step"] == self.rl_step
        return bool(every) and self.rl_step < self.rl.rl_steps and self.rl_step % every == 0 and not done

    def _held_out(self, valid_data, show_progress, verbose):
        """Validate the current policy; the result joins ``rl_valid_history`` (the checkpoint keeps it)."""
        self.best_valid_score, result = self._valid_epoch(valid_data, show_progress=show_progress)
        self.rl_valid_history.append({"step": self.rl_step, **{k: float(v) for k, v in result.items()}})
        if verbose:
            self.logger.info(set_color(f"RL valid (step {self.rl_step})", "blue") + f": {result}")
        return result

    def summary(self):
        """Means of the first and last 10% of the logged steps (for reports)."""
        if not self.rl_history:
            return {}
        k = max(1, math.ceil(len(self.rl_history) / 10))
        keys = [key for key in self.rl_history[0] if key != "step"]
        mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        return {key: (mean(self.rl_history[:k], key), mean(self.rl_history[-k:], key)) for key in keys}


class GenLMMRLTrainer(RolloutTrainer):
    """GRPO: group-relative advantages, a clipped policy gradient and a KL leash to the SFT policy."""

    def _update(self, samples, total):
        rl, core = self.rl, self.model.core
        advantages = group_advantages(total, rl.rl_advantage_eps).reshape(-1)
        temperatures = (rl.rl_temperature, self.model.settings.plan_temperature)
        with torch.no_grad():
            old_logp, _ = self.action_logprobs(core, samples, *temperatures)
            with self.reference_policy() as reference:
                ref_logp, _ = self.action_logprobs(reference, samples, *temperatures)
        for _ in range(rl.rl_inner_epochs):
            logp, entropy = self.action_logprobs(core, samples, *temperatures)
            pg_loss, clip_fraction = clipped_policy_loss(logp, old_logp, advantages, rl.rl_clip_eps)
            kl = kl_penalty(logp, ref_logp).mean()
            loss = pg_loss + rl.rl_kl_coef * kl
            self._backward(loss)
        return {"kl": kl.item(), "loss": loss.item(), "policy_loss": pg_loss.item(), "entropy": entropy.mean().item(),
                "clip_fraction": clip_fraction.item()}


class GenLMMRAFTTrainer(RolloutTrainer):
    """RAFT (rejection-sampling fine-tuning): the SFT loss on each row's best-scored sample."""

    def _update(self, samples, total):
        histories, tokens, plans = samples
        B, G = total.shape
        best = torch.arange(B) * G + total.argmax(1)
        chosen = ([histories[i] for i in best.tolist()], tokens[best], plans[best])
        logp, entropy = self.action_logprobs(self.model.core, chosen, 1.0, 1.0)
        loss = -logp.mean()
        self._backward(loss)
        return {"loss": loss.item(), "chosen_reward": total.max(1).values.mean().item(), "entropy": entropy.mean().item()}


class GenLMMDPOTrainer(RolloutTrainer):
    """DPO on pairs built from the SFT model's samples (as Pigeon does): each row's best and worst sample under the
    rewards are chosen and rejected; rows whose samples all score the same make no pair."""

    def rollout_policy(self):
        return self.reference_policy()

    def _update(self, samples, total):
        histories, tokens, plans = samples
        B, G = total.shape
        rows = torch.nonzero(total.max(1).values > total.min(1).values).flatten()
        if not any_rank(self.config, len(rows)):
            return {"loss": 0.0, "margin": 0.0, "pair_accuracy": 0.0, "pairs": 0}
        if not len(rows):  # other ranks have pairs: take their steps with a zero gradient
            for _ in range(self.rl.rl_inner_epochs):
                self._backward(None)
            return {"loss": 0.0, "margin": 0.0, "pair_accuracy": 0.0, "pairs": 0}
        chosen, rejected = rows * G + total[rows].argmax(1), rows * G + total[rows].argmin(1)
        pick = torch.cat([chosen, rejected])
        pairs = ([histories[i] for i in pick.tolist()], tokens[pick], plans[pick])
        with torch.no_grad(), self.reference_policy() as reference:
            ref = self.action_logprobs(reference, pairs, 1.0, 1.0)[0].sum(1)
        for _ in range(self.rl.rl_inner_epochs):
            logp = self.action_logprobs(self.model.core, pairs, 1.0, 1.0)[0].sum(1)
            n = len(rows)
            loss, margin, accuracy = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], self.rl.rl_dpo_beta)
            self._backward(loss)
        return {"loss": loss.item(), "margin": margin.item(), "pair_accuracy": accuracy.item(), "pairs": len(rows)}
