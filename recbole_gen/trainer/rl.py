"""Stage 2 of GenLMM: online RL with group-relative policy optimisation (docs/rl.md).

    run_recbole --model=GenLMM --dataset=emoji-seq --stage=rl --init_from=saved/GenLMM-<sft>.pth \
        [--reward_recommender_file=saved/SASRec-<...>.pth]

One step (:meth:`GenLMMRLTrainer._rl_step`):

1. ``rl_batch_size`` training rows (history -> next item) drawn with the trainer's own seeded generator;
2. ``rl_group_size`` images per row from the current policy (``rl_temperature``, ``rl_guidance_scale``); with a
   plan head, each image's plan is sampled too and is part of the action;
3. rewards (:mod:`recbole_gen.trainer.rewards`) and group-normalised advantages
   ``(r - mean_group) / std_group`` (0 for a constant group);
4. ``rl_inner_epochs`` updates of the clipped policy-gradient loss on the sampled plan's and image tokens'
   log-probabilities plus ``rl_kl_coef`` x KL(policy || reference) on both, the reference being the SFT model
   (``init_from``). With ``finetune: lora`` the RL stage trains a fresh LoRA adapter over the frozen SFT
   adapter and the reference is the same model with that adapter switched off
   (:meth:`GenLMMCore.reference_policy`); with ``finetune: full`` it is a frozen copy of the SFT weights.

The policy's log-probabilities are those of the conditional model at the rollout temperatures
(``log_softmax(logits / rl_temperature)``, plans at ``plan_temperature``); with guidance or top-k/top-p in the
rollouts the samples come from a slightly different distribution than the one scored (documented in docs/rl.md).
Rollouts and updates run with the model in eval mode (no dropout), so the first inner epoch's ratio is exactly 1.
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
from recbole_gen.trainer.genlmm import GenLMMTrainer
from recbole_gen.trainer.loop import OptimizerSteps
from recbole_gen.trainer.rewards import REWARDS, Rollout, RewardSet


@dataclass(frozen=True)
class RLSettings(Settings):
    """The RL stage's keys (defaults and meanings in properties/model/GenLMM.yaml)."""

    init_from: Optional[str]
    rl_steps: int
    rl_batch_size: int
    rl_group_size: int
    rl_inner_epochs: int
    rl_learning_rate: float
    rl_clip_eps: float
    rl_kl_coef: float
    rl_temperature: float
    rl_guidance_scale: float
    rl_top_k: int
    rl_top_p: float
    rl_advantage_eps: float
    rl_target_weight: float
    rl_recommender_weight: float
    rl_history_weight: float
    rl_diversity_weight: float
    rl_oracle_weight: float
    rl_reward_encoder: str
    rl_recommender_temperature: float
    rl_diversity_threshold: float
    reward_recommender_file: Optional[str]
    rl_recommender_epochs: int
    rl_seed: int
    rl_save_every: int
    rl_log_every: int
    rl_resume_from: Optional[str]
    rl_grad_clip: float

    def check(self):
        self.require(self.rl_temperature > 0, "rl_temperature", "> 0 (RL needs sampled, not greedy, rollouts)")
        for key in ("rl_steps", "rl_batch_size", "rl_group_size", "rl_inner_epochs"):
            self.require(getattr(self, key) >= 1, key, ">= 1")
        for key in ("rl_learning_rate", "rl_clip_eps", "rl_kl_coef", "rl_grad_clip", "rl_save_every", "rl_log_every"):
            self.require(getattr(self, key) >= 0, key, ">= 0")
        self.require(0 < self.rl_top_p <= 1, "rl_top_p", "in (0, 1]")

    def weights(self):
        return {name: getattr(self, f"rl_{name}_weight") for name in REWARDS}


class RLDivergenceError(RuntimeError):
    """A reward or loss became NaN/inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- the loss, piece by piece
def group_advantages(rewards, eps=1e-6):
    """``[B, G]`` rewards -> advantages ``(r - mean) / (std + eps)`` within each row's group (population
    std). A group whose std is below ``eps`` (constant reward) gets advantage 0, never a division by 0."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, unbiased=False, keepdim=True)
    adv = (rewards - mean) / (std + eps)
    return torch.where(std < eps, torch.zeros_like(adv), adv)


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


