"""Small validation sweeps over a benchmark row's settings (benchmarks/baselines/, benchmarks/rl/).

A sweep is every combination of a ``grid``, then each value of ``then`` on top of the best point so far (a key
naming several parameters, "a b", sets each to the value; ``then`` is a mapping, or a list of one-key mappings when
a key is stepped more than once). A trial is the row of the benchmark preset with one point,
trained as ``run_recbole`` trains it and validated, never tested: only the main job tests, with the winners.
"""
import itertools
import logging
import os
import time


from recbole_gen.config import Config
from recbole_gen.data import create_dataset, data_preparation
from recbole_gen.quick_start import build_model, build_trainer, needs_images
from recbole_gen.utils import init_logger, init_seed


def point(keys, values):
    """A grid point as config keys: a key naming several parameters ("a b") sets each to the value."""
    return {name: value for key, value in zip(keys, values) for name in key.split()}


def grid_points(grid):
    """Every combination of ``{key: [values]}``, in the file's order."""
    return [point(list(grid), values) for values in itertools.product(*grid.values())]


def then_steps(spec):
    """``then`` as ``(key, values)`` steps in order, from a mapping or a list of one-key mappings."""
    then = spec.get("then") or {}
    return list(then.items()) if isinstance(then, dict) else [step for entry in then for step in entry.items()]


def swept_keys(spec):
    keys = [*spec["grid"], *(key for key, _ in then_steps(spec))]
    return list(dict.fromkeys(name for key in keys for name in key.split()))


def validate(model, dataset, config_dict, swept):
    """Fit one point as run_recbole fits it (same seeds, same dataset, same trainer) and validate it. Returns the
    validation result, the values the run used for every ``swept`` key (the model's defaults included), the epochs
    trained, the seconds and the 1-minute load average at the end (timings are comparable near 1-2 on 2 cores)."""
    config = Config(model=model, dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logging.getLogger().setLevel(logging.WARNING)
    data = create_dataset(config, images=needs_images(config))
    train_data, valid_data, _ = data_preparation(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    trainer = build_trainer(config, build_model(config, train_data._dataset))
    started = time.perf_counter()
    _, valid = trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    if valid is None:  # nothing trained (epochs: 0): the model as it was loaded
        valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    return {"params": {key: config[key] for key in swept}, "valid": {k: float(v) for k, v in valid.items()},
            "epochs": len(trainer.train_loss_dict), "seconds": round(time.perf_counter() - started, 1),
            "load": round(os.getloadavg()[0], 2)}


def run_sweep(spec, run, score, done=()):
    """The trials of ``spec`` (``grid``, then ``then``) and the winner's params: ``run(params)`` returns a trial
    (:func:`validate`'s dict), ``score(trial)`` ranks them (the first of equal scores wins). ``done``: the trials of
    an earlier sweep whose ``spec`` this one extends (:func:`extends`), taken in order instead of rerun (a trial is
    deterministic)."""
    trials = []

    def trial(params):
        if len(trials) < len(done):
            earlier = done[len(trials)]
            assert all(earlier["params"][k] == v for k, v in params.items()), (earlier["params"], params)
            return earlier
        return run(params)

    for params in grid_points(spec["grid"]):
        trials.append(trial(params))
    for key, values in then_steps(spec):
        best = max(trials, key=score)["params"]
        for value in values:
            trials.append(trial({**best, **point([key], [value])}))
    return trials, max(trials, key=score)["params"]


def extends(spec, earlier):
    """Whether ``spec`` runs ``earlier``'s trials first: the same grid, and ``earlier``'s ``then`` steps first."""
    then, before = then_steps(spec), then_steps(earlier)
    return spec["grid"] == earlier["grid"] and then[:len(before)] == before
