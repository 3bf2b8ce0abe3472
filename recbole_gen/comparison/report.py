"""results.md (for people), results.csv and results.json (for programs) from finished rows and their bootstrap draws.

results.md opens with a compact headline table (the preset's ``headline`` metrics, steps and training time) and a
reading that compares every generator with the rankers in both channels: through its images (Hit@n, n = images
shown, against the rankers' drawn twins, which show their top n items as redraws) and as a ranking (Hit@10 against
the rankers' own). Then every metric with its 95% interval over test users (:mod:`recbole_gen.comparison.bootstrap`),
the slices of test users (cold, tail and head targets), and the reference rows. The best competitor of each column is
bold, and so is every competitor whose paired difference to it is not significant. Rows are grouped by their
``block`` (rankers, generators, drawn twins); reference rows (``reference: true``: bounds, not competitors) stand
apart.
"""
import csv
import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from recbole.evaluator.register import metrics_dict, smaller_metrics

from recbole_gen.comparison.bootstrap import compare, interval

PACKAGES = ["recbole-gen", "recbole", "torch", "transformers", "peft", "faiss-cpu", "numpy", "pandas"]
LEGEND = {
    "hit": "the true next item is in the top {k}",
    "ndcg": "the same, discounted by its rank",
    "mrr": "1 / rank of the true next item (0 below {k})",
    "recall": "share of the user's next items in the top {k}",
    "precision": "share of the top {k} that are next items",
    "targetsim": "cosine of the row's images to the true next item",
    "targetsimbest": "the best of those cosines",
    "historysim": "cosine to the user's history items",
    "futuresim": "cosine to the user's later items",
    "diversity": "1 - cosine between one user's images",
    "imagecoverage": "share of the catalogue that is some image's nearest item",
    "novelty": "1 - cosine to the nearest catalogue item (0 for a ranker)",
    "fd": "Fréchet distance of the images to the true next items",
    "oracleutility": "the judge's (simulated user's) utility of the images, a repeat worth nothing",
    "repeatrate": "share of the images whose nearest item the user already took",
    "planfidelity": "share of a generator's images whose nearest item is the item it planned",
}
BLOCKS = {"rankers": "Rankers", "generators": "Generators",
          "drawn twins": "Drawn twins (each ranker's top items, redrawn by the generators' tokenizer)"}


def metric_columns(rows):
    """Every metric any row reported, in the order the first reporting row gives them."""
    columns = []
    for row in rows:
        columns += [key for key in row["test_result"] if key not in columns]
    return columns


def bigger_is_better(metric):
    return metric.split("|")[0].split("@")[0] not in smaller_metrics


def arrow(metric):
    return "↑" if bigger_is_better(metric) else "↓"


def display_name(metric):
    """RecBole's result key (``ndcg@10``) as its metric class names it (``NDCG@10``); a slice's (``hit@10|cold``)
    as ``Hit@10 (cold)``."""
    metric, _, part = metric.partition("|")
    name, _, k = metric.partition("@")
    cls = metrics_dict.get(name)
    return (cls.__name__ if cls else name) + (f"@{k}" if k else "") + (f" ({part})" if part else "")


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


def _defined(value):
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _value(row, column):
    """A row's point value of ``column``: a test metric, or ``metric|slice`` on a slice of the test users."""
    metric, _, part = column.partition("|")
    value = (row.get("slices") or {}).get(part, {}).get("values", {}).get(metric) if part else row["test_result"].get(metric)
    return float(value) if _defined(value) else None


