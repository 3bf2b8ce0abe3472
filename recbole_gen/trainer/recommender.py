"""A frozen RecBole sequential recommender for the RL stage's recommender reward, trained on demand with RecBole's
own Trainer when no checkpoint is given (loading one: :func:`recbole_gen.model.frozen.load_recommender`)."""
import logging
import os
import time

import torch

from recbole_gen.model.frozen import FrozenRecommender

logger = logging.getLogger(__name__)


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
