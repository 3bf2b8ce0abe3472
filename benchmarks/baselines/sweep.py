"""The baselines' hyper-parameter sweep: one small grid per ranker, on the main job's validation split.

A trial is a row of the default preset (properties/benchmark/default.yaml: its dataset, split, seed and the rankers'
training rule, with early stopping on validation NDCG@10) with one grid point of grid.yaml, trained as
``run_recbole`` trains it but never tested: the winner is the best validation NDCG@10, and only the main job reports
test results, for the winners, which the default preset uses (tests/test_baselines_sweep.py checks that).

    python benchmarks/baselines/sweep.py                    # every model of grid.yaml: sweep.json, sweep.md
    python benchmarks/baselines/sweep.py --models SASRec    # some rows, merged into sweep.json
    python benchmarks/baselines/sweep.py --models BERT4Rec --reuse   # after appending `then` steps to a row
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import yaml

import recbole_gen  # noqa: F401  (compatibility patches before RecBole)
from recbole_gen.comparison import load_preset
from recbole_gen.comparison.sweep import extends, run_sweep, swept_keys, validate
from recbole_gen.files import atomic_write_bytes

HERE = Path(__file__).resolve().parent
VALIDATION = {"metrics": ["Hit", "NDCG"], "show_progress": False}  # ranking only: selection never needs images


def sweep(row, spec, preset, out, earlier=None):
    """All grid points of one row; returns its trials and the winner (best validation NDCG@10, first on ties).
    ``earlier``: the row's entry of a previous sweep.json whose trials this sweep starts with (``--reuse``)."""
    swept = swept_keys(spec)
    fixed = {k: v for k, v in (preset["rows"][row] or {}).items() if k not in swept}
    model = fixed.pop("model", row)
    shared = {**preset["config"], **VALIDATION, "log_dir": str(out / "logs"), "checkpoint_dir": str(out / "saved")}

    def run(params):
        result = validate(model, preset["dataset"], {**shared, **fixed, **params}, swept)
        print(f"{row} {result['params']}: valid ndcg@10 {result['valid']['ndcg@10']:.4f} hit@10 {result['valid']['hit@10']:.4f}"
              f" ({result['epochs']} epochs, {result['seconds']:.0f}s)", flush=True)
        return result

    done = earlier["trials"] if earlier and earlier["fixed"] == fixed and extends(spec, earlier) else ()
    trials, winner = run_sweep(spec, run, score=lambda trial: trial["valid"]["ndcg@10"], done=done)
    return {"model": model, "source": spec["source"], "grid": spec["grid"], "then": spec.get("then", {}),
            "fixed": fixed, "trials": trials, "winner": winner}


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
    parser.add_argument("--reuse", action="store_true", help="keep the trials of sweep.json that a row's extended "
                        "grid.yaml entry runs first (same grid and settings, `then` steps appended); the code must "
                        "be unchanged since, as a trial is only deterministic under the same code")
    args = parser.parse_args(argv)
    grids = yaml.safe_load((HERE / "grid.yaml").read_text())
    rows = args.models.split(",") if args.models else list(grids)
    out = Path(args.out)
    preset = load_preset("default")
    path = out / "sweep.json"
    results = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    started = time.perf_counter()
    for row in rows:
        earlier = results["rows"].get(row) if args.reuse else None
        results["rows"][row] = sweep(row, grids[row], preset, Path("results") / "baselines-sweep", earlier)
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