def _cells(rows, draws, columns, level):
    """``{row: {metric: cell}}``: value, interval, and (competitors) the paired comparison with the column's best."""
    cells = {}
    for row in rows:
        name = row["row"]
        cells[name] = {}
        for metric in columns:
            value = _value(row, metric)
            bounds = interval(value, draws[name][metric], level) if value is not None and metric in draws[name] else None
            cells[name][metric] = {"value": value, "interval": bounds, "best": False, "tied_with_best": False,
                                   "vs_best": None, "significant": None}
    competitors = [row for row in rows if not row.get("reference")]
    for metric in columns:
        scored = [row for row in competitors if cells[row["row"]][metric]["value"] is not None]
        if not scored:
            continue
        sign = 1 if bigger_is_better(metric) else -1
        best = max(scored, key=lambda row: sign * cells[row["row"]][metric]["value"])
        best_cell = cells[best["row"]][metric]
        best_cell["best"] = best_cell["tied_with_best"] = True
        for row in scored:
            cell = cells[row["row"]][metric]
            paired = (row is not best and metric in draws[row["row"]] and metric in draws[best["row"]]
                      and row["bootstrap"]["users"] == best["bootstrap"]["users"])
            if paired:
                cell["vs_best"], cell["significant"] = compare(cell["value"], draws[row["row"]][metric],
                                                               best_cell["value"], draws[best["row"]][metric], level)
                cell["tied_with_best"] = not cell["significant"]
    return cells


def _decimals(value):
    """Decimals that show ``value`` with 3 significant digits."""
    return 0 if value == 0 or abs(value) >= 100 else max(0, 2 - math.floor(math.log10(abs(value))))


def _number(value, decimals):
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def format_cell(cell):
    """``0.225 [0.199, 0.251]`` (3 significant digits; the interval at the value's decimals), bold when tied with the
    best; ``–`` when undefined."""
    value = cell["value"]
    if value is None:
        return "–"
    decimals = _decimals(value)
    text = _number(value, decimals)
    if cell["interval"] is not None:
        low, high = (_number(bound, decimals) for bound in cell["interval"])
        if (low, high) != (text, text):
            text += f" [{low}, {high}]"
    return f"**{text}**" if cell["tied_with_best"] else text


def minutes(seconds):
    total = int(round(seconds))
    return f"{total // 60}:{total % 60:02d}"


def _lines(header, body):
    return ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |",
            *("| " + " | ".join(cells) + " |" for cells in body)]


def _table_lines(rows, cells, columns):
    header = ["model", *(f"{display_name(c)} {arrow(c)}" for c in columns), "epochs", "steps", "train", "test",
              "peak memory"]
    return _lines(header, [[row["row"], *(format_cell(cells[row["row"]][c]) for c in columns), *_cost(row),
                            minutes(row["test_seconds"]), f"{row['peak_rss_mb'] / 1024:.2f} GiB"] for row in rows])


def _cost(row):
    steps = row.get("train_steps")
    return [str(row.get("epochs", "–")), "–" if steps is None else f"{steps:,}", minutes(row["train_seconds"])]


def _headline_lines(blocks, cells, columns):
    """Values only (bold as in the full table), rows grouped by block."""
    header = ["model", *(f"{display_name(c)} {arrow(c)}" for c in columns), "epochs", "steps", "train"]
    body = []
    for title, rows in blocks:
        body.append([f"*{title}*", *("" for _ in header[1:])])
        for row in rows:
            values = [format_cell({**cells[row["row"]][c], "interval": None}) for c in columns]
            body.append([row["row"], *values, *_cost(row)])
    return _lines(header, body)


def _slice_lines(rows, cells, parts, metrics):
    header = ["model", *(f"{name} ({users:,} users): {display_name(m)} {arrow(m)}" for name, users in parts
                         for m in metrics)]
    return _lines(header, [[row["row"], *(format_cell(cells[row["row"]][f"{m}|{name}"]) for name, _ in parts
                                          for m in metrics)] for row in rows])


def by_block(rows):
    """``[(title, rows)]`` of the competitors, in the order their blocks first appear."""
    order = list(dict.fromkeys(row.get("block", "rankers") for row in rows))
    return [(BLOCKS.get(block, block), [row for row in rows if row.get("block", "rankers") == block]) for block in order]


