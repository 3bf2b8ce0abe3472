"""Rewards for GenLMM's online RL stage (docs/rl.md): each a small function of embeddings, plus the
:class:`RewardSet` that embeds a group of samples once and combines the weighted components.

Every sample embedding is L2-normalised (``recbole_gen.evaluator`` encoders), so a dot product is a
cosine. Shapes: ``B`` users, ``G`` samples per user (the group), ``D`` embedding width, ``N`` items.

==============  =============================================================================  =========
component       value per sample                                                               range
==============  =============================================================================  =========
``target``      cosine to the user's true next (training) item                                [-1, 1]
``recommender`` sum_i softmax_i(cos(sample, item_i) / T) * p_rec(i | history) / max_i p_rec    [0, 1]
``history``     mean cosine to the user's history items (0 without history)                   [-1, 1]
``diversity``   penalty: max over the group's other samples of relu((cos - t) / (1 - t))      [0, 1]
``oracle``      simulator utility of the sample's nearest catalogue item (emoji-seq only)     [0, 1]
==============  =============================================================================  =========

``total = sum_k weight_k * component_k``, with the diversity penalty entering with a minus sign.
"""
import logging
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

COMPONENTS = ("target", "recommender", "history", "diversity", "oracle")


# --------------------------------------------------------------------------- pure reward functions
def target_reward(sample_emb, target_emb):
    """``[B, G, D]``, ``[B, D]`` -> ``[B, G]`` cosine of each sample to its user's true next item."""
    return torch.einsum("bgd,bd->bg", sample_emb, target_emb)


def history_reward(sample_emb, history_emb, history_mask):
    """``[B, G, D]``, ``[B, L, D]``, ``[B, L]`` bool -> ``[B, G]`` mean cosine to the valid history
    items; 0 for a user without history."""
    sims = torch.einsum("bgd,bld->bgl", sample_emb, history_emb)
    mask = history_mask.unsqueeze(1).to(sims.dtype)
    count = mask.sum(-1)
    return (sims * mask).sum(-1) / count.clamp(min=1)


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
    weights = sims.softmax(-1)
    reward = torch.einsum("bgn,bn->bg", weights, probs)
    if normalise:
        reward = reward / probs.max(-1, keepdim=True).values.clamp(min=1e-12)
    return reward


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
    """Weighted total ``[B, G]``; the diversity component is a penalty (subtracted)."""
    total = None
    for name, value in components.items():
        w = float(weights.get(name, 0.0))
        if not w:
            continue
        term = -w * value if name == "diversity" else w * value
        total = term if total is None else total + term
    if total is None:
        raise ValueError("every RL reward weight is 0: set at least one of rl_target_weight, rl_recommender_weight, "
                         "rl_history_weight, rl_diversity_weight, rl_oracle_weight")
    return total


# --------------------------------------------------------------------------- the recommender reward's model
def _realign(item_seq, item_len, width):
    """RecBole's left-aligned histories cut to their last ``width`` items (for a recommender with a
    shorter ``MAX_ITEM_LIST_LENGTH``)."""
    out = torch.zeros((len(item_seq), width), dtype=torch.long, device=item_seq.device)
    lengths = item_len.clamp(max=width)
    for row, (n, m) in enumerate(zip(item_len.tolist(), lengths.tolist())):
        if m:
            out[row, :m] = item_seq[row, n - m:n]
    return out, lengths


class RecommenderScorer:
    """A frozen RecBole sequential recommender as ``probs(item_seq, item_len) -> [B, n_items]``."""

    def __init__(self, model, source):
        self.model = model.eval().requires_grad_(False)
        self.source = source

    @torch.no_grad()
    def probs(self, item_seq, item_len):
        from recbole.data.interaction import Interaction

        model = self.model
        width = int(model.max_seq_length) if hasattr(model, "max_seq_length") else item_seq.shape[1]
        seq, lengths = _realign(item_seq, item_len, min(width, item_seq.shape[1]))
        device = next(model.parameters()).device
        inter = Interaction({model.ITEM_SEQ: seq.to(device), model.ITEM_SEQ_LEN: lengths.to(device)})
        scores = model.full_sort_predict(inter).float().view(len(seq), -1).cpu()
        scores[:, 0] = float("-inf")
        return scores.softmax(-1)


