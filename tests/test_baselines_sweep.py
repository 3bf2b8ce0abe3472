"""The default preset trains every ranker with its sweep's winner (benchmarks/baselines/), by one rule."""
import json
from pathlib import Path

import pytest

from recbole_gen.comparison import load_preset
from recbole_gen.comparison.runner import plan_rows

SWEEP = Path(__file__).resolve().parent.parent / "benchmarks" / "baselines" / "sweep.json"


def test_default_preset_uses_the_sweep_winners():
    sweep, preset = json.loads(SWEEP.read_text()), load_preset("default")
    for row, entry in sweep["rows"].items():
        assert row in preset["models"], row
        config = preset["rows"][row]
        assert {key: config.get(key) for key in entry["winner"]} == entry["winner"], row
        assert entry["winner"] in [trial["params"] for trial in entry["trials"]]
        best = max(trial["valid"]["ndcg@10"] for trial in entry["trials"])
        assert next(t for t in entry["trials"] if t["params"] == entry["winner"])["valid"]["ndcg@10"] == best


def test_every_trained_ranker_was_swept_and_follows_the_same_rule():
    sweep, preset = json.loads(SWEEP.read_text()), load_preset("default")
    trained = [row for row in preset["models"] if "stopping_step" in (preset["rows"][row] or {})]
    assert trained and set(trained) <= set(sweep["rows"])
    rule = {key: preset["ranker_training"][key] for key in preset["ranker_training"]}
    for row in trained:
        assert {key: preset["rows"][row][key] for key in rule} == rule, row


def test_the_full_preset_trains_the_rankers_as_the_default_does():
    default, full = load_preset("default"), load_preset("full")
    sweep = json.loads(SWEEP.read_text())
    for row in sweep["rows"]:
        winner = {key: default["rows"][row].get(key) for key in sweep["rows"][row]["winner"]}
        assert {key: full["rows"][row].get(key) for key in winner} == winner, row


@pytest.mark.parametrize("name", ["tiny", "default", "full"])
def test_every_preset_plans_its_rows(name):
    preset = load_preset(name)
    rows = plan_rows(preset)
    assert [row.name for row in rows] and {row.name for row in rows} == set(preset["models"])
    assert [row.name for row in plan_rows(preset, list(preset["rows"]))]  # rows outside `models` plan too
    assert {"bootstrap_samples", "interval_level", "plot_metrics", "gallery_users"} <= set(preset)