# --------------------------------------------------------------------------- the trainer
class GenLMMRLTrainer(GenLMMTrainer):
    """GRPO-style RL for GenLMM after SFT; RecBole's trainer contract (``fit``/``evaluate``/checkpoints).
    The quick start loads ``init_from`` into the model before the trainer is built."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.rl = RLSettings.from_config(config)
        if self.rl.rl_oracle_weight and "oracleutility" in [str(m).lower() for m in config["metrics"]]:
            raise ValueError("rl_oracle_weight > 0 trains on the simulator's utility, so OracleUtility is no longer a "
                             "held-out metric: remove it from metrics or set rl_oracle_weight: 0")
        if not self.rl.init_from:
            self.logger.warning(set_color("stage=rl without init_from: RL starts from (and is leashed to) an untrained "
                                          "GenLMM", "yellow"))
        # the KL reference: LoRA switches the RL adapter off; full fine-tuning keeps a frozen copy of the SFT weights
        self.reference = None if model.core.has_rl_adapter else copy.deepcopy(model.core).eval().requires_grad_(False)
        self.optimizer = self._build_optimizer(learning_rate=self.rl.rl_learning_rate)
        self.rl_optimizer = OptimizerSteps(self.optimizer, self.model.parameters(), grad_clip=self.rl.rl_grad_clip)
        self.rl_step = 0
        self.rl_history = []          # one dict of logged scalars per step
        self.sampler = torch.Generator().manual_seed(self.rl.rl_seed)
        self.rewards = None
        self.last_good_checkpoint = None

    # ------------------------------------------------------------------ setup
    def build_rewards(self, train_data):
        """The reward set for this run (reward encoder catalogue, recommender, simulator)."""
        from recbole_gen.retrieval.catalogue import ImageCatalogue
        from recbole_gen.trainer.recommender import load_recommender, train_recommender

        rl, model = self.rl, self.model
        weights = rl.weights()
        catalogue = ImageCatalogue.from_config(self.config, model.store, prefix="rl_reward_encoder")
        recommender = simulator = None
        if weights["recommender"]:
            if rl.reward_recommender_file:
                recommender = load_recommender(rl.reward_recommender_file, train_data._dataset, device=self.device)
            else:
                recommender = train_recommender(self.config, train_data, rl.rl_recommender_epochs, rl.rl_seed,
                                                self.checkpoint_dir)
        if weights["oracle"]:
            from recbole_gen.data.simulator import load_simulator

            simulator = load_simulator(self.config, train_data._dataset)
        self.logger.info(f"RL rewards: {', '.join(f'{k}={v:g}' for k, v in weights.items() if v)}; reward encoder "
                         f"{catalogue.encoder.describe()} (evaluation encoder: {self.config['eval_encoder']})")
        return RewardSet(catalogue, weights, recommender, simulator, rl.rl_recommender_temperature,
                         rl.rl_diversity_threshold, history_len=model.settings.history_len)

    # ------------------------------------------------------------------ one step
    def _rl_step(self, inter):
        rl, core, model = self.rl, self.model.core, self.model
        started = time.time()
        B, G = rl.rl_batch_size, rl.rl_group_size
        batch = inter[torch.randint(len(inter), (B,), generator=self.sampler)]
        item_seq, item_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
        targets, users = batch[model.POS_ITEM_ID], batch[self.config["USER_ID_FIELD"]]
        histories = core.histories(item_seq, item_len)
        temperature, plan_temperature = rl.rl_temperature, model.settings.plan_temperature
        self.model.eval()
        tokens, plans = core.generate_tokens(histories, num_samples=G, guidance_scale=rl.rl_guidance_scale,
                                             temperature=temperature, top_k=rl.rl_top_k, top_p=rl.rl_top_p,
                                             seed=rl.rl_seed * 100_003 + self.rl_step, plan_temperature=plan_temperature)
        components, total = self.rewards(Rollout(core.decode(tokens), users, item_seq, item_len, targets))
        if not torch.isfinite(total).all():
            bad = {k: int((~torch.isfinite(v)).sum()) for k, v in components.items()}
            self._diverged(f"non-finite reward (non-finite values per component: {bad})")
        advantages = group_advantages(total, rl.rl_advantage_eps).reshape(-1)
        flat_histories = [h for h in histories for _ in range(G)]
        flat_tokens, flat_plans = tokens.reshape(B * G, -1), plans.reshape(-1)

        def action_logprobs(policy):
            """Log-probabilities of the whole action, plan (if any) then image tokens: [B*G, (1 +) T]."""
            logp, plan_logp, entropy = policy.token_logprobs(flat_histories, flat_tokens, flat_plans, temperature,
                                                             plan_temperature)
            return (torch.cat([plan_logp.unsqueeze(1), logp], 1) if core.has_plan else logp), entropy

        with torch.no_grad():
            old_logp, _ = action_logprobs(core)
            with self.reference_policy() as reference:
                ref_logp, _ = action_logprobs(reference)
        for _ in range(rl.rl_inner_epochs):
            logp, entropy = action_logprobs(core)
            pg_loss, clip_fraction = clipped_policy_loss(logp, old_logp, advantages, rl.rl_clip_eps)
            kl = kl_penalty(logp, ref_logp).mean()
            loss = pg_loss + rl.rl_kl_coef * kl
            if not torch.isfinite(loss):
                self._diverged(f"non-finite loss (policy loss {pg_loss.item()}, KL {kl.item()})")
            self.rl_optimizer.backward(loss)
        self.rl_step += 1
        log = {"step": self.rl_step, "reward": total.mean().item(), "reward_std": total.std().item(),
               **{f"reward_{k}": v.mean().item() for k, v in components.items()},
               "kl": kl.item(), "loss": loss.item(), "policy_loss": pg_loss.item(), "entropy": entropy.mean().item(),
               "clip_fraction": clip_fraction.item(), "step_seconds": time.time() - started}
        self.rl_history.append(log)
        return log

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
                   "init_from": self.rl.init_from},
        }
        save_checkpoint(self.saved_model_file, state)
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
        self.sampler.set_state(rl["sampler"])
        self.logger.info(set_color("RL resumed", "blue") + f": {path} at step {self.rl_step}")

    def _after_step(self, log):
        """Hook after each completed step (tests use it to simulate an interruption)."""

    # ------------------------------------------------------------------ RecBole contract
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Run ``rl_steps`` RL steps, checkpointing every ``rl_save_every``; then validate once (if
        ``valid_data``) and save. Returns ``(best_valid_score, best_valid_result)`` like RecBole."""
        rl = self.rl
        if rl.rl_resume_from:
            self.resume_rl(rl.rl_resume_from)
        if self.rewards is None:
            self.rewards = self.build_rewards(train_data)
        inter = train_data._dataset.inter_feat
        self.model.eval()
        while self.rl_step < rl.rl_steps:
            log = self._rl_step(inter)
            self._log(log)
            if saved and rl.rl_save_every and self.rl_step % rl.rl_save_every == 0 and self.rl_step < rl.rl_steps:
                self._save_rl_checkpoint(verbose=verbose)
            self._after_step(log)
        if valid_data:
            score, result = self._valid_epoch(valid_data, show_progress=show_progress)
            self.best_valid_score, self.best_valid_result = score, result
            if verbose:
                self.logger.info(set_color("RL valid", "blue") + f": {result}")
        if saved:
            self._save_rl_checkpoint(verbose=verbose)
        return self.best_valid_score, self.best_valid_result

    def summary(self):
        """Means of the first and last 10% of the logged steps (for reports)."""
        if not self.rl_history:
            return {}
        k = max(1, math.ceil(len(self.rl_history) / 10))
        keys = [key for key in self.rl_history[0] if key != "step"]
        mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        return {key: (mean(self.rl_history[:k], key), mean(self.rl_history[-k:], key)) for key in keys}
