"""Time GenDiff's first 20 training steps (batch 64, after one warm-up step) and one sampling batch (256 users x 2
images, 25 DDIM steps, no guidance) for candidate tiny-UNet sizes on the main job's dataset, 2 threads:

    python benchmarks/gendiff/timing.py --out benchmarks/gendiff/results/timing.json [SIZE ...]

The sizes the default was chosen from; steps_in_4min is what the main job's 4-minute budget allows.
"""
import argparse
import json
import os
import time

import torch

SIZES = {
    "c32-64/w64": dict(unet_channels=[32, 64], history_width=64),
    "c64-128/w128": dict(unet_channels=[64, 128], history_width=128),
    "c64-128/w128/l2": dict(unet_channels=[64, 128], history_width=128, unet_layers_per_block=2),
    "c128-256/w256": dict(unet_channels=[128, 256], history_width=256),
    "c64-128-256/w128": dict(unet_channels=[64, 128, 256], history_width=128),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", default=list(SIZES))
    parser.add_argument("--out", default="benchmarks/gendiff/results/timing.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    import yaml
    from recbole.data import data_preparation
    from recbole_gen.utils import init_seed

    from recbole_gen.config import Config
    from recbole_gen.data import create_dataset
    from recbole_gen.quick_start import build_model
    from recbole_gen.utils import properties_dir

    preset = yaml.safe_load((properties_dir() / "benchmark" / "full.yaml").read_text())
    base = {**preset["config"], "show_progress": False}
    config = Config(model="GenDiff", dataset=preset["dataset"], config_dict=base)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config, images=True))
    batches = [batch for _, batch in zip(range(21), train_data)]
    results = {"train_rows": len(train_data.dataset), "batches_per_epoch": len(train_data), "sizes": {}}
    for name in args.sizes:
        cfg = Config(model="GenDiff", dataset=preset["dataset"], config_dict={**base, **SIZES[name], "guidance_scale": 0.0})
        init_seed(cfg["seed"], cfg["reproducibility"])
        model = build_model(cfg, train_data._dataset)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        seconds = []
        for batch in batches:
            started = time.perf_counter()
            loss = model.calculate_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - started)
        step = sum(seconds[1:]) / (len(seconds) - 1)
        model.eval()
        started = time.perf_counter()
        model.generate_images(next(iter(valid_data))[0][:256], num_samples=2)
        results["sizes"][name] = {
            "overrides": SIZES[name], "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "step_ms": round(step * 1000, 1), "steps_in_4min": int(240 / step),
            "sample_256x2_25steps_s": round(time.perf_counter() - started, 2), "load": os.getloadavg()[0]}
        print(name, results["sizes"][name], flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
