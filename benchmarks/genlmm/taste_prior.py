"""Where GenLMM's plan head starts: its taste prior, chosen on the VALIDATION split of both built-in catalogues.

    python benchmarks/genlmm/taste_prior.py --out benchmarks/genlmm/results/taste/prior.json

An untrained plan head ranks exactly as CategoryTaste does with the same three settings and a history of GenLMM's
``history_len`` items (tests/test_genlmm_plan.py), so each grid point is validated as that ranker, in a second,
instead of building a model. The data is the main job's (properties/benchmark/default.yaml: emoji-seq, and emoji-pop
beside it as ``recbole-gen benchmark --dataset emoji-pop`` builds it). The winner is the point with the best mean
validation NDCG@10 over the two catalogues (the first of equal means), the model defaults
(properties/model/GenLMM.yaml: plan_prior_continuity, plan_prior_smoothing, plan_prior_decay).
"""
import argparse
import itertools
import json
import sys
from pathlib import Path

import yaml

import recbole_gen  # noqa: F401  (compatibility patches before RecBole)
from recbole_gen.comparison import load_preset
from recbole_gen.comparison.sweep import validate
from recbole_gen.utils import properties_dir

CATALOGUES = ["emoji-seq", "emoji-pop"]
GRID = {"taste_continuity": [0.3, 0.45, 0.6, 0.75], "taste_smoothing": [0.003, 0.01, 0.03, 0.1],
        "taste_decay": [0.6, 0.8, 1.0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/genlmm/results/taste/prior.json")
    args = parser.parse_args()
    preset = load_preset("default")
    genlmm = yaml.safe_load((properties_dir() / "model" / "GenLMM.yaml").read_text())
    config = {**preset["config"], **preset["rows"]["CategoryTaste"], "metrics": ["Hit", "NDCG"],
              "show_progress": False, "MAX_ITEM_LIST_LENGTH": genlmm["history_len"]}
    trials = []
    for values in itertools.product(*GRID.values()):
        point = dict(zip(GRID, values))
        scores = {name: validate("CategoryTaste", name, {**config, **point}, [])["valid"] for name in CATALOGUES}
        trials.append({"point": point, **{name: {k: round(scores[name][k], 4) for k in ("hit@10", "ndcg@10")}
                                          for name in CATALOGUES}})
        print(json.dumps(trials[-1]), flush=True)
    best = max(trials, key=lambda t: sum(t[name]["ndcg@10"] for name in CATALOGUES) / len(CATALOGUES))
    result = {"command": " ".join(["python", *sys.argv]), "history_len": genlmm["history_len"], "grid": GRID,
              "winner": best, "trials": trials}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(best))


if __name__ == "__main__":
    main()
