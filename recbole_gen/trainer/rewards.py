"""Rewards for GenLMM's online RL stage (docs/rl.md): a registry of named reward functions, each with a weight
``rl_<name>_weight`` in yaml, and the :class:`RewardSet` that embeds a group of samples once and combines them.

Every sample embedding is L2-normalised (``recbole_gen.retrieval`` encoders), so a dot product is a cosine.
Shapes: ``B`` users, ``G`` samples per user (the group), ``D`` embedding width, ``N`` items.

==============  =============================================================================  =========
reward          value per sample                                                               range
==============  =============================================================================  =========
``target``      cosine to the user's true next (training) item                                [-1, 1]
``recommender`` sum_i softmax_i(cos(sample, item_i) / T) * p_rec(i | history) / max_i p_rec    [0, 1]
``history``     mean cosine to the user's history items (0 without history)                   [-1, 1]
``diversity``   penalty: max over the group's other samples of relu((cos - t) / (1 - t))      [0, 1]
``oracle``      simulator utility of the sample's nearest catalogue item (emoji-seq only)     [0, 1]
==============  =============================================================================  =========

``total = sum_k sign_k * weight_k * reward_k``; penalties (``diversity``) enter with a minus sign.
"""
from dataclasses import dataclass

import torch

from recbole_gen.trainer.recommender import realign

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


def recommender_reward(sample_emb, catalogue_emb, item_probs, valid=None, temperature=0.05, normalise=True):
    """Soft retrieval through a recommender: ``sum_i softmax_i(cos(sample, item_i) / temperature) * p(i)``.

    ``catalogue_emb [N, D]``; ``item_probs [B, N]`` the recommender's next-item distribution per user;
    ``valid [N]`` bool (items that can be retrieved: with an image, not padding). With ``normalise``
    the value is divided by the user's largest ``p(i)`` over valid items, so it lies in [0, 1] and an
    image that is exactly the recommender's favourite item scores close to 1 whatever the user.
    """
    sims = torch.einsum("bgd,nd->bgn", sample_emb, catalogue_emb) / float(temperature)
    probs = item_probs.float()
    if valid is not None:
        sims = sims.masked_fill(~valid.view(1, 1, -1), float("-inf"))
        probs = probs.masked_fill(~valid.view(1, -1), 0.0)
    reward_ = torch.einsum("bgn,bn->bg", sims.softmax(-1), probs)
    if normalise:
        reward_ = reward_ / probs.max(-1, keepdim=True).values.clamp(min=1e-12)
    return reward_


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
    """One step's samples: ``pixels [B, G, 3, S, S]``, the users' internal ids ``[B]``, histories as
    RecBole's ``item_seq [B, L]`` / ``item_len [B]``, true next items ``[B]``."""

    pixels: torch.Tensor
    user_ids: torch.Tensor
    item_seq: torch.Tensor
    item_len: torch.Tensor
    targets: torch.Tensor


@dataclass
class RewardStep:
    """What every reward function reads: the rollout, its samples' embeddings ``[B, G, D]`` under the reward
    encoder, and the :class:`RewardSet` (catalogue, recommender, simulator, settings)."""

    rollout: Rollout
    emb: torch.Tensor
    rewards: "RewardSet"


@reward("target")
def _target(step):
    return target_reward(step.emb, step.rewards.catalogue.embeddings[step.rollout.targets.cpu()])


@reward("recommender")
def _recommender(step):
    r = step.rewards
    probs = r.recommender.probs(step.rollout.item_seq.cpu(), step.rollout.item_len.cpu())
    return recommender_reward(step.emb, r.catalogue.embeddings, probs, r.catalogue.has_image, r.recommender_temperature)


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
    _, nearest = r.catalogue.index.search(step.emb.reshape(batch * group, -1), 1)
    nearest = torch.as_tensor(nearest).reshape(batch, group).clamp(min=0)
    # positions: the target's index in the user's sequence = its history length (capped by
    # MAX_ITEM_LIST_LENGTH for very long users: an approximation there)
    positions = rollout.item_len.cpu().repeat_interleave(group).numpy()
    users = rollout.user_ids.cpu().repeat_interleave(group)
    return r.simulator.utility(users, nearest.reshape(-1, 1), positions).view(batch, group)


class RewardSet:
    """Embeds a rollout once under the reward encoder and returns each weighted reward.

    ``catalogue``: a :class:`~recbole_gen.retrieval.catalogue.ImageCatalogue` built with the reward encoder
    (not necessarily the evaluation encoder). ``recommender``: a
    :class:`~recbole_gen.trainer.recommender.FrozenRecommender` (needed when its weight is non-zero).
    ``simulator``: ``recbole_gen.data.simulator`` utility (needed for ``oracle``).
    """

    def __init__(self, catalogue, weights, recommender=None, simulator=None, recommender_temperature=0.05,
                 diversity_threshold=0.9, history_len=5):
        unknown = {k for k, v in weights.items() if float(v)} - set(REWARDS)
        if unknown:
            raise ValueError(f"unknown RL reward(s) {sorted(unknown)}; known: {', '.join(REWARDS)}")
        self.catalogue = catalogue
        self.weights = {k: float(v) for k, v in weights.items() if float(v)}
        self.recommender, self.simulator = recommender, simulator
        self.recommender_temperature = float(recommender_temperature)
        self.diversity_threshold = float(diversity_threshold)
        self.history_len = int(history_len)
        if "recommender" in self.weights and recommender is None:
            raise ValueError("rl_recommender_weight > 0 needs a recommender (reward_recommender_file or on-demand SASRec)")
        if "oracle" in self.weights and simulator is None:
            raise ValueError("rl_oracle_weight > 0 needs a dataset with a saved user simulator (emoji-seq)")
        if not self.weights:
            combine({}, {})  # raises the "every weight is 0" error

    @torch.no_grad()
    def __call__(self, rollout):
        """-> ``(components: {name: [B, G]}, total [B, G])`` (only rewards with a weight)."""
        batch, group = rollout.pixels.shape[:2]
        emb = self.catalogue.encode(rollout.pixels.flatten(0, 1).float()).view(batch, group, -1).cpu()
        step = RewardStep(rollout, emb, self)
        components = {name: REWARDS[name][0](step) for name in self.weights}
        return components, combine(components, self.weights)
