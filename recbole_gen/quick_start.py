"""RecBole's quick start (``run``, ``run_recbole``, ``load_data_and_model``) through the plugin.

The same steps as ``recbole.quick_start`` (which cannot be imported without ray), with recbole-gen's Config,
model/trainer lookup, datasets that own their item images, the artifact step of generative models, safe
checkpoints and image evaluation. RecBole models run exactly as RecBole would run them:

    config -> dataset (+ item images) -> splits -> model -> [init_from weights] -> artifacts -> trainer -> fit -> test
"""
import socket
import sys
import time
from logging import getLogger

import torch.distributed as dist
from recbole.data.transform import construct_transform
from recbole.utils import get_environment, get_flops, set_color

from recbole_gen.checkpoint import checkpoint_config, load_checkpoint, restore_model
from recbole_gen.config import Config, ConfigError, TrainingSettings
from recbole_gen.data import create_dataset, data_preparation, ensure_dataset_files
from recbole_gen.data.images import ImageSettings
from recbole_gen.evaluator import wants_image_metrics
from recbole_gen.evaluator.intervals import user_values
from recbole_gen.model.generative import GenerativeRecommender
from recbole_gen.ranks import rank0_first
from recbole_gen.retrieval.encoders import EncoderSettings
from recbole_gen.retrieval.index import IndexSettings
from recbole_gen.utils import get_model, get_trainer, init_logger, init_seed, training_randomness_kept, with_mixin


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, nproc=1, world_size=-1,
        ip="localhost", port="5678", group_offset=0):
    """Train and test one model; with ``nproc > 1`` spawn one process per rank as RecBole does (gloo on the CPU,
    nccl on GPUs); rank 0's result is returned. Under torchrun, call :func:`run_recbole` in each process instead."""
    if nproc == 1 and world_size <= 0:
        return run_recbole(model, dataset, config_file_list, config_dict, saved=saved)
    import torch.multiprocessing as mp

    checked = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    check_settings(checked)  # a wrong name or value stops here, with its own error, before any process starts
    if group_offset == 0:
        check_rendezvous(ip, port)
    ensure_dataset_files(checked)
    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": world_size if world_size > 0 else nproc, "ip": ip, "port": port,
                        "nproc": nproc, "offset": group_offset})
    ranks = mp.spawn(_run_rank, args=(model, dataset, config_file_list, config_dict, saved, queue), nprocs=nproc,
                     join=False)
    result = None
    while not ranks.join(timeout=1):  # raises when a rank fails; rank 0 waits in put() until its result is read
        if result is None and not queue.empty():
            result = queue.get()
    return result if result is not None or queue.empty() else queue.get()


def check_rendezvous(ip, port):
    """Rank 0 listens on ``ip:port`` for the other ranks; a port that another program holds would stop the run only
    once every process has started and torch has retried for 30 s, so it is refused before."""
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((ip, int(port)))
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not a port number"
        raise ConfigError(f"cannot listen on {ip}:{port} ({reason}), where the processes of --nproc meet: pass "
                          f"--port=<a free port>") from None


def _run_rank(rank, model, dataset, config_file_list, config_dict, saved, queue):
    run_recbole(model, dataset, config_file_list, {**config_dict, "local_rank": rank}, saved=saved, queue=queue)


#: the typed settings every run has: RecBole's training keys, item images, the evaluation encoder and index
RUN_SETTINGS = (TrainingSettings, ImageSettings, EncoderSettings, IndexSettings)


def check_settings(config):
    """Build the typed settings of every run (:data:`RUN_SETTINGS`) and of the run's model and trainer
    (``settings_class``), so a wrong value (a string for an int, a negative count, an unknown name) stops the run
    before any work, naming the key."""
    parts = (get_model(config["model"]), get_trainer(config["MODEL_TYPE"], config["model"], config["stage"]))
    for settings_class in (*RUN_SETTINGS, *(getattr(part, "settings_class", None) for part in parts)):
        if settings_class is not None:
            settings_class.from_config(config)


def needs_images(config):
    """Whether a run reads item images: a generative model, a model that compares them (``uses_item_images``), or
    image metrics in ``metrics``."""
    model_class = get_model(config["model"])
    return (issubclass(model_class, GenerativeRecommender) or getattr(model_class, "uses_item_images", False)
            or wants_image_metrics(config))


