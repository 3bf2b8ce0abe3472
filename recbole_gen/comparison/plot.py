"""results.png: the preset's main metrics (``plot_metrics``, slices of test users included, e.g. ``hit@10|cold``) for
every row with their intervals, one panel per metric (:data:`PER_ROW` a row of panels), competitors above in
results.md's order (by block) and reference rows (hollow, grey) below a dashed line; the best competitor is dark."""
from pathlib import Path

from recbole_gen.comparison.report import arrow, by_block, display_name

BEST, OTHER, REFERENCE = "#1f4e79", "#7da7d9", "#8c8c8c"
PER_ROW = 4


def write_plot(out, preset, dataset, table):
    """Draw results.png from the report's table; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in preset["plot_metrics"] if any(entry["metrics"].get(m, {}).get("value") is not None
                                                        for entry in table)]
    competitors = [entry for _, rows in by_block([entry for entry in table if not entry["reference"]]) for entry in rows]
    ordered = competitors + [entry for entry in table if entry["reference"]]   # results.md's order
    columns = min(PER_ROW, max(1, len(metrics)))
    lines = -(-max(1, len(metrics)) // columns)
    figure, axes = plt.subplots(lines, columns, sharey=True, squeeze=False,
                                figsize=(2.8 * columns + 1.4, lines * (0.34 * len(ordered) + 0.9) + 0.4))
    positions = list(range(len(ordered)))[::-1]
    references = sum(entry["reference"] for entry in ordered)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics):
        for y, entry in zip(positions, ordered):
            cell = entry["metrics"].get(metric)
            if cell is None or cell["value"] is None:
                continue
            color = REFERENCE if entry["reference"] else BEST if cell["best"] else OTHER
            low, high = cell["interval"] or (cell["value"], cell["value"])
            ax.errorbar(cell["value"], y, xerr=[[cell["value"] - low], [high - cell["value"]]], fmt="o", color=color,
                        markerfacecolor="white" if entry["reference"] else color, capsize=2, markersize=5)
        part = metric.partition("|")[2]
        size = f", {table[0]['slice_users'][part]:,} users" if part in table[0].get("slice_users", {}) else ""
        ax.set_title(f"{display_name(metric)} {arrow(metric)}{size}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
        if references:
            ax.axhline(references - 0.5, color=REFERENCE, linestyle="--", linewidth=0.8)
    for line in axes:
        line[0].set_yticks(positions, [entry["row"] + (" (ref.)" if entry["reference"] else "") for entry in ordered],
                           fontsize=9)
    users = sorted({entry["test_users"] for entry in table})
    figure.suptitle(f"{dataset}: {', '.join(f'{u:,}' for u in users)} test users, "
                    f"{float(preset['interval_level']):.0%} bootstrap intervals", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / figure.get_figheight()))   # 0.3 in for the title
    path = Path(out) / "results.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