def _versus(row, other, metric, cells, draws, level):
    """``"0.031 vs 0.045 (X; -0.014 [-0.025, -0.003])"``: a row's value against another's, with the paired difference
    and whether it is significant."""
    mine, theirs = cells[row["row"]][metric]["value"], cells[other["row"]][metric]["value"]
    text = f"{_short(mine)} vs {_short(theirs)} ({other['row']}"
    if metric in draws[row["row"]] and metric in draws[other["row"]] and row["bootstrap"]["users"] == other["bootstrap"]["users"]:
        (low, high), significant = compare(mine, draws[row["row"]][metric], theirs, draws[other["row"]][metric], level)
        text += f"; difference {mine - theirs:+.3f} [{low:+.3f}, {high:+.3f}]{'' if significant else ', not significant'}"
    return text + ")"


def _short(value):
    return "–" if value is None else _number(value, _decimals(value))


def _best(rows, metric, cells):
    scored = [row for row in rows if cells[row["row"]].get(metric, {}).get("value") is not None]
    sign = 1 if bigger_is_better(metric) else -1
    return max(scored, key=lambda row: sign * cells[row["row"]][metric]["value"]) if scored else None


def reading(blocks, cells, draws, shown, level):
    """Bullets comparing each generator with the best ranker (Hit@10, as rankings) and the best drawn twin (Hit@n
    and Hit@10 through images, n = the images shown)."""
    groups = dict((block, rows) for block, rows in blocks)
    rankers, twins = groups.get(BLOCKS["rankers"], []), groups.get(BLOCKS["drawn twins"], [])
    lines = []
    hits = sorted((m for m in shown if m.startswith("hit@")), key=lambda m: int(m.split("@")[1]))
    best_ranker = _best(rankers, "hit@10", cells) if "hit@10" in hits else None
    if best_ranker is not None:
        lines.append(f"- Best ranker by Hit@10: {best_ranker['row']} ({_short(cells[best_ranker['row']]['hit@10']['value'])}).")
    for row in groups.get(BLOCKS["generators"], []):
        parts = []
        for metric in hits:
            twin = _best(twins, metric, cells)
            if twin is not None and cells[row["row"]][metric]["value"] is not None:
                parts.append(f"through images {display_name(metric)} {_versus(row, twin, metric, cells, draws, level)}")
        if best_ranker is not None and cells[row["row"]]["hit@10"]["value"] is not None:
            parts.append(f"against the best ranking, Hit@10 {_versus(row, best_ranker, 'hit@10', cells, draws, level)}")
        if parts:
            lines.append(f"- **{row['row']}**: " + "; ".join(parts) + ".")
    return lines


def legend(columns):
    """One line: what each metric of ``columns`` means."""
    parts = []
    for metric in columns:
        name, _, k = metric.partition("@")
        if name in LEGEND:
            parts.append(f"{display_name(metric)}: {LEGEND[name].format(k=k)}")
    return "; ".join(parts) + "."


def slice_columns(rows, metrics):
    """``metric|slice`` for every slice the rows report, and ``[(slice, users)]`` in the preset's order."""
    parts = {}
    for row in rows:
        for name, part in (row.get("slices") or {}).items():
            parts.setdefault(name, part["users"])
    return [f"{m}|{name}" for name in parts for m in metrics], list(parts.items())


