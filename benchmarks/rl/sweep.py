"""The second stage's sweep: group size, KL coefficient, learning rate and inner epochs of GRPO on validation.

A trial is the GenLMM-RL row of the full preset (properties/benchmark/full.yaml: dataset, split, seed, SFT
start, reward recommender, rewards, steps) with one point of grid.yaml, started from a finished main job's SFT and
SASRec checkpoints and validated, never tested. The SFT checkpoint itself is validated first: the winner is the trial
with the best validation OracleUtility among those that keep the issue's other targets against SFT on validation
(Hit@10 no more than 10% below, TargetSim not below); no reward sees OracleUtility or the evaluation encoder.

    python benchmarks/rl/sweep.py --results results/<main job>      # -> sweep.json, sweep.md
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
from recbole_gen.comparison.runner import REFERENCE
from recbole_gen.comparison.sweep import run_sweep, swept_keys, validate
from recbole_gen.files import atomic_write_bytes

HERE = Path(__file__).resolve().parent
ROW = "GenLMM-RL"
SHOWN = ("oracleutility", "hit@10", "targetsim", "novelty", "diversity")


def shown(trial):
    return ", ".join(f"{key} {trial['valid'][key]:.4f}" for key in SHOWN)


def keeps_targets(trial, sft):
    """The issue's constraints against the SFT start, on validation."""
    valid, start = trial["valid"], sft["valid"]
    return valid["hit@10"] >= 0.9 * start["hit@10"] and valid["targetsim"] >= start["targetsim"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a finished main job's folder (rows/GenLMM-SFT.json, rows/SASRec.json)")
    parser.add_argument("--out", default=str(HERE), help="folder for sweep.json and sweep.md")
    args = parser.parse_args(argv)
    spec = yaml.safe_load((HERE / "grid.yaml").read_text())[ROW]
    preset = load_preset("full")

    def checkpoint(value):
        """'@Row' -> that row's checkpoint, in the results folder's saved/ (the runner's checkpoint_dir)."""
        match = REFERENCE.match(value) if isinstance(value, str) else None
        if not match:
            return value
        name = Path(json.loads((Path(args.results) / "rows" / f"{match.group(1)}.json").read_text())["model_file"]).name
        return str(Path(args.results).resolve() / "saved" / name)

    row = {k: checkpoint(v) for k, v in preset["rows"][ROW].items()}
    model, swept = row.pop("model"), swept_keys(spec)
    scratch = Path("results") / "rl-sweep"
    shared = {**preset["config"], "show_progress": False, "log_dir": str(scratch / "logs"),
              "checkpoint_dir": str(scratch / "saved")}
    started = time.perf_counter()
    sft = validate(model, preset["dataset"], {**shared, "init_from": row["init_from"], "epochs": 0}, [])
    print("SFT start: " + shown(sft), flush=True)

    def run(params):
        trial = validate(model, preset["dataset"], {**shared, **row, **params}, swept)
        print(f"{trial['params']}: {shown(trial)} ({trial['seconds']:.0f}s)", flush=True)
        return trial

    score = lambda trial: (keeps_targets(trial, sft), trial["valid"]["oracleutility"])  # noqa: E731
    trials, winner = run_sweep(spec, run, score)
    result = {"row": ROW, "source": spec["source"], "grid": spec["grid"], "then": spec.get("then", {}),
              "fixed": preset["rows"][ROW], "sft": sft, "trials": trials, "winner": winner,
              "command": "python " + " ".join([str(Path(sys.argv[0])), *(argv or sys.argv[1:])]),
              "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "minutes": (time.perf_counter() - started) / 60}
    out = Path(args.out)
    atomic_write_bytes(out / "sweep.json", json.dumps(result, indent=1).encode())
    write_table(out / "sweep.md", result)


def write_table(path, result):
    keys = list(result["winner"])
    lines = ["# Second-stage sweep: validation metrics per point (winner in bold)", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}; total {result['minutes']:.0f} min  ",
             f"Starting point: {result['source']}  ",
             "Rule: the best OracleUtility among the points whose Hit@10 is at least 90% of SFT's and whose TargetSim is "
             "not below SFT's (all on validation).", "",
             "| " + " | ".join([*keys, *SHOWN, "keeps targets", "time (s)", "load"]) + " |",
             "| " + " | ".join("---" for _ in range(len(keys) + len(SHOWN) + 3)) + " |",
             "| " + " | ".join(["SFT start", *("" for _ in keys[1:]), *(f"{result['sft']['valid'][k]:.4f}" for k in SHOWN),
                               "–", "–", "–"]) + " |"]
    for trial in result["trials"]:
        cells = [*(str(trial["params"][k]) for k in keys), *(f"{trial['valid'][k]:.4f}" for k in SHOWN),
                 "yes" if keeps_targets(trial, result["sft"]) else "no", f"{trial['seconds']:.0f}", str(trial["load"])]
        if trial["params"] == result["winner"]:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
