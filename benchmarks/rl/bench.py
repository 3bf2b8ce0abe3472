"""SFT vs SFT+RL for GenLMM on emoji-seq (tiny default model), written to benchmarks/rl/.

    BENCH_THREADS=2 .venv/bin/python benchmarks/rl/bench.py [--users 1000] [--sft-minutes 4] [--rl-steps 60] \
        [--cache-dir dataset/benchmark/emoji-seq/.cache]   # reuse the main job's VQ and pre-training

1. SFT: ``run_recbole --model=GenLMM --dataset=emoji-seq`` (tiny default, ``max_train_minutes``);
2. RL:  the same with ``--stage=rl --init_from=<SFT checkpoint>`` (recommender reward from a SASRec
   trained on demand on the same split, target + diversity rewards, reward encoder ``pixel``);
3. both tested on the same test split; image metrics from ``efficientnet-lite0``, an encoder the
   reward did not use, and OracleUtility (the simulator, never a reward here).

Writes results.json, RESULTS.md (table), curves.png (reward and KL per step). Records ``uptime``.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))

import recbole_gen  # noqa: E402,F401
from recbole_gen.checkpoint import load_checkpoint  # noqa: E402
from recbole_gen.quick_start import run_recbole  # noqa: E402

METRICS = ["Hit", "NDCG", "MRR", "TargetSim", "TargetSimBest", "HistorySim", "Diversity", "ImageCoverage", "Novelty",
           "OracleUtility"]


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--sft-minutes", type=float, default=4)
    p.add_argument("--rl-steps", type=int, default=60)
    p.add_argument("--cache-dir", default=None, help="GenLMM's VQ / pre-training cache (default: <data>/.cache)")
    p.add_argument("--work", default="results/rl_bench")
    p.add_argument("--out", default="benchmarks/rl")
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    base = {
        "data_path": str(work / "data"), "emoji_seq_users": args.users, "cache_dir": args.cache_dir, "checkpoint_dir": str(work / "saved"),
        "log_dir": str(work / "log"), "show_progress": False, "seed": 2026, "metrics": METRICS, "topk": [10],
        "valid_metric": "NDCG@10", "eval_encoder": "efficientnet-lite0", "eval_encoder_size": 96,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
    }
    record = {"command": " ".join(["python", *sys.argv]), "uptime_before": uptime(), "args": vars(args)}

    started = time.time()
    sft = run_recbole(model="GenLMM", dataset="emoji-seq",
                      config_dict={**base, "max_train_minutes": args.sft_minutes, "eval_step": 100})
    record["sft"] = {"test": {k: float(v) for k, v in sft["test_result"].items()}, "model_file": sft["model_file"],
                     "train_seconds": sft["train_seconds"], "uptime": uptime()}
    rl_config = {**base, "stage": "rl", "init_from": sft["model_file"], "rl_steps": args.rl_steps, "rl_log_every": 10,
                 "rl_save_every": 20}
    rl = run_recbole(model="GenLMM", dataset="emoji-seq", config_dict=rl_config)
    history = load_checkpoint(rl["model_file"])["rl"]["history"]
    record["rl"] = {"test": {k: float(v) for k, v in rl["test_result"].items()}, "model_file": rl["model_file"],
                    "train_seconds": rl["train_seconds"], "uptime": uptime(),
                    "step_seconds_mean": sum(h["step_seconds"] for h in history) / len(history),
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "settings": {k: v for k, v in rl_config.items() if k.startswith("rl_")}}
    record["history"] = history
    record["total_seconds"] = time.time() - started
    (out / "results.json").write_text(json.dumps(record, indent=1, default=str))
    plot(history, out / "curves.png")
    table(record, out / "RESULTS.md")
    print(json.dumps({k: record[k]["test"] for k in ("sft", "rl")}, indent=1))


def plot(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in [k for k in history[0] if k.startswith("reward")]:
        if key != "reward_std":
            axes[0].plot(steps, [h[key] for h in history], label=key)
    axes[0].set_xlabel("RL step")
    axes[0].set_title("rewards (mean over the batch)")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [h["kl"] for h in history], label="KL to SFT")
    axes[1].plot(steps, [h["entropy"] / 10 for h in history], label="entropy / 10")
    axes[1].set_xlabel("RL step")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def table(record, path):
    sft, rl = record["sft"]["test"], record["rl"]["test"]
    rows = "\n".join(f"| {k} | {sft[k]:.4f} | {rl[k]:.4f} | {rl[k] - sft[k]:+.4f} |" for k in sft)
    path.write_text(f"""# SFT vs SFT+RL (GenLMM tiny default, emoji-seq {record['args']['users']} users)

Rerun: `{record['command']}`

Test split (leave-one-out). Image metrics by `efficientnet-lite0` at 96 px, an encoder the reward
did not use (reward encoder: `pixel`); OracleUtility is the simulator's (never a reward here).

| metric | SFT | SFT+RL | change |
| --- | --- | --- | --- |
{rows}

RL: {record['args']['rl_steps']} steps, settings {json.dumps(record['rl']['settings'])};
mean step {record['rl']['step_seconds_mean']:.2f} s, RL train {record['rl']['train_seconds']:.0f} s,
peak RSS of the whole run {record['rl']['peak_rss_mb']:.0f} MB. SFT train {record['sft']['train_seconds']:.0f} s.
Load: before `{record['uptime_before']}`; after SFT `{record['sft']['uptime']}`; after RL `{record['rl']['uptime']}`.

![reward and KL](curves.png)
""")


if __name__ == "__main__":
    main()
