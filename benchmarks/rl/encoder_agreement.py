"""Which reward encoder agrees with what users see? Rank agreement between each candidate reward encoder's image
similarities and the evaluation encoder's, on the main job's catalogue.

    python benchmarks/rl/encoder_agreement.py [--pairs 200000] [--out benchmarks/rl/encoder_agreement.json]

The evaluation encoder (``eval_encoder`` of properties/benchmark/default.yaml) scores what a user is shown; an RL
reward computed with that same encoder would be tuned against the metric itself, so the reward encoder must be
another one (docs/rl.md). For each candidate: Spearman's rank correlation of the cosines of ``--pairs`` random
catalogue pairs under the candidate and under the evaluation encoder, and the share of items whose nearest other
item under the candidate is among their 10 nearest under the evaluation encoder. Items are the catalogue's images
as the evaluation sees them (``image_size``), encoded by each candidate at its own ``*_size``.
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import recbole_gen  # noqa: F401  (compatibility patches before RecBole)
from recbole_gen.comparison import load_preset
from recbole_gen.config import Config
from recbole_gen.data import create_dataset
from recbole_gen.retrieval.catalogue import ImageCatalogue

CANDIDATES = {  # reward encoder settings (rl_reward_encoder, rl_reward_encoder_size)
    "efficientnet-lite0 @ 64 px (the main job's reward encoder)": ("efficientnet-lite0", 64),
    "efficientnet-lite0 @ 224 px": ("efficientnet-lite0", 224),
    "efficientnet-lite0 @ 32 px": ("efficientnet-lite0", 32),
    "random conv (seeded, untrained; 32 px)": ("random", None),
}


def embeddings(config, store, prefix):
    catalogue = ImageCatalogue.from_config(config, store, prefix=prefix)
    vectors = torch.as_tensor(catalogue.embeddings)[catalogue.has_image]
    return torch.nn.functional.normalize(vectors.float(), dim=1)


def agreement(reference, candidate, pairs, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(reference), size=(2, pairs))
    keep = a != b
    a, b = torch.as_tensor(a[keep]), torch.as_tensor(b[keep])
    rho = spearmanr((reference[a] * reference[b]).sum(1).numpy(), (candidate[a] * candidate[b]).sum(1).numpy())[0]
    eye = torch.eye(len(reference), dtype=torch.bool)
    top10 = (reference @ reference.T).masked_fill(eye, -2).topk(10, dim=1).indices
    nearest = (candidate @ candidate.T).masked_fill(eye, -2).argmax(1)
    return {"spearman": round(float(rho), 4), "nn_in_eval_top10": round(float((top10 == nearest[:, None]).any(1).float().mean()), 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "encoder_agreement.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    preset = load_preset("default")
    config = Config(model="SASRec", dataset=preset["dataset"], config_dict={**preset["config"], **{
        f"rl_reward_encoder{suffix}": None for suffix in ("_path", "_model", "_batch_size", "_device", "_dtype")}})
    store = create_dataset(config, images=True).image_store
    reference = embeddings(config, store, "eval_encoder")
    rows = []
    for name, (encoder, size) in CANDIDATES.items():
        started = time.perf_counter()
        config["rl_reward_encoder"], config["rl_reward_encoder_size"] = encoder, size
        rows.append({"candidate": name, "encoder": encoder, "size": size,
                     **agreement(reference, embeddings(config, store, "rl_reward_encoder"), args.pairs),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/rl/encoder_agreement.py" + (f" --pairs {args.pairs}" if args.pairs != 200_000 else ""),
        "evaluation_encoder": config["eval_encoder"], "items": len(reference), "pairs": args.pairs,
        "load": round(os.getloadavg()[0], 2), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
