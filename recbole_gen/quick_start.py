"""RecBole's quick start (``run``, ``run_recbole``, ``load_data_and_model``) through the plugin.

The same steps as ``recbole.quick_start`` (which cannot be imported without ray), with
recbole-gen's Config, model/trainer lookup, dataset preparation and logger. RecBole models run
exactly as RecBole would run them.
"""
import sys
import time
from logging import getLogger

import torch.distributed as dist
from recbole.data import data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import get_environment, get_flops, init_seed, set_color

from recbole_gen.compat import load_checkpoint
from recbole_gen.config import Config
from recbole_gen.data import create_dataset, ensure_dataset_files
from recbole_gen.evaluator import wants_image_metrics
from recbole_gen.trainer.evaluation import with_image_metrics
from recbole_gen.utils import get_model, get_trainer, init_logger


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, nproc=1, world_size=-1,
        ip="localhost", port="5678", group_offset=0):
    """Train and test one model; with ``nproc > 1`` spawn one process per rank as RecBole does."""
    if nproc == 1 and world_size <= 0:
        return run_recbole(model, dataset, config_file_list, config_dict, saved=saved)
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": world_size if world_size > 0 else nproc, "ip": ip, "port": port,
                        "nproc": nproc, "offset": group_offset})
    mp.spawn(_run_rank, args=(model, dataset, config_file_list, config_dict, saved, queue), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def _run_rank(rank, model, dataset, config_file_list, config_dict, saved, queue):
    run_recbole(model, dataset, config_file_list, {**config_dict, "local_rank": rank}, saved=saved, queue=queue)


def run_recbole(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None):
    """Train on the training split, select on validation, report the test split; RecBole's result dict."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    ensure_dataset_files(config)  # fail (or build a built-in dataset) before any log is written
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = build_trainer(config, model, future_data=test_data)
    started = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    trained = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    tested = time.perf_counter()

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "model_file": trainer.saved_model_file if saved else None,
        "train_seconds": trained - started,
        "test_seconds": tested - trained,
        "test_users": len(test_data._dataset.inter_feat),
    }
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def build_trainer(config, model, future_data=None):
    """The model's trainer for ``config['stage']`` (recbole-gen's, else RecBole's), with image metrics when
    ``metrics`` lists any, for rankers and generators alike; ``future_data`` (the test split) gives
    the validation phase its FutureSim targets."""
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"], config["stage"])
    if not wants_image_metrics(config):
        return trainer_class(config, model)
    trainer = with_image_metrics(trainer_class)(config, model)
    if future_data is not None:
        trainer.set_future_data(future_data)
    return trainer


def load_data_and_model(model_file):
    """Rebuild config, dataset, splits and the trained model from a checkpoint saved by a trainer."""
    checkpoint = load_checkpoint(model_file)
    config = checkpoint["config"]
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
