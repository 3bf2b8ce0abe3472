"""History designs compared on a small, fast setup (the tests' catalogue): 62 emoji from 4 subgroups at
16 px (4x4 = 16 tokens per image), users who stay in one subgroup, next item = a random item of it.

For each design and step budget: held-out per-image CE (sum over the 16 tokens) with the true history vs
histories shuffled across users (the information the history carries about the target is at most
ln 4 = 1.39 nats per image), and the share of generated images whose nearest catalogue item is in the
target's subgroup (chance 0.25).

Run:  python benchmarks/genlmm/small_designs.py --out benchmarks/genlmm/results
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from test_genlmm_support import SUBGROUPS, TINY, catalogue_rows, group_sequences, train_core  # noqa: E402
from emoji_fixture import render  # noqa: E402

from recbole_gen.model.core import GenLMMCore  # noqa: E402
from recbole_gen.model.vq import centred_unit  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--designs", nargs="+", default=["semantic", "vq"])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="/tmp/genlmm_exp/testcache")
    parser.add_argument("--out", default="benchmarks/genlmm/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = catalogue_rows()
    pixels = torch.cat([torch.zeros(1, 3, 16, 16), torch.from_numpy(render([r[0] for r in rows], 16))])
    groups = torch.tensor([-1] + [SUBGROUPS.index(r[3]) for r in rows])
    seqs = group_sequences(groups, 400, 4, 0)
    hist, target = [s[:3] for s in seqs], [s[3] for s in seqs]
    train_h, train_t, test_h, test_t = hist[:320], target[:320], hist[320:], torch.tensor(target[320:])
    shuffled = [test_h[i] for i in torch.randperm(len(test_h), generator=torch.Generator().manual_seed(0)).tolist()]
    feats = centred_unit(pixels[1:], pixels[1:].mean(0))
    results = {"load_before": os.getloadavg(), "runs": []}
    for design in args.designs:
        for steps in args.steps:
            torch.manual_seed(0)
            core = GenLMMCore(dict(TINY, history_mode=design, cond_dropout=0.1), pixels, [""] * len(pixels), cache_dir=args.cache)
            t0 = time.time()
            train_core(core, train_h, train_t, steps=steps)
            seconds = time.time() - t0
            with torch.no_grad():
                per_image = core.num_image_tokens
                true = core.loss(test_h, test_t, reduction="none").mean().item() * per_image
                other = core.loss(shuffled, test_t, reduction="none").mean().item() * per_image
                tokens = core.generate_tokens(test_h, num_samples=2, temperature=1.0, seed=0)
                images = core.decode(tokens).flatten(0, 1)
            nearest = (centred_unit(images, pixels[1:].mean(0)) @ feats.t()).argmax(1) + 1
            match = (groups[nearest].view(len(test_h), 2) == groups[test_t][:, None]).float().mean().item()
            run = {"design": design, "steps": steps, "train_seconds": round(seconds, 1),
                   "heldout_ce_per_image_true": round(true, 3), "heldout_ce_per_image_shuffled": round(other, 3),
                   "gap": round(other - true, 3), "subgroup_match": round(match, 3), "chance": 0.25}
            print(run, flush=True)
            results["runs"].append(run)
    results["load_after"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "small_designs.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
