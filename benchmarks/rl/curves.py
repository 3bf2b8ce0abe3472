"""Training curves of the second stage's rows (GenLMM-RL, -RAFT, -DPO) of a finished benchmark run.

    python benchmarks/rl/curves.py --results benchmarks/rl/results [--out benchmarks/rl/curves.png]

Reads each row's checkpoint (``rows/<row>.json`` names it; the checkpoint keeps every step's logged scalars under
``rl.history``) and draws, per step: the total reward of the rollouts (GRPO, RAFT: the policy's own samples; DPO:
the frozen SFT model's), its recommender component, and the policy entropy per image token (RL, RAFT). A moving
average over ``--window`` steps smooths the batch noise (8 rows x 4 samples per step). Rows run with
``rl_eval_every`` also kept their validation metrics every N steps (``rl.valid_history``): those are drawn as
held-out curves, unsmoothed, under the evaluation encoder no reward uses.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from recbole_gen.checkpoint import load_checkpoint

ROWS = ("GenLMM-RL", "GenLMM-RAFT", "GenLMM-DPO")
PANELS = (("reward", "total reward (rollouts)"), ("reward_recommender", "recommender reward"),
          ("reward_target", "target reward (cosine)"), ("kl", "KL to SFT (GRPO)"), ("entropy", "entropy / token"))
HELD_OUT = (("oracleutility", "validation OracleUtility"), ("targetsim", "validation TargetSim"),
            ("hit@10", "validation Hit@10"))


def histories(results):
    """``{row: (per-step training scalars, validation results every rl_eval_every steps)}``."""
    found = {}
    for row in ROWS:
        path = Path(results) / "rows" / f"{row}.json"
        if path.is_file():
            rl = load_checkpoint(json.loads(path.read_text())["model_file"])["rl"]
            found[row] = rl["history"], rl.get("valid_history", [])
    return found


def smooth(values, window):
    values = np.asarray(values, dtype=float)
    if len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a benchmark results folder holding rows/GenLMM-*.json")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "curves.png"))
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = histories(args.results)
    if not found:
        raise SystemExit(f"no {', '.join(ROWS)} rows in {args.results}/rows: run the benchmark first (benchmarks/rl/README.md)")
    held_out = [panel for panel in HELD_OUT if any(len(valid) > 1 and panel[0] in valid[0] for _, valid in found.values())]
    # training curves on the first row, held-out ones (if any) on the second
    columns = len(PANELS)
    figure, grid = plt.subplots(2 if held_out else 1, columns, figsize=(3.2 * columns, 6 if held_out else 3), squeeze=False)
    axes = list(grid[0]) + list(grid[1][:len(held_out)] if held_out else [])
    for ax in (grid[1][len(held_out):] if held_out else []):
        ax.set_visible(False)
    for ax, (key, title) in zip(axes, PANELS):
        for row, (history, _) in found.items():
            if key in history[0]:
                values = smooth([step[key] for step in history], args.window)
                ax.plot(np.arange(len(values)) + min(args.window, len(history)), values, label=row)
    for ax, (key, _) in zip(axes[len(PANELS):], held_out):
        for row, (_, valid) in found.items():
            if len(valid) > 1:
                ax.plot([v["step"] for v in valid], [v[key] for v in valid], marker="o", markersize=3, label=row)
    for ax, (_, title) in zip(axes, PANELS + tuple(held_out)):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"second stage from the same SFT checkpoint ({args.window}-step moving average)", fontsize=9)
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
