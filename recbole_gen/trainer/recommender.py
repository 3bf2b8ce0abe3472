"""A frozen RecBole sequential recommender as a next-item distribution: the RL stage's recommender reward and
the plan head's optional teacher. Loaded from a checkpoint trained on the same split (the benchmark's ``@SASRec``
row), or trained on demand with RecBole's own Trainer."""
import logging
import os
import time

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
    """``probs(item_seq, item_len) -> [B, n_items]``: a sequential model's softmax over the catalogue."""

    def __init__(self, model, source):
        self.model = model.eval().requires_grad_(False)
        self.source = source

    @torch.no_grad()
    def probs(self, item_seq, item_len):
        model = self.model
        width = int(model.max_seq_length) if hasattr(model, "max_seq_length") else item_seq.shape[1]
        seq, lengths = realign(item_seq, item_len, min(width, item_seq.shape[1]))
        device = next(model.parameters()).device
        inter = Interaction({model.ITEM_SEQ: seq.to(device), model.ITEM_SEQ_LEN: lengths.to(device)})
        scores = model.full_sort_predict(inter).float().view(len(seq), -1).cpu()
        scores[:, 0] = float("-inf")
        return scores.softmax(-1)


def load_recommender(path, dataset, device="cpu"):
    """A RecBole checkpoint (SASRec...) trained on the same dataset and split, rebuilt on ``dataset``."""
    checkpoint = load_checkpoint(path)
    model = restore_model(checkpoint, dataset)
    if getattr(model, "n_items", dataset.item_num) != dataset.item_num:
        raise ValueError(f"recommender {path}: its model has {model.n_items} items, this dataset {dataset.item_num}; "
                         f"train it on the same dataset and split")
    logger.info(f"frozen recommender: {checkpoint['config']['model']} from {path}")
    return FrozenRecommender(model.to(device), str(path))


def train_recommender(config, train_data, epochs, seed, save_dir):
    """Train a SASRec (CE loss) on the run's own training split with RecBole's Trainer when no recommender file is
    given; saved to ``save_dir`` for reuse (pass it as ``reward_recommender_file`` next time)."""
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer

    from recbole_gen.config import Config

    inherited = {k: v for k, v in config.external_config_dict.items() if k in config.parameters["Dataset"]}
    rconfig = Config(model="SASRec", dataset=config["dataset"], config_dict={
        **inherited, "data_path": os.path.dirname(os.path.normpath(config["data_path"])), "epochs": int(epochs),
        "seed": int(seed), "device": "cpu", "show_progress": False, "checkpoint_dir": save_dir,
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10",
    })
    started = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = SASRec(rconfig, train_data._dataset)
        trainer = Trainer(rconfig, model)
        trainer.fit(train_data, saved=True, show_progress=False, verbose=False)
    logger.info(f"frozen recommender: trained SASRec on demand ({epochs} epochs, {time.time() - started:.0f} s), saved "
                f"to {trainer.saved_model_file} (pass it as reward_recommender_file next time)")
    return FrozenRecommender(model, trainer.saved_model_file)
