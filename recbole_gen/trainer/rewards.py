"""Rewards for GenLMM's online RL stage (docs/rl.md): a registry of named reward functions, each with a weight
``rl_<name>_weight`` in yaml, and the :class:`RewardSet` that embeds a group of samples once and combines them.

Every sample embedding is L2-normalised (``recbole_gen.retrieval`` encoders), so a dot product is a cosine.
Shapes: ``B`` users, ``G`` samples per user (the group), ``D`` embedding width, ``N`` items.

==============  =============================================================================  =========
reward          value per sample                                                               range
==============  =============================================================================  =========
``target``      cosine to the user's true next (training) item                                [-1, 1]
``recommender`` p_rec(i | history) / max_j p_rec(j | history), i the sample's nearest catalogue    [0, 1]
                item (mean over the ``rl_recommender_k`` nearest): hard retrieval
``plan``        the same for the sample's plan (a semantic code: its items' summed probability)  [0, 1]
``history``     mean cosine to the user's history items (0 without history)                   [-1, 1]
``diversity``   penalty: max over the group's other samples of relu((cos - t) / (1 - t))      [0, 1]
``oracle``      the judge's utility of the sample's nearest catalogue item (datasets with a    [0, 1]
                judge file, e.g. emoji-seq; 0 for an item the user already took there)
==============  =============================================================================  =========

``total = sum_k sign_k * weight_k * reward_k``; penalties (``diversity``) enter with a minus sign. With
``rl_normalise_rewards`` each reward is first normalised within its group (:func:`group_normalise`), so a
weight means the same whatever the reward's scale.
"""
from dataclasses import dataclass
from functools import cached_property

import torch

from recbole_gen.model.frozen import realign

#: name -> (function(rollout, emb, context) -> [B, G], is_penalty); filled by :func:`reward`
REWARDS = {}


def reward(name, penalty=False):
    """Register ``function(step: RewardStep) -> [B, G]`` as reward ``name`` (weight key ``rl_<name>_weight``)."""
    def decorator(function):
        REWARDS[name] = (function, penalty)
        return function

    return decorator


# --------------------------------------------------------------------------- pure reward functions
def target_reward(sample_emb, target_emb):
    """``[B, G, D]``, ``[B, D]`` -> ``[B, G]`` cosine of each sample to its user's true next item."""
    return torch.einsum("bgd,bd->bg", sample_emb, target_emb)


