"""How far any ranker could go on a built-in simulated catalogue: the simulator's own ranking of the next item.

    python benchmarks/baselines/bayes_bound.py --out benchmarks/baselines/bayes_bound.json \\
        dataset/benchmark/emoji-seq dataset/benchmark/emoji-pop

Each folder is a built emoji-seq / emoji-pop (``make run`` builds the first, ``recbole-gen benchmark --dataset
emoji-pop`` the second). For every user, at the validation and test positions of the main job's leave-one-out split
(the last two items; the training split is everything before them), each unconsumed item is scored by the
simulator's probability of drawing it next: the probability of its subgroup at that position
(:meth:`~recbole_gen.data.emoji_seq.EmojiSeqTruth.next_subgroup_distribution`: the user's drifting taste and the
continuity with the last item) times its share of its subgroup's unconsumed popularity. ``latent popularity`` uses
the simulator's item popularity, which no model sees; ``training counts`` replaces it by each item's interactions in
the training split plus one, the popularity a ranker can estimate, keeping the simulator's taste. ``history taste``
also replaces the taste by what the user's history shows (recency-weighted subgroup counts, smoothed, mixed with the
last item's subgroup), its three settings chosen on validation from a small grid: the same form, deployable. Hit@10
and NDCG@10 over every user, as the main job reports them (one target per user, consumed items never ranked).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from recbole_gen.data.emoji_seq import EmojiSeqTruth


#: history taste's grid: (continuity with the last item, smoothing, decay per step back)
GRID = [(rho, alpha, decay) for rho in (0.3, 0.45, 0.6) for alpha in (0.01, 0.1) for decay in (1.0, 0.8)]


def scores(truth, q, consumed, popularity):
    """Each item's probability of being next: its subgroup's ``q`` times its share of the subgroup's unconsumed
    ``popularity``."""
    weight = popularity.copy()
    weight[consumed] = 0
    share = np.bincount(truth.item_subgroups, weights=weight, minlength=len(truth.subgroups))
    score = q[truth.item_subgroups] * weight / np.maximum(share[truth.item_subgroups], 1e-300)
    score[consumed] = -np.inf
    return score


def history_taste(truth, consumed, rho, alpha, decay):
    """The next subgroup's distribution as a history shows it."""
    seen = np.bincount(truth.item_subgroups[consumed[::-1]], weights=decay ** np.arange(len(consumed)),
                       minlength=len(truth.subgroups))
    q = (1 - rho) * (seen + alpha) / (seen.sum() + alpha * len(seen))
    q[truth.item_subgroups[consumed[-1]]] += rho
    return q


def evaluate(truth, sequences, back, taste, popularity, k):
    hits, gains = [], []
    for user, seq in zip(truth.users, sequences):
        position = len(seq) - back
        top = np.argsort(-scores(truth, taste(user, position, seq[:position]), seq[:position], popularity),
                         kind="stable")[:k]
        rank = np.flatnonzero(top == seq[position])
        hits.append(len(rank) > 0)
        gains.append(1 / np.log2(rank[0] + 2) if len(rank) else 0.0)
    return {f"hit@{k}": round(float(np.mean(hits)), 4), f"ndcg@{k}": round(float(np.mean(gains)), 4), "users": len(hits)}


def bound(folder, k=10):
    truth = EmojiSeqTruth.load(folder)
    with np.load(Path(folder) / f"{Path(folder).name}.truth.npz") as arrays:
        latent = arrays["item_popularity"].astype(np.float64)
    sequences = [truth.seq_items[truth.offsets[u]:truth.offsets[u + 1]] for u in range(len(truth.users))]
    counts = np.bincount(np.concatenate([seq[:-2] for seq in sequences]), minlength=len(truth.items)) + 1.0
    def simulator(user, position, consumed):
        return truth.next_subgroup_distribution(user, position)

    out = {}
    for split, back in (("valid", 2), ("test", 1)):
        for name, popularity in (("latent popularity", latent), ("training counts", counts)):
            out[f"{split}, {name}"] = evaluate(truth, sequences, back, simulator, popularity, k)
    trials = {setting: evaluate(truth, sequences, 2, lambda u, p, c, s=setting: history_taste(truth, c, *s), counts, k)
              for setting in GRID}
    chosen = max(GRID, key=lambda setting: trials[setting][f"ndcg@{k}"])
    out["valid, history taste"] = {**trials[chosen], "rho, alpha, decay": list(chosen)}
    out["test, history taste"] = evaluate(truth, sequences, 1, lambda u, p, c: history_taste(truth, c, *chosen), counts, k)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="built emoji-seq / emoji-pop dataset folders")
    parser.add_argument("--out", default="benchmarks/baselines/bayes_bound.json")
    args = parser.parse_args()
    result = {"command": " ".join(["python", *sys.argv]), **{Path(f).name: bound(f) for f in args.folders}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
