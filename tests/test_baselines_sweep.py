"""The presets train every ranker (benchmarks/baselines/) and the RL row (benchmarks/rl/, full preset) with its sweep's
winner, the rankers by one rule, and a sweep trial trains exactly as the main job's row."""
import json
from pathlib import Path

import pytest

from recbole_gen.comparison import load_preset
from recbole_gen.comparison.runner import plan_rows

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SWEEP = BENCHMARKS / "baselines" / "sweep.json"
RL_SWEEP = BENCHMARKS / "rl" / "sweep.json"


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


def test_a_sweep_trial_trains_as_the_main_job_row_whatever_validates_it(tmp_path):
    """The sweep validates with [Hit, NDCG] and no FLOPs count, the main job's row with every image metric after a
    FLOPs count: neither may change the random stream BERT4Rec's masks and dropout draw from, or the sweep's winner
    would not be what the main job trains."""
    from recbole_gen.comparison.sweep import validate
    from recbole_gen.quick_start import run_recbole
    from test_evaluator_recbole import write_image_dataset

    write_image_dataset(tmp_path, n_users=40, n_items=30)
    config = {"data_path": str(tmp_path), "topk": [1, 5], "valid_metric": "NDCG@5", "eval_step": 1, "epochs": 4,
              "stopping_step": 10, "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                                                  "group_by": "user"},
              "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "image_size": 16, "eval_encoder": "pixel",
              "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 8,
              "train_batch_size": 32, "show_progress": False, "checkpoint_dir": str(tmp_path / "saved"),
              "log_dir": str(tmp_path / "log")}
    trial = validate("BERT4Rec", "imgseq", {**config, "metrics": ["Hit", "NDCG"]}, ["learning_rate"])
    row = run_recbole("BERT4Rec", "imgseq", config_dict={**config, "metrics": ["Hit", "NDCG", "TargetSim", "FD"]})
    assert trial["epochs"] == row["epochs"] == 4
    assert {k: row["best_valid_result"][k] for k in trial["valid"]} == pytest.approx(trial["valid"], abs=1e-12)


def test_the_rl_row_uses_the_second_stage_sweep_winner():
    sweep, preset = json.loads(RL_SWEEP.read_text()), load_preset("full")
    row = preset["rows"][sweep["row"]]
    assert {key: row.get(key) for key in sweep["winner"]} == sweep["winner"]
    assert sweep["winner"] in [trial["params"] for trial in sweep["trials"]]


def test_an_extended_sweep_reruns_only_its_new_steps():
    from recbole_gen.comparison.sweep import extends, run_sweep, swept_keys

    ran = []

    def run(params):
        ran.append(params)
        return {"params": {"a": 1, "b": 1, **params}, "valid": {"ndcg@10": params.get("a", 1) + params.get("b", 1) / 10}}

    score = lambda trial: trial["valid"]["ndcg@10"]  # noqa: E731
    first = {"grid": {"a": [1, 2]}, "then": {"b": [3]}}
    trials, winner = run_sweep(first, run, score)
    assert winner == {"a": 2, "b": 3} and len(ran) == 3
    longer = {"grid": {"a": [1, 2]}, "then": {"b": [3], "a": [5]}}
    assert extends(longer, first) and not extends(first, longer) and not extends({"grid": {"a": [2]}}, first)
    ran.clear()
    again, winner = run_sweep(longer, run, score, done=trials)
    assert ran == [{"a": 5, "b": 3}] and again[:3] == trials and winner == {"a": 5, "b": 3}
    # a key stepped twice: `then` as a list of one-key mappings, which extends the mapping form it starts with
    twice = {"grid": {"a": [1, 2]}, "then": [{"b": [3]}, {"a": [5]}, {"b": [7]}]}
    assert extends(twice, longer) and swept_keys(twice) == ["a", "b"]
    ran.clear()
    third, winner = run_sweep(twice, run, score, done=again)
    assert ran == [{"a": 5, "b": 7}] and third[:4] == again and winner == {"a": 5, "b": 7}
