"""The baselines' hyper-parameter sweep: one small grid per ranker, on the main job's validation split.

A trial is a row of the default preset (properties/benchmark/default.yaml: its dataset, split, seed and the rankers'
training rule, with early stopping on validation NDCG@10) with one grid point of grid.yaml, trained as
``run_recbole`` trains it but never tested: the winner is the best validation NDCG@10, and only the main job reports
test results, for the winners, which the default preset uses (tests/test_baselines_sweep.py checks that).

    python benchmarks/baselines/sweep.py                    # every model of grid.yaml: sweep.json, sweep.md
    python benchmarks/baselines/sweep.py --models SASRec    # some rows, merged into sweep.json
"""
import argparse
import itertools
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import yaml

import recbole_gen  # noqa: F401  (compatibility patches before RecBole)
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_gen.comparison import load_preset
from recbole_gen.config import Config
from recbole_gen.data import create_dataset
from recbole_gen.files import atomic_write_bytes
from recbole_gen.quick_start import build_model, build_trainer, needs_images
from recbole_gen.utils import init_logger

HERE = Path(__file__).resolve().parent
VALIDATION = {"metrics": ["Hit", "NDCG"], "show_progress": False}  # ranking only: selection never needs images


def point(keys, values):
    """A grid point as config keys: a key naming several parameters ("a b") sets each to the value."""
    return {name: value for key, value in zip(keys, values) for name in key.split()}


def grid_points(grid):
    """Every combination of ``{key: [values]}``, in the file's order."""
    return [point(list(grid), values) for values in itertools.product(*grid.values())]


def trial(model, dataset, config_dict, swept):
    """Fit one grid point as run_recbole fits it (same seeds, same dataset, same trainer); validation only. Returns
    the validation result and the values the run used for every ``swept`` key (the model's defaults included)."""
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
    return {"params": {key: config[key] for key in swept}, "valid": {k: float(v) for k, v in valid.items()},
            "epochs": len(trainer.train_loss_dict), "seconds": round(time.perf_counter() - started, 1),
            "load": round(os.getloadavg()[0], 2)}  # 1-minute load average at the end: timings are comparable near 1-2


def sweep(row, spec, preset, out):
    """All grid points of one row; returns its trials and the winner (best validation NDCG@10, first on ties)."""
    swept = [name for key in [*spec["grid"], *spec.get("then", {})] for name in key.split()]
    fixed = {k: v for k, v in (preset["rows"][row] or {}).items() if k not in swept}
    model = fixed.pop("model", row)
    shared = {**preset["config"], **VALIDATION, "log_dir": str(out / "logs"), "checkpoint_dir": str(out / "saved")}
    trials = []

    def run(params):
        result = trial(model, preset["dataset"], {**shared, **fixed, **params}, swept)
        trials.append(result)
        print(f"{row} {result['params']}: valid ndcg@10 {result['valid']['ndcg@10']:.4f} hit@10 {result['valid']['hit@10']:.4f}"
              f" ({result['epochs']} epochs, {result['seconds']:.0f}s)", flush=True)

    for params in grid_points(spec["grid"]):
        run(params)
    for key, values in spec.get("then", {}).items():
        best = max(trials, key=lambda t: t["valid"]["ndcg@10"])["params"]
        for value in values:
            run({**best, **point([key], [value])})
    winner = max(trials, key=lambda t: t["valid"]["ndcg@10"])
    return {"model": model, "source": spec["source"], "grid": spec["grid"], "then": spec.get("then", {}),
            "fixed": fixed, "trials": trials, "winner": winner["params"]}


def write_table(path, results):
    lines = ["# Baseline sweep: validation NDCG@10 / Hit@10 per grid point (winner in bold)", "",
             f"Machine: {results['machine']}; total {results['minutes']:.0f} min",
             ""]
    for row, entry in results["rows"].items():
        keys = list(entry["winner"])
        lines += [f"## {row}", "", f"Command: `{entry['command']}`  ", f"Starting point: {entry['source']}", "",
                  "| " + " | ".join([*keys, "NDCG@10", "Hit@10", "epochs", "time (s)", "load"]) + " |",
                  "| " + " | ".join("---" for _ in range(len(keys) + 5)) + " |"]
        for t in entry["trials"]:
            cells = [*(str(t["params"][k]) for k in keys), f"{t['valid']['ndcg@10']:.4f}", f"{t['valid']['hit@10']:.4f}",
                     str(t["epochs"]), f"{t['seconds']:.0f}", str(t.get("load", "–"))]
            if t["params"] == entry["winner"]:
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated rows of grid.yaml (default: all)")
    parser.add_argument("--out", default=str(HERE), help="folder for sweep.json and sweep.md")
    args = parser.parse_args(argv)
    grids = yaml.safe_load((HERE / "grid.yaml").read_text())
    rows = args.models.split(",") if args.models else list(grids)
    out = Path(args.out)
    preset = load_preset("default")
    path = out / "sweep.json"
    results = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    started = time.perf_counter()
    for row in rows:
        results["rows"][row] = sweep(row, grids[row], preset, Path("results") / "baselines-sweep")
    command = "python " + " ".join([str(Path(sys.argv[0])), *(argv or sys.argv[1:])])
    for row in rows:
        results["rows"][row]["command"] = command
    results.update(
                   machine=f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                   minutes=results.get("minutes", 0) * bool(args.models) + (time.perf_counter() - started) / 60)
    results["rows"] = {row: results["rows"][row] for row in grids if row in results["rows"]}
    atomic_write_bytes(path, json.dumps(results, indent=1).encode())
    write_table(out / "sweep.md", results)


if __name__ == "__main__":
    main()