def write_report(out, preset, dataset, rows, draws, shared_config, command):
    """Write results.md/.csv/.json; returns the table (one dict per row, every cell with its interval) for the plot."""
    out = Path(out)
    level = float(preset["interval_level"])
    columns = metric_columns(rows)
    sliced, parts = slice_columns(rows, preset.get("slice_metrics") or [])
    cells = _cells(rows, draws, columns + sliced, level)
    table = [{"row": row["row"], "reference": bool(row.get("reference")), "block": row.get("block", "rankers"),
              "metrics": cells[row["row"]], "epochs": row.get("epochs"), "train_steps": row.get("train_steps"),
              "train_seconds": row["train_seconds"], "test_seconds": row["test_seconds"],
              "test_users": row["test_users"], "peak_rss_mb": row["peak_rss_mb"],
              "slice_users": {name: users for name, users in parts}} for row in rows]
    users = {row["test_users"] for row in rows}
    samples = {row["bootstrap"]["samples"] for row in rows}
    info = {
        "command": command, "dataset": dataset, "preset": preset["name"], "seed": shared_config.get("seed"),
        "commit": commit(), "machine": machine(), "versions": versions(),
        "eval_encoder": shared_config.get("eval_encoder") or "see properties/overall.yaml (eval_encoder)",
        "interval": {"level": level, "method": "paired bootstrap over test users, bias-shifted percentiles",
                     "samples": sorted(samples)},
        "config": shared_config, "columns": columns, "slice_columns": sliced, "rows": rows, "table": table,
    }
    (out / "results.json").write_text(json.dumps(info, indent=2, default=str))
    _write_csv(out / "results.csv", table, columns + sliced)

    shown = [c for c in columns if any(cells[row["row"]][c]["value"] is not None for row in rows)]
    hidden = [display_name(c) for c in columns if c not in shown]
    competitors = [row for row in rows if not row.get("reference")]
    references = [row for row in rows if row.get("reference")]
    blocks = by_block(competitors)
    headline = [c for c in preset.get("headline") or shown if c in shown]
    lines = [
        f"# {dataset}: generators and recommenders side by side",
        "",
        f"Command: `{command}`  ",
        f"Preset: {preset['name']}, seed {shared_config.get('seed')}, commit {info['commit'] or 'unknown'}  ",
        f"Machine: {info['machine']['platform']}, {info['machine']['cpus']} CPUs, Python {info['machine']['python']}  ",
        f"Test users: {', '.join(f'{u:,}' for u in sorted(users))}; intervals: {level:.0%}, paired bootstrap over test "
        f"users ({', '.join(f'{s:,}' for s in sorted(samples))} resamples)",
        "",
        *_headline_lines(blocks, cells, headline),
        "",
        *reading(blocks, cells, draws, shown, level),
        "",
        f"**Bold**: the best row of a column, and every row whose paired difference to it is not significant "
        f"(its {level:.0%} interval contains 0). ↑ higher is better, ↓ lower is better; – not defined for this row"
        + (f"; {', '.join(hidden)}: not defined for any row (left out)." if hidden else "."),
        "Times are m:ss (train: fitting, validation included; test: the test evaluation); epochs: epochs trained; "
        "steps: optimizer steps (training-free rows: batches passed).",
        "",
        "![every row's main metrics with their intervals](results.png)",
        "",
        "## Every metric, with its interval",
        "",
    ]
    for title, block_rows in blocks:
        lines += [f"### {title}", "", *_table_lines(block_rows, cells, shown), ""]
    lines += [legend(shown)]
    if parts:
        lines += ["", "## Slices: test users by how often their true next item occurs in the training split", "",
                  ", ".join(f"{name}: {_bounds_text(preset['slices'][name])}" for name, _ in parts) + ".", "",
                  *_slice_lines(competitors + references, cells, parts, preset["slice_metrics"])]
    if references:
        lines += ["", "## References (bounds, not competitors)", "", *_table_lines(references, cells, shown)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return table


def _bounds_text(bounds):
    low, high = bounds
    if high is None:
        return f"at least {low} training interactions"
    return "never in training" if (low, high) == (0, 1) else f"{low} to {high - 1} training interactions"


def _write_csv(path, table, columns):
    fields = ["row", "reference"]
    for metric in columns:
        fields += [metric, f"{metric}_low", f"{metric}_high", f"{metric}_vs_best_significant"]
    fields += ["epochs", "train_steps", "train_seconds", "test_seconds", "test_users", "peak_rss_mb"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for entry in table:
            flat = {key: entry[key] for key in ("row", "reference", "epochs", "train_steps", "train_seconds",
                                                  "test_seconds", "test_users", "peak_rss_mb")}
            for metric in columns:
                cell = entry["metrics"][metric]
                low, high = cell["interval"] or (None, None)
                flat.update({metric: cell["value"], f"{metric}_low": low, f"{metric}_high": high,
                             f"{metric}_vs_best_significant": cell["significant"]})
            writer.writerow(flat)
