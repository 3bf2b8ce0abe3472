"""GenDiff designs on the VALIDATION split of the main job's dataset (the test split is left to the main job).

    python benchmarks/gendiff/sweep.py --minutes 4 --designs default medium-x0 --guidance 0 2 3 5 \\
        --out benchmarks/gendiff/results/sweep
    python benchmarks/gendiff/sweep.py --list

Each *design* is GenDiff's defaults (properties/model/GenDiff.yaml) plus its overrides, trained for ``--minutes``
with the main job's data and the full preset's settings (properties/benchmark/full.yaml: 1,000 users, seed 2026, 2 images per user,
MAX_ITEM_LIST_LENGTH 20), then validated at each guidance scale (sampling only, no retraining). One JSON per
design: steps, loss per epoch, and the validation metrics per guidance scale, with the load average.
``no-class-embedding`` designs build the tiny UNet without its mean-history class embedding (an ablation only).
"""
import argparse
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

MEDIUM = dict(unet_channels=[64, 128], history_width=128)
DESIGNS = {
    "default": {},
    "subgroup": dict(content_fields=["subgroup"]),
    "medium-x0": MEDIUM,
    "medium-x0-subgroup": dict(MEDIUM, content_fields=["subgroup"]),
    "medium-x0-history3": dict(MEDIUM, history_len=3),
    "medium-x0-no-class-embedding": dict(MEDIUM, no_class_embedding=True),
    "medium-epsilon-no-class-embedding": dict(MEDIUM, prediction_type="epsilon", no_class_embedding=True),
    "medium-epsilon": dict(MEDIUM, prediction_type="epsilon"),
}
METRICS = ("hit@10", "ndcg@10", "targetsim", "historysim", "novelty", "oracleutility")


@contextlib.contextmanager
def class_embedding(on):
    """Models built inside have the tiny UNet's class embedding (``on``, as GenDiff does) or not (the ablation)."""
    import recbole_gen.model.diffusion as diffusion

    original = diffusion.tiny_unet

    def without(settings, channels, size):
        unet = original(settings, channels, size)
        return type(unet).from_config({**unet.config, "class_embed_type": None, "projection_class_embeddings_input_dim": None})

    diffusion.tiny_unet = original if on else without
    try:
        yield
    finally:
        diffusion.tiny_unet = original


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--designs", nargs="*", default=["default"])
    parser.add_argument("--minutes", type=float, default=4)
    parser.add_argument("--guidance", type=float, nargs="*", default=[0.0, 3.0])
    parser.add_argument("--out", default="benchmarks/gendiff/results/sweep")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        print("\n".join(f"{k}: {v}" for k, v in DESIGNS.items()))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    import yaml
    from recbole.data import data_preparation
    from recbole_gen.utils import init_seed

    from recbole_gen.config import Config
    from recbole_gen.data import create_dataset
    from recbole_gen.quick_start import build_model, build_trainer
    from recbole_gen.utils import properties_dir

    preset = yaml.safe_load((properties_dir() / "benchmark" / "full.yaml").read_text())
    base = {**preset["config"], "show_progress": False, "eval_step": 0, "log_every_steps": 100,
            "log_dir": "/tmp/gendiff-sweep/log", "checkpoint_dir": "/tmp/gendiff-sweep/saved",
            "metrics": ["Hit", "NDCG", "TargetSim", "HistorySim", "Novelty", "OracleUtility"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = Config(model="GenDiff", dataset=preset["dataset"], config_dict=base)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config, images=True))
    for name in args.designs:
        overrides = dict(DESIGNS[name])
        with class_embedding(not overrides.pop("no_class_embedding", False)):
            cfg = Config(model="GenDiff", dataset=preset["dataset"],
                         config_dict={**base, **overrides, "max_train_minutes": args.minutes})
            init_seed(cfg["seed"], cfg["reproducibility"])
            model = build_model(cfg, train_data._dataset)
        trainer = build_trainer(cfg, model)
        started = time.time()
        trainer.fit(train_data, None, saved=False)
        result = {"design": name, "overrides": DESIGNS[name], "minutes": args.minutes, "steps": trainer.steps.step_count,
                  "train_seconds": round(time.time() - started, 1),
                  "epoch_losses": [round(v, 4) for v in trainer.train_loss_dict.values()], "valid": {}}
        settings = model.settings
        for g in args.guidance:
            model.settings = dataclasses.replace(settings, guidance_scale=g)
            metrics = trainer.evaluate(valid_data, load_best_model=False)
            result["valid"][str(g)] = {k: round(float(metrics[k]), 4) for k in METRICS} | {"load": os.getloadavg()[0]}
            print(name, g, result["valid"][str(g)], flush=True)
        (out / f"{name}-{args.minutes:g}min.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
