"""results.md (for people), results.csv and results.json (for programs) from finished rows."""
import csv
import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from recbole.evaluator.register import smaller_metrics

TIME_COLUMNS = [("train_seconds", "train time (s)"), ("test_seconds_per_user", "eval time / user (ms)"),
                ("peak_rss_mb", "peak memory (MiB)")]
PACKAGES = ["recbole-gen", "recbole", "torch", "transformers", "peft", "faiss-cpu", "numpy", "pandas"]


def metric_columns(rows):
    """Every metric any row reported, in the order the first reporting row gives them."""
    columns = []
    for row in rows:
        columns += [key for key in row["test_result"] if key not in columns]
    return columns


def arrow(metric):
    return "↓" if metric.split("@")[0] in smaller_metrics else "↑"


def machine():
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def versions():
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def _timings(row):
    users = max(1, row.get("test_users") or 1)
    return {"train_seconds": row["train_seconds"], "test_seconds_per_user": 1000 * row["test_seconds"] / users,
            "peak_rss_mb": row["peak_rss_mb"]}


def _cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) and abs(value) < 100 else f"{value:.0f}"


def write_report(out, preset, dataset, rows, shared_config, command):
    out = Path(out)
    columns = metric_columns(rows)
    table = [{"row": row["row"], **{c: row["test_result"].get(c) for c in columns}, **_timings(row)} for row in rows]
    info = {
        "command": command, "dataset": dataset, "preset": preset["name"], "seed": shared_config.get("seed"),
        "commit": commit(), "machine": machine(), "versions": versions(),
        "eval_encoder": shared_config.get("eval_encoder") or "see properties/overall.yaml (eval_encoder)",
        "config": shared_config, "columns": columns, "rows": rows, "table": table,
    }
    (out / "results.json").write_text(json.dumps(info, indent=2, default=str))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["row", *columns, *(key for key, _ in TIME_COLUMNS)])
        writer.writeheader()
        writer.writerows(table)
    header = ["model", *(f"{c} {arrow(c)}" for c in columns), *(label for _, label in TIME_COLUMNS)]
    lines = [
        f"# {dataset}: generators and recommenders side by side",
        "",
        f"Command: `{command}`  ",
        f"Preset: {preset['name']}, seed {shared_config.get('seed')}, commit {info['commit'] or 'unknown'}  ",
        f"Machine: {info['machine']['platform']}, {info['machine']['cpus']} CPUs, Python {info['machine']['python']}",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for entry in table:
        cells = [entry["row"], *(_cell(entry[c]) for c in columns), *(_cell(entry[key]) for key, _ in TIME_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "↑ higher is better, ↓ lower is better; – = not defined for this row (see docs/evaluation.md)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
