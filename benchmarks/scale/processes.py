"""GenLMM SFT on one process versus two (``run_recbole --nproc=2``, gloo) for the same wall-clock budget, on this
machine's 2 cores.

    python benchmarks/scale/processes.py --out benchmarks/scale/processes.json [--minutes 1]

Workload: the default tiny GenLMM (properties/model/GenLMM.yaml) on a 300-user emoji-seq (dataset/scale/, built on
first use; nothing is downloaded), SFT for ``--minutes`` of wall clock (``max_train_minutes``), then RecBole's
validation and test. The image tokenizer is trained once beforehand (a shorter ``vq_train_steps``: its quality does
not matter here) so neither timed run pays for it; each setting then runs in a fresh process (nothing warm in
memory: the catalogue, its FD projection). Reported per setting: training throughput (target image tokens per
second in the last, budget-cut epoch, summed over the ranks) and that epoch's rows, the run's wall time and its
test Hit@10. The machine's load is recorded beside them: run nothing else meanwhile.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import recbole_gen  # noqa: F401
from recbole_gen.quick_start import run


def config(out, minutes, **overrides):
    return {"data_path": str(out / "dataset"), "dataset": "emoji-seq", "emoji_seq_users": 300, "seed": 2026,
            "checkpoint_dir": str(out / "saved"), "log_dir": str(out / "log"), "cache_dir": str(out / "cache"),
            "show_progress": False, "vq_train_steps": 100, "pretrain_steps": 0, "epochs": 1000,
            "max_train_minutes": minutes, "eval_step": 1000, "metrics": ["Hit", "NDCG"], "topk": [10],
            "valid_metric": "NDCG@10", **overrides}


def setting(work, minutes, nproc):
    """One timed run (in a fresh process): its row of the report."""
    load = os.getloadavg()
    started = time.perf_counter()
    result = run("GenLMM", "emoji-seq", config_dict=config(work, minutes), nproc=nproc, port=str(29500 + nproc))
    wall = time.perf_counter() - started
    throughput = result["train_throughput"]
    return {"nproc": nproc, "threads_per_process": max(1, os.cpu_count() // nproc),
            "last_epoch_target_tokens_per_s": round(throughput["per_s"], 1), "last_epoch_rows": throughput["rows"],
            "train_seconds": round(result["train_seconds"], 1), "wall_seconds": round(wall, 1),
            "test_hit@10": float(result["test_result"]["hit@10"]), "load_before": [round(x, 2) for x in load]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the results json")
    parser.add_argument("--minutes", type=float, default=1.0, help="SFT wall-clock budget per run")
    parser.add_argument("--work", type=Path, default=Path("dataset/scale"), help="data, caches and checkpoints")
    parser.add_argument("--setting", type=int, help=argparse.SUPPRESS)  # internal: run one setting, print its row
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    if args.setting:
        print(json.dumps(setting(args.work, args.minutes, args.setting)))
        return
    run("GenLMM", "emoji-seq", config_dict=config(args.work, 0, epochs=0))  # builds the data and the tokenizer
    rows = []
    for nproc in (1, 2):
        out = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--minutes", str(args.minutes),
                              "--setting", str(nproc)], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    report = {"command": f"python benchmarks/scale/processes.py --out {args.out} --minutes {args.minutes}",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
              "minutes": args.minutes, "rows": rows}
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
