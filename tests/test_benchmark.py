"""The benchmark runner on the tiny preset: every output, every column, resume, early failures."""
import json
from pathlib import Path

import pytest
from PIL import Image

from recbole_gen.comparison import BenchmarkError, load_preset, plan_rows, run_benchmark
from recbole_gen.cli import main


@pytest.fixture(scope="module")
def tiny_run(emoji_seq_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    run_benchmark("tiny", out=out, overrides={"data_path": str(emoji_seq_small)}, command="test")
    return out


def test_outputs_and_columns(tiny_run):
    for name in ["results.md", "results.csv", "results.json", "gallery.html", "gallery.png", "rows/Pop.json", "rows/SASRec.json"]:
        assert (tiny_run / name).is_file(), name
    info = json.loads((tiny_run / "results.json").read_text())
    assert [row["row"] for row in info["table"]] == ["Pop", "SASRec"]
    expected = {"hit@10", "ndcg@10", "targetsim", "novelty", "train_seconds", "test_seconds_per_user", "peak_rss_mb"}
    for row in info["table"]:
        assert expected <= set(row), set(row)
        assert 0 <= row["hit@10"] <= 1 and -1 <= row["targetsim"] <= 1 and row["peak_rss_mb"] > 0
    assert info["versions"]["recbole"] == "1.2.1" and info["seed"] == 2026
    table = (tiny_run / "results.md").read_text()
    assert "| model | hit@10 ↑ | ndcg@10 ↑ | targetsim ↑ | novelty ↑ |" in table and "| SASRec |" in table


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
    assert (tiny_run / "gallery.html").read_text().count("<img") == gallery["tiles"]


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


def test_unbuildable_dataset_fails_before_training(capsys):
    assert main(["benchmark", "--preset=tiny", "--dataset=no-such-data"]) == 2
    assert "Dataset 'no-such-data' not found" in capsys.readouterr().err
    assert not Path("results").exists()
