"""The benchmark runner on the tiny preset: every output, every column with its interval, the headline and its reading,
blocks and reference rows apart, slices of test users, resume, early failures; rows side by side (jobs)."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import recbole_gen
from recbole_gen.comparison import BenchmarkError, load_preset, plan_rows, run_benchmark
from recbole_gen.comparison.runner import Row, run_in_process, run_rows
from recbole_gen.cli import main


@pytest.fixture(scope="module")
def tiny_run(emoji_seq_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    run_benchmark("tiny", out=out, overrides={"data_path": str(emoji_seq_small)}, command="test")
    return out


ROWS = ["Pop", "SASRec", "ImageKNN", "LastItem", "Copy"]


def test_outputs_and_columns(tiny_run):
    for name in ["results.md", "results.csv", "results.json", "results.png", "gallery.html", "gallery.png",
                 *(f"rows/{row}.{ext}" for row in ROWS for ext in ("json", "npz"))]:
        assert (tiny_run / name).is_file(), name
    info = json.loads((tiny_run / "results.json").read_text())
    assert [row["row"] for row in info["table"]] == ROWS
    for row in info["table"]:
        assert {"hit@2", "hit@10", "ndcg@2", "ndcg@10", "targetsim", "novelty", "imagecoverage", "repeatrate", "fd",
                *(f"{m}|{s}" for s in ("cold", "tail", "head") for m in ("hit@10", "targetsim"))} == set(row["metrics"])
        hit, targetsim = row["metrics"]["hit@10"], row["metrics"]["targetsim"]
        assert 0 <= hit["value"] <= 1 and -1 <= targetsim["value"] <= 1 and row["peak_rss_mb"] > 0
        for cell in row["metrics"].values():  # every metric has an interval around its value
            low, high = cell["interval"]
            assert low <= cell["value"] + 1e-9 and cell["value"] <= high + 1e-9
        assert row["test_users"] == info["table"][0]["test_users"] > 250 and row["epochs"] >= 1 and row["train_steps"] >= 1
        # a ranker never shows what its user took (emoji-seq: repeatable False); a copy of the last item always does
        assert row["metrics"]["repeatrate"]["value"] == (1 if row["row"] in ("LastItem", "Copy") else 0)
    assert info["versions"]["recbole"] == "1.2.1" and info["seed"] == 2026
    slices = info["table"][0]["slice_users"]  # tail (fewer than 5, cold included) and head split the test users
    assert slices["tail"] + slices["head"] == info["table"][0]["test_users"] and 0 < slices["cold"] < slices["tail"]
    table = (tiny_run / "results.md").read_text()
    assert ("| model | Hit@2 ↑ | Hit@10 ↑ | NDCG@2 ↑ | NDCG@10 ↑ | TargetSim ↑ | Novelty ↑ | ImageCoverage ↑ | RepeatRate ↓ | "
            "FD ↓ | epochs | steps | train | test |") in table
    assert "| model | Hit@10 ↑ | Hit@2 ↑ | TargetSim ↑ | epochs | steps | train |" in table  # the headline
    assert "| *Rankers* |" in table and "| *Generators* |" in table and "- **LastItem**: " in table
    assert f"Test users: {info['table'][0]['test_users']}" in table and "![" in table and "Hit@10: the true next item is in the top 10" in table
    assert f"cold ({slices['cold']} users): Hit@10 ↑" in table
    competitors, references = table.split("## Slices")[0], table.split("## References")[1]
    assert "| ImageKNN | " in competitors and "| Copy |" not in competitors and "| Copy | " in references
    assert table.count("**") >= 2 * 6  # each column has its best row in bold


def test_reference_rows_are_never_the_best(tiny_run):
    info = json.loads((tiny_run / "results.json").read_text())
    reference = next(row for row in info["table"] if row["row"] == "Copy")
    assert reference["reference"] and not any(cell["best"] or cell["significant"] is not None
                                              for cell in reference["metrics"].values())
    with open(tiny_run / "results.csv") as f:
        header = f.readline().strip().split(",")
    assert {"hit@10_low", "hit@10_high", "hit@10_vs_best_significant", "fd_low"} <= set(header)


def test_gallery_has_every_tile(tiny_run):
    gallery = json.loads((tiny_run / "gallery.json").read_text())
    preset = load_preset("tiny")
    assert len(gallery["users"]) == preset["gallery_users"]
    # per user: up to 5 history tiles, the true next item, and each ranker's top-1 item
    history = sum(1 for name in (tiny_run / "gallery").iterdir()) - gallery["tiles"]
    assert history == 0
    assert gallery["tiles"] >= preset["gallery_users"] * 3
    with Image.open(tiny_run / "gallery.png") as image:
        image.load()
        assert image.size[0] > 64 and image.size[1] > 64
    page = (tiny_run / "gallery.html").read_text()
    assert page.count("<img src=\"gallery/") == gallery["tiles"] and "results.png" in page and "Copy (reference)" in page


def test_resume_skips_finished_rows(tiny_run, emoji_seq_small):
    before = {p.name: p.stat().st_mtime_ns for p in (tiny_run / "rows").iterdir()}
    run_benchmark("tiny", out=tiny_run, resume=True, overrides={"data_path": str(emoji_seq_small)}, command="test")
    assert {p.name: p.stat().st_mtime_ns for p in (tiny_run / "rows").iterdir()} == before


def test_unknown_row_or_model_fails_before_training(capsys):
    preset = load_preset("tiny")
    with pytest.raises(BenchmarkError, match="unknown benchmark row"):
        plan_rows(preset, ["Pop", "NoSuchModel"])
    preset["rows"]["Broken"] = {"model": "SASrec"}
    with pytest.raises(BenchmarkError, match="Did you mean: SASRec"):
        plan_rows(preset, ["Broken"])
    assert main(["benchmark", "--preset=tiny", "--models=Pop,Nope"]) == 2
    assert "unknown benchmark row(s) Nope" in capsys.readouterr().err
    assert not Path("results").exists()


def test_a_preset_extends_another(tmp_path):
    base = load_preset("default")
    (tmp_path / "mine.yaml").write_text(
        "extends: default\nmodels: [Pop, GenLMM-SFT]\nconfig: {seed: 7, eval_fd_per_user: ~}\n"
        "rows:\n  GenLMM-SFT: {model: GenLMM, block: generators, epochs: 1}\n  Extra: {model: Pop}\n")
    mine = load_preset(tmp_path / "mine.yaml")
    assert mine["name"] == "mine" and mine["models"] == ["Pop", "GenLMM-SFT"] and "extends" not in mine
    assert mine["config"]["seed"] == 7 and "eval_fd_per_user" not in mine["config"]   # ~: the model default applies
    assert {k: v for k, v in mine["config"].items() if k not in ("seed",)} == \
        {k: v for k, v in base["config"].items() if k not in ("seed", "eval_fd_per_user")}
    assert mine["rows"]["GenLMM-SFT"] == {"model": "GenLMM", "block": "generators", "epochs": 1}   # replaced whole
    assert mine["rows"]["SASRec"] == base["rows"]["SASRec"] and mine["rows"]["Extra"] == {"model": "Pop"}
    assert mine["slices"] == base["slices"]
    (tmp_path / "loop.yaml").write_text(f"extends: {tmp_path / 'loop.yaml'}\n")
    with pytest.raises(BenchmarkError, match="extends itself"):
        load_preset(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: no-such-preset\n")
    with pytest.raises(BenchmarkError, match="no benchmark preset 'no-such-preset'"):
        load_preset(tmp_path / "orphan.yaml")


def test_unbuildable_dataset_fails_before_training(capsys):
    assert main(["benchmark", "--preset=tiny", "--dataset=no-such-data"]) == 2
    assert "Dataset 'no-such-data' not found" in capsys.readouterr().err
    assert not Path("results").exists()


def _large_message(size, queue, parent_pid):
    queue.put(("ok", np.arange(size, dtype=np.float64)))


def test_a_row_result_larger_than_the_pipe_buffer_comes_back():
    """A row's bootstrap draws (1,000 resamples x every metric) exceed the pipe's 64 KiB: reading only after the row
    exits would wait forever (the main job hung on its first row this way)."""
    status, payload = run_in_process(_large_message, 200_000)  # 1.6 MB
    assert status == "ok" and len(payload) == 200_000 and payload[-1] == 199_999


def _wait_policy(queue, parent_pid):
    queue.put(("ok", os.environ.get("OMP_WAIT_POLICY")))


def test_rows_spin_unless_the_environment_chose_a_wait_policy(monkeypatch):
    """A row runs alone, where OpenMP's passive waiting (the package's default for shared machines) triples the
    bootstrap's eigensolver time; a policy the user set wins, and the benchmark's own environment is left as found."""
    before = os.environ.get("OMP_WAIT_POLICY")
    monkeypatch.setattr(recbole_gen, "OMP_WAIT_POLICY_FROM_ENVIRONMENT", None)
    assert run_in_process(_wait_policy) == ("ok", "ACTIVE")
    monkeypatch.setattr(recbole_gen, "OMP_WAIT_POLICY_FROM_ENVIRONMENT", "PASSIVE")
    assert run_in_process(_wait_policy) == ("ok", "PASSIVE")
    assert os.environ.get("OMP_WAIT_POLICY") == before


def _timed(seconds, fail, queue, parent_pid):
    started = time.time()
    time.sleep(seconds)
    queue.put(("error", "ValueError: asked to fail") if fail else ("ok", (started, time.time())))


def test_rows_run_side_by_side_after_the_rows_they_need():
    """--jobs 2: a row starts as soon as a slot is free and its '@Row's have finished; a resumed row takes no slot."""
    rows = [Row("A", "m", {}, [], False, "rankers"), Row("B", "m", {}, ["A"], False, "rankers"),
            Row("C", "m", {}, [], False, "rankers"), Row("Done", "m", {}, [], False, "rankers")]
    spans = {}
    run_rows(rows, lambda row: None if row.name == "Done" else (_timed, 1.0 if row.name == "A" else 0.2, False),
             lambda row, span: spans.update({row.name: span}), jobs=2, threads=1)
    assert set(spans) == {"A", "B", "C"}
    assert spans["C"][0] < spans["A"][1] and spans["B"][0] >= spans["A"][1]  # C beside A, B after it


def test_a_failed_row_stops_the_rows_beside_it():
    rows = [Row("Slow", "m", {}, [], False, "rankers"), Row("Broken", "m", {}, [], False, "rankers")]
    started = {}

    def start(row):
        started[row.name] = (_timed, 60 if row.name == "Slow" else 0.1, row.name == "Broken")
        return started[row.name]

    begun = time.time()
    with pytest.raises(RuntimeError, match="row 'Broken' failed: ValueError: asked to fail"):
        run_rows(rows, start, lambda row, payload: None, jobs=2, threads=1)
    assert time.time() - begun < 30 and set(started) == {"Slow", "Broken"}


def _threads(queue, parent_pid):
    import torch

    queue.put(("ok", (os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads())))


def test_each_row_gets_its_share_of_the_threads():
    shares = []
    run_rows([Row("A", "m", {}, [], False, "rankers")], lambda row: (_threads,), lambda row, payload: shares.append(payload),
             jobs=2, threads=1)
    assert shares == [("1", 1)] and os.environ.get("OMP_NUM_THREADS") != "1"