def run_recbole(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None):
    """Train on the training split, select on validation, report the test split; RecBole's result dict, plus the
    checkpoint, timings, epochs trained and each test user's share of every metric (``test_per_user``, see
    :func:`recbole_gen.evaluator.intervals.user_values`)."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    check_settings(config)
    with rank0_first():  # one process builds a built-in dataset and fills the caches, the others read them
        ensure_dataset_files(config)  # fail (or build a built-in dataset) before any log is written
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    with rank0_first():
        dataset = create_dataset(config, images=needs_images(config))
    logger.info(dataset)
    check_catalogue(config, dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = build_model(config, train_data._dataset)
    logger.info(model)
    logger.info(set_color("FLOPs", "blue") + f": {estimated_flops(model, dataset, config, logger)}")

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
        "epochs": len(getattr(trainer, "train_loss_dict", {})),  # RecBole's decision-tree trainers boost, no epochs
        "train_steps": optimizer_steps(trainer, train_data),
        "train_seconds": trained - started,
        "train_throughput": getattr(trainer, "throughput", {}),  # generative trainers: rows and tokens per second
        "test_seconds": tested - trained,
        "test_users": len(test_data._dataset.inter_feat),
        "test_per_user": user_values(trainer.eval_collector.last_struct, config),
    }
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def optimizer_steps(trainer, train_data):
    """The optimizer steps a fit took: recbole-gen's trainers count them (``optimizer_steps``); RecBole's step once
    per training batch of every epoch."""
    steps = getattr(trainer, "optimizer_steps", None)
    return steps if steps is not None else len(getattr(trainer, "train_loss_dict", {})) * len(train_data)


def estimated_flops(model, dataset, config, logger):
    """RecBole's FLOPs estimate of one batch, or why there is none: a generator's cost grows with each token it
    draws, and the estimate itself may fail (it calls ``predict``, which GRU4RecCPR and SASRecCPR refuse with
    ``assert False``, so stock RecBole stops there); an estimate never stops a run."""
    if isinstance(model, GenerativeRecommender):
        return "not estimated for generative models (their cost grows with each generated token; see benchmarks/)"
    try:
        with training_randomness_kept():  # a forward pass (BERT4Rec's masking draws too): the sweep counts no FLOPs
            return get_flops(model, dataset, config["device"], logger, construct_transform(config))
    except Exception as error:  # any failure: an estimate is only logged
        return f"not estimated (the estimate failed: {type(error).__name__}{f': {error}' if str(error) else ''})"


def check_catalogue(config, dataset):
    """The settings that depend on the data, checked once the dataset is read and before anything trains: a ranking
    cut-off (``topk``) that fits the catalogue (RecBole ranks the items and its padding item; more fails only when
    the first evaluation picks the top k)."""
    largest = max(config["topk"] or [0])
    if largest > dataset.item_num:
        raise ConfigError(f"topk asks for {largest} items, but dataset '{config['dataset']}' has "
                          f"{dataset.item_num - 1}: set topk to at most that (e.g. --topk=[{dataset.item_num - 1}])")


def build_model(config, dataset):
    """The model ready to train: built on ``dataset`` (the training split's), started from ``init_from``'s weights
    when given, and (a generative model) given its artifacts: tokenizer, catalogue tokens, pre-training."""
    from recbole_gen.trainer.artifacts import prepare_artifacts

    model = get_model(config["model"])(config, dataset).to(config["device"])
    if config["init_from"]:
        checkpoint = load_checkpoint(config["init_from"])
        model.load_state_dict(checkpoint["state_dict"])
        model.load_other_parameter(checkpoint.get("other_parameter"))
        getLogger().info(set_color("init_from", "blue") + f": {config['init_from']}")
    with rank0_first():  # rank 0 trains what is not cached yet (tokenizer, pre-training), the others load it
        prepare_artifacts(config, model, fresh=not config["init_from"])
    return model


def build_trainer(config, model, future_data=None):
    """The model's trainer for ``config['stage']`` (recbole-gen's, else RecBole's), with image evaluation (a no-op
    for a ranker without image metrics, whose evaluation it leaves as RecBole's; its collector keeps the last
    evaluation for per-user values) and the duties of a multi-process run (:class:`DistributedMixin`);
    ``future_data`` (the test split) gives the validation phase its FutureSim targets."""
    from recbole_gen.evaluator.image_evaluation import with_image_evaluation
    from recbole_gen.trainer.distributed import DistributedMixin

    trainer_class = with_mixin(get_trainer(config["MODEL_TYPE"], config["model"], config["stage"]), DistributedMixin)
    trainer = with_image_evaluation(trainer_class)(config, model)
    if future_data is not None:
        trainer.set_future_data(future_data)
    return trainer


def load_data_and_model(model_file, trust=False, config_dict=None, checkpoint_paths=False):
    """Rebuild config, dataset, splits and the trained model from a checkpoint (a ``.pth`` file or an exported
    folder). ``trust=True`` also loads checkpoints that need arbitrary unpickling (stock RecBole's). Files are read
    and written where ``config_dict`` and the defaults say (``data_path``, ``log_dir``, ``cache_dir``,
    ``checkpoint_dir``); ``checkpoint_paths=True`` takes the checkpoint's own (for one you wrote), and then a missing
    built-in dataset is not built there."""
    from recbole_gen.trainer.artifacts import prepare_artifacts

    checkpoint = load_checkpoint(model_file, trust=trust)
    config = checkpoint_config(checkpoint, model_file, config_dict, checkpoint_paths)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    dataset = create_dataset(config, images=needs_images(config), build=not checkpoint_paths)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"], config["reproducibility"])
    model = restore_model(checkpoint, train_data._dataset, model_file, config).to(config["device"])
    prepare_artifacts(config, model, fresh=False)
    return config, model, dataset, train_data, valid_data, test_data