def load_recommender(path, dataset, device="cpu"):
    """A RecBole checkpoint (SASRec...) trained on the same dataset and split, rebuilt on ``dataset``."""
    from recbole_gen.compat import load_checkpoint
    from recbole_gen.utils import get_model

    checkpoint = load_checkpoint(path, map_location="cpu")
    rconfig = checkpoint["config"]
    model = get_model(rconfig["model"])(rconfig, dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    if getattr(model, "n_items", dataset.item_num) != dataset.item_num:
        raise ValueError(f"reward_recommender_file {path}: its model has {model.n_items} items, this dataset "
                         f"{dataset.item_num}; train it on the same dataset and split")
    logger.info(f"RL recommender reward: {rconfig['model']} from {path}")
    return RecommenderScorer(model.to(device), str(path))


def recommender_config(config, seed=0):
    """The on-demand SASRec's config: every setting the user gave the GenLMM run (dataset, fields, filters,
    split, ``MAX_ITEM_LIST_LENGTH``...) except GenLMM's own model keys, so it reads the same data; SASRec's
    defaults (CE loss) for the model."""
    import yaml

    from recbole_gen.config import Config
    from recbole_gen.utils import properties_dirs

    genlmm_keys = {"model"}
    for folder in properties_dirs():
        layer = folder / "model" / "GenLMM.yaml"
        if layer.is_file():
            genlmm_keys |= set(yaml.safe_load(layer.read_text()) or {})
    inherited = {k: v for k, v in config.external_config_dict.items() if k not in genlmm_keys and not k.startswith("rl_")}
    return Config(model="SASRec", dataset=config["dataset"], config_dict={
        **inherited, "loss_type": "CE", "train_neg_sample_args": None, "device": "cpu", "show_progress": False,
        "seed": int(seed),
    })


def train_recommender(config, train_data, epochs=5, seed=0, save_dir=None):
    """Train a SASRec (CE loss) on GenLMM's own training split when no ``reward_recommender_file`` is
    given; saved RecBole-style to ``save_dir`` for reuse."""
    import os

    from recbole.model.sequential_recommender import SASRec
    from recbole.utils import get_local_time

    rconfig = recommender_config(config, seed)
    dataset = train_data._dataset
    started = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = SASRec(rconfig, dataset)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(int(epochs)):
            for interaction in train_data:
                interaction = interaction.to("cpu")
                loss = model.calculate_loss(interaction)
                opt.zero_grad()
                loss.backward()
                opt.step()
    logger.info(f"RL recommender reward: trained SASRec on demand ({epochs} epochs, {time.time() - started:.0f} s, "
                f"last batch loss {loss.item():.3f})")
    source = "trained on demand"
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        source = os.path.join(save_dir, f"SASRec-reward-{get_local_time()}.pth")
        torch.save({"config": rconfig, "state_dict": model.state_dict(), "other_parameter": model.other_parameter()},
                   source)
        logger.info(f"RL recommender reward: saved to {source} (pass it as reward_recommender_file next time)")
    return RecommenderScorer(model, source)


# --------------------------------------------------------------------------- everything together
@dataclass
class Rollout:
    """One step's samples: ``pixels [B, G, 3, S, S]``, the users' internal ids ``[B]``, histories as
    RecBole's ``item_seq [B, L]`` / ``item_len [B]``, true next items ``[B]``."""

    pixels: torch.Tensor
    user_ids: torch.Tensor
    item_seq: torch.Tensor
    item_len: torch.Tensor
    targets: torch.Tensor


class RewardSet:
    """Embeds a rollout once under the reward encoder and returns each weighted component.

    ``catalogue``: an :class:`~recbole_gen.evaluator.catalogue.ImageCatalogue` built with the reward
    encoder (not necessarily the evaluation encoder). ``recommender``: a :class:`RecommenderScorer`
    (needed when its weight is non-zero). ``simulator``: ``recbole_gen.data.simulator`` utility
    (needed for ``oracle``).
    """

    def __init__(self, catalogue, weights, recommender=None, simulator=None, recommender_temperature=0.05,
                 diversity_threshold=0.9, history_len=5):
        self.catalogue = catalogue
        self.weights = {k: float(v) for k, v in weights.items() if float(v)}
        self.recommender = recommender
        self.simulator = simulator
        self.recommender_temperature = float(recommender_temperature)
        self.diversity_threshold = float(diversity_threshold)
        self.history_len = int(history_len)
        unknown = set(self.weights) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown RL reward(s) {sorted(unknown)}; known: {', '.join(COMPONENTS)}")
        if "recommender" in self.weights and recommender is None:
            raise ValueError("rl_recommender_weight > 0 needs a recommender (reward_recommender_file or on-demand SASRec)")
        if "oracle" in self.weights and simulator is None:
            raise ValueError("rl_oracle_weight > 0 needs a dataset with a saved user simulator (emoji-seq)")
        if not self.weights:
            combine({}, {})  # raises the "every weight is 0" error

    def _history(self, item_seq, item_len):
        keep = max(1, self.history_len)
        seq, lengths = _realign(item_seq, item_len, min(keep, item_seq.shape[1]))
        mask = torch.arange(seq.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        return self.catalogue.embeddings[seq], mask & (seq > 0)

    @torch.no_grad()
    def __call__(self, rollout):
        """-> ``(components: {name: [B, G]}, total [B, G])`` (only components with a weight)."""
        batch, group = rollout.pixels.shape[:2]
        emb = self.catalogue.encode(rollout.pixels.flatten(0, 1).float()).view(batch, group, -1).cpu()
        item_seq, item_len = rollout.item_seq.cpu(), rollout.item_len.cpu()
        out = {}
        if "target" in self.weights:
            out["target"] = target_reward(emb, self.catalogue.embeddings[rollout.targets.cpu()])
        if "recommender" in self.weights:
            probs = self.recommender.probs(item_seq, item_len)
            out["recommender"] = recommender_reward(emb, self.catalogue.embeddings, probs, self.catalogue.has_image,
                                                    self.recommender_temperature)
        if "history" in self.weights:
            out["history"] = history_reward(emb, *self._history(item_seq, item_len))
        if "diversity" in self.weights:
            out["diversity"] = diversity_penalty(emb, self.diversity_threshold)
        if "oracle" in self.weights:
            _, nearest = self.catalogue.index.search(emb.reshape(batch * group, -1), 1)
            nearest = torch.as_tensor(nearest).reshape(batch, group).clamp(min=0)
            # positions: the target's index in the user's sequence = its history length (capped by
            # MAX_ITEM_LIST_LENGTH for very long users: an approximation there)
            positions = item_len.repeat_interleave(group).numpy()
            users = rollout.user_ids.cpu().repeat_interleave(group)
            out["oracle"] = self.simulator.utility(users, nearest.reshape(-1, 1), positions).view(batch, group)
        return out, combine(out, self.weights)


def reward_catalogue(store, encoder_name="pixel", size=None, path=None, device="cpu"):
    """The catalogue embedded by the *reward* encoder (cached on disk by the store like the evaluation one)."""
    from recbole_gen.evaluator.catalogue import ImageCatalogue
    from recbole_gen.evaluator.encoders import build_image_encoder

    options = {"size": size, "device": device}
    if encoder_name not in ("pixel", "random"):
        options["path"] = path
    encoder = build_image_encoder(encoder_name, **options)
    return ImageCatalogue.from_pixels(store.pixels(), encoder, has_image=torch.as_tensor(store.has_image, dtype=torch.bool),
                                      fd_dim=0, cached=getattr(store, "cached", None))