def history_reward(sample_emb, history_emb, history_mask):
    """``[B, G, D]``, ``[B, L, D]``, ``[B, L]`` bool -> ``[B, G]`` mean cosine to the valid history
    items; 0 for a user without history."""
    sims = torch.einsum("bgd,bld->bgl", sample_emb, history_emb)
    mask = history_mask.unsqueeze(1).to(sims.dtype)
    return (sims * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def recommender_reward(nearest, item_probs, valid=None):
    """Hard retrieval through a recommender: ``nearest [B, G, k]`` catalogue items (each sample's k nearest under the
    reward encoder), ``item_probs [B, N]`` the recommender's next-item distribution per user, ``valid [N]`` the items
    that can be shown -> ``[B, G]``: the mean over the k items of ``p(item) / max p`` (the user's own scale), so an
    image whose nearest item is the recommender's favourite scores 1 whatever the user."""
    probs = item_probs.float()
    if valid is not None:
        probs = probs.masked_fill(~valid.view(1, -1), 0.0)
    relative = probs / probs.max(-1, keepdim=True).values.clamp(min=1e-12)
    return relative.gather(1, nearest.clamp(min=0).flatten(1)).view(nearest.shape).masked_fill(nearest < 0, 0).mean(-1)


def plan_reward(plans, item_probs, codes=None):
    """``plans [B, G]`` (items, or semantic codes with ``codes [N]`` each item's code) -> ``[B, G]``: the plan's
    probability under the recommender (a code: its items' summed probability) over the user's best plan's."""
    probs = item_probs.float()
    if codes is not None:
        probs = probs.new_zeros(len(probs), int(codes.max()) + 1).index_add_(1, codes, probs)
    return probs.gather(1, plans.clamp(min=0)) / probs.max(-1, keepdim=True).values.clamp(min=1e-12)


def group_normalise(values, eps=1e-6):
    """``[B, G]`` -> ``(v - mean) / (std + eps)`` within each row's group (population std); a group whose std is
    below ``eps`` (all equal) gets 0, never a division by 0. GRPO's advantages, and per-reward normalisation."""
    mean = values.mean(-1, keepdim=True)
    std = values.std(-1, unbiased=False, keepdim=True)
    return torch.where(std < eps, torch.zeros_like(values), (values - mean) / (std + eps))


def diversity_penalty(sample_emb, threshold=0.9):
    """``[B, G, D]`` -> ``[B, G]``: for each sample, ``relu((c - t) / (1 - t))`` with ``c`` its highest
    cosine to another sample of the same group; 0 when all samples are distinct (c <= t), 1 for an
    exact duplicate. A group of one sample gets 0."""
    groups = sample_emb.shape[1]
    if groups < 2:
        return sample_emb.new_zeros(sample_emb.shape[:2])
    sims = torch.einsum("bgd,bhd->bgh", sample_emb, sample_emb)
    eye = torch.eye(groups, dtype=torch.bool, device=sims.device)
    closest = sims.masked_fill(eye, float("-inf")).max(-1).values
    return ((closest - threshold) / max(1e-6, 1.0 - threshold)).clamp(0.0, 1.0)


def combine(components, weights):
    """Weighted total ``[B, G]``; penalties are subtracted."""
    total = None
    for name, value in components.items():
        w = float(weights.get(name, 0.0))
        if not w:
            continue
        term = -w * value if REWARDS[name][1] else w * value
        total = term if total is None else total + term
    if total is None:
        raise ValueError(f"every RL reward weight is 0: set at least one of "
                         f"{', '.join(f'rl_{name}_weight' for name in REWARDS)}")
    return total


# --------------------------------------------------------------------------- one step, as the rewards see it
@dataclass
class Rollout:
    """One step's samples: ``pixels [B, G, 3, S, S]``, their ``plans [B, G]`` (-1 without a plan), the users'
    internal ids ``[B]``, histories as RecBole's ``item_seq [B, L]`` / ``item_len [B]``, true next items ``[B]``."""

    pixels: torch.Tensor
    plans: torch.Tensor
    user_ids: torch.Tensor
    item_seq: torch.Tensor
    item_len: torch.Tensor
    targets: torch.Tensor


@dataclass
class RewardStep:
    """What every reward function reads: the rollout, its samples' embeddings ``[B, G, D]`` under the reward
    encoder, and the :class:`RewardSet` (catalogue, recommender, judge, settings); what two rewards share
    (the recommender's probabilities, the samples' nearest items) is computed once."""

    rollout: Rollout
    emb: torch.Tensor
    rewards: "RewardSet"

    @cached_property
    def recommender_probs(self):
        return self.rewards.recommender.probs(self.rollout.item_seq.cpu(), self.rollout.item_len.cpu())

    def nearest(self, k):
        batch, group = self.emb.shape[:2]
        _, items = self.rewards.catalogue.index.search(self.emb.reshape(batch * group, -1), k)
        return torch.as_tensor(items).reshape(batch, group, k)


@reward("target")
def _target(step):
    return target_reward(step.emb, step.rewards.catalogue.embeddings[step.rollout.targets.cpu()])


@reward("recommender")
def _recommender(step):
    return recommender_reward(step.nearest(step.rewards.recommender_k), step.recommender_probs,
                              step.rewards.catalogue.has_image)


@reward("plan")
def _plan(step):
    if (step.rollout.plans < 0).all():
        raise ValueError("rl_plan_weight > 0 rewards the plan, but this GenLMM has none: set plan: item or semantic")
    return plan_reward(step.rollout.plans.cpu(), step.recommender_probs, step.rewards.plan_codes)


@reward("history")
def _history(step):
    r = step.rewards
    seq, lengths = realign(step.rollout.item_seq.cpu(), step.rollout.item_len.cpu(),
                           min(max(1, r.history_len), step.rollout.item_seq.shape[1]))
    mask = (torch.arange(seq.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)) & (seq > 0)
    return history_reward(step.emb, r.catalogue.embeddings[seq], mask)


@reward("diversity", penalty=True)
def _diversity(step):
    return diversity_penalty(step.emb, step.rewards.diversity_threshold)


@reward("oracle")
def _oracle(step):
    r, rollout = step.rewards, step.rollout
    batch, group = step.emb.shape[:2]
    nearest = step.nearest(1).reshape(batch, group).clamp(min=0)
    # positions: the target's index in the user's sequence = its history length, and the consumed items its history
    # (both capped by MAX_ITEM_LIST_LENGTH for very long users: an approximation there)
    positions = rollout.item_len.cpu().repeat_interleave(group)
    users = rollout.user_ids.cpu().repeat_interleave(group)
    consumed = rollout.item_seq.cpu().repeat_interleave(group, dim=0)
    return r.judge.utility(users, nearest.reshape(-1, 1), positions, consumed).view(batch, group)


class RewardSet:
    """Embeds a rollout once under the reward encoder and returns each weighted reward.

    ``catalogue``: a :class:`~recbole_gen.retrieval.catalogue.ImageCatalogue` built with the reward encoder
    (not necessarily the evaluation encoder). ``recommender``: a
    :class:`~recbole_gen.model.frozen.FrozenRecommender` (needed when its weight is non-zero).
    ``judge``: the dataset's :class:`~recbole_gen.data.judge.DatasetJudge` (needed for ``oracle``).
    """

    def __init__(self, catalogue, weights, recommender=None, judge=None, recommender_k=1, diversity_threshold=0.9,
                 history_len=5, normalise=False, plan_codes=None):
        unknown = {k for k, v in weights.items() if float(v)} - set(REWARDS)
        if unknown:
            raise ValueError(f"unknown RL reward(s) {sorted(unknown)}; known: {', '.join(REWARDS)}")
        self.catalogue = catalogue
        self.weights = {k: float(v) for k, v in weights.items() if float(v)}
        self.recommender, self.judge, self.plan_codes = recommender, judge, plan_codes
        self.recommender_k, self.diversity_threshold = int(recommender_k), float(diversity_threshold)
        self.history_len, self.normalise = int(history_len), bool(normalise)
        if {"recommender", "plan"} & set(self.weights) and recommender is None:
            raise ValueError("rl_recommender_weight or rl_plan_weight > 0 needs a recommender (reward_recommender_file "
                             "or an on-demand SASRec)")
        if "oracle" in self.weights and judge is None:
            raise ValueError("rl_oracle_weight > 0 needs a dataset with a judge file (<dataset>.judge.npz, e.g. "
                             "emoji-seq's; format: recbole_gen/data/judge.py)")
        if not self.weights:
            combine({}, {})  # raises the "every weight is 0" error

    @torch.no_grad()
    def __call__(self, rollout):
        """-> ``(components: {name: [B, G]}, total [B, G])`` (only rewards with a weight; components raw, the total
        from normalised ones with ``normalise``)."""
        batch, group = rollout.pixels.shape[:2]
        emb = self.catalogue.encode(rollout.pixels.flatten(0, 1).float()).view(batch, group, -1).cpu()
        step = RewardStep(rollout, emb, self)
        components = {name: REWARDS[name][0](step) for name in self.weights}
        weighted = {k: group_normalise(v) for k, v in components.items()} if self.normalise else components
        return components, combine(weighted, self.weights)
