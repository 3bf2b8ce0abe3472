"""A frozen RecBole recommender as a part of another model or trainer: the catalogue ranking that a drawn twin
redraws (:class:`~recbole_gen.model.reconstruction.TokenizerReconstruction`), the RL stage's recommender reward and
the plan head's optional teacher. Loaded from a checkpoint trained on the same dataset and split (a benchmark's
``@SASRec`` row), or one that the trainer trains on demand."""
import logging

import torch
from recbole.data.interaction import Interaction

from recbole_gen.checkpoint import load_checkpoint, restore_model

logger = logging.getLogger(__name__)


def realign(item_seq, item_len, width):
    """RecBole's left-aligned histories cut to their last ``width`` items (for a model with a shorter
    ``MAX_ITEM_LIST_LENGTH``)."""
    out = torch.zeros((len(item_seq), width), dtype=torch.long, device=item_seq.device)
    lengths = item_len.clamp(max=width)
    for row, (n, m) in enumerate(zip(item_len.tolist(), lengths.tolist())):
        if m:
            out[row, :m] = item_seq[row, n - m:n]
    return out, lengths


class FrozenRecommender:
    """A trained RecBole model, frozen: its scores (and softmax) over the catalogue for given histories or users."""

    def __init__(self, model, source):
        self.model = model.eval().requires_grad_(False)
        self.source = source

    @torch.no_grad()
    def scores(self, item_seq, item_len, users=None):
        """``[B, n_items]`` scores (padding -inf) on CPU: a sequential model reads the histories (cut to its own
        ``MAX_ITEM_LIST_LENGTH``), a general one (Pop, ItemKNN) the ``users``' internal ids."""
        model = self.model
        device = next(model.parameters()).device
        fields = {}
        if hasattr(model, "ITEM_SEQ"):
            width = int(model.max_seq_length) if hasattr(model, "max_seq_length") else item_seq.shape[1]
            seq, lengths = realign(item_seq, item_len, min(width, item_seq.shape[1]))
            fields = {model.ITEM_SEQ: seq.to(device), model.ITEM_SEQ_LEN: lengths.to(device)}
        if users is not None:
            fields[model.USER_ID] = users.to(device)
        scores = model.full_sort_predict(Interaction(fields)).float().view(len(item_seq), -1).cpu()
        scores[:, 0] = float("-inf")
        return scores

    def probs(self, item_seq, item_len):
        """The sequential model's softmax over the catalogue ``[B, n_items]``."""
        return self.scores(item_seq, item_len).softmax(-1)


def load_recommender(path, dataset, device="cpu"):
    """A RecBole checkpoint (SASRec...) trained on the same dataset and split, rebuilt on ``dataset``."""
    checkpoint = load_checkpoint(path)
    model = restore_model(checkpoint, dataset, path)
    if getattr(model, "n_items", dataset.item_num) != dataset.item_num:
        raise ValueError(f"recommender {path}: its model has {model.n_items} items, this dataset {dataset.item_num}; "
                         f"train it on the same dataset and split")
    logger.info(f"frozen recommender: {checkpoint['config']['model']} from {path}")
    return FrozenRecommender(model.to(device), str(path))
