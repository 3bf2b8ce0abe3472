"""Nothing executes, escapes or is lost: checkpoints cannot run code, image paths stay inside the dataset folder,
a rebuild never destroys a dataset its readers use, and every bad input ends with one line and exit status 2."""
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from recbole_gen.checkpoint import CheckpointError, export_checkpoint, load_checkpoint
from recbole_gen.cli import main, run_recbole_main
from recbole_gen.config import Config
from recbole_gen.data import ItemImageError, create_dataset
from test_data_images import write_image_dataset
from test_genlmm_support import emoji64, gtiny, recbole_config  # noqa: F401
from tiny_data import write_tiny_dataset


class Payload:
    """Unpickling this runs a shell command (what a hostile checkpoint would carry)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_line_error(capsys, code, *fragments):
    """The run ends with exit status 2 and one error line (after any log lines), naming the problem."""
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    err = errors[0]
    for fragment in fragments:
        assert fragment in err, err
    return err


# ----------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"config": Payload(marker), "state_dict": {}}, tmp_path / "evil.pth")
    code = main(["generate", "--model-file", str(tmp_path / "evil.pth"), "--user", "u1"])
    _one_line_error(capsys, code, "evil.pth", "holds pickled objects", "--trust-checkpoint")
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_truncated_and_non_checkpoint_files_are_named(tmp_path, capsys):
    good = {"config": {"model": "SASRec"}, "state_dict": {"w": torch.zeros(64, 64)}}
    torch.save(good, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pth").write_text("not a checkpoint at all")
    code = main(["generate", "--model-file", str(tmp_path / "truncated.pth"), "--user", "u1"])
    _one_line_error(capsys, code, "truncated.pth", "is not a complete checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_checkpoint(tmp_path / "notes.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


def test_a_trusted_pickled_checkpoint_loads_only_when_asked(tmp_path):
    torch.save({"config": Path("a/config"), "state_dict": {}}, tmp_path / "stock.pth")  # a pickled object, benign
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(tmp_path / "stock.pth")
    assert load_checkpoint(tmp_path / "stock.pth", trust=True)["config"] == Path("a/config")


def test_recbole_checkpoints_store_plain_data_and_export_to_safetensors(tmp_path):
    from recbole_gen.quick_start import load_data_and_model, run_recbole

    data = write_tiny_dataset(tmp_path / "data")
    result = run_recbole("SASRec", "tiny", config_dict={
        "data_path": str(data), "epochs": 1, "hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 1,
        "show_progress": False, "load_col": None, "MAX_ITEM_LIST_LENGTH": 10})
    checkpoint = torch.load(result["model_file"], weights_only=True)  # plain data: torch's safe loader reads it
    assert isinstance(checkpoint["config"], dict) and checkpoint["config"]["model"] == "SASRec"
    folder = export_checkpoint(result["model_file"], tmp_path / "exported")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "recbole_gen.json"}
    config, model, *_ = load_data_and_model(folder)
    reloaded = load_checkpoint(result["model_file"])["state_dict"]
    assert config["model"] == "SASRec" and all(torch.equal(model.state_dict()[k], v) for k, v in reloaded.items())


@pytest.mark.parametrize("model", ["ItemKNN", "SASRecF"])
def test_models_with_arrays_matrices_or_modules_beside_their_weights_save_safely(tmp_path, model):
    """ItemKNN keeps scipy sparse matrices in other_parameter, SASRecF a submodule: both save, reload weights-only
    and test (the main job's ItemKNN row stopped on its own checkpoint before this)."""
    from recbole_gen.quick_start import load_data_and_model, run_recbole

    data = write_tiny_dataset(tmp_path / "data")
    options = {"ItemKNN": {}, "SASRecF": {"hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 1,
                                          "selected_features": ["tags"], "MAX_ITEM_LIST_LENGTH": 10}}[model]
    result = run_recbole(model, "tiny", config_dict={"data_path": str(data), "epochs": 1, "show_progress": False,
                                                     "load_col": None, **options})
    assert "ndcg@10" in result["test_result"]
    torch.load(result["model_file"], weights_only=True)  # nothing pickled
    _, reloaded, *_ = load_data_and_model(result["model_file"])
    assert type(reloaded).__name__ == model


def test_other_parameter_arrays_and_sparse_matrices_round_trip(tmp_path):
    import numpy as np
    import scipy.sparse as sp

    from recbole_gen.checkpoint import save_checkpoint

    matrix = sp.random(5, 7, density=0.3, format="csr", random_state=0)
    other = {"w": matrix, "pred": np.arange(6.0).reshape(2, 3), "nested": {"m": matrix.tocsc()}, "n": 3,
             "layer": torch.nn.Linear(2, 2)}
    save_checkpoint(tmp_path / "c.pth", {"config": {"model": "X"}, "state_dict": {}, "other_parameter": other})
    back = load_checkpoint(tmp_path / "c.pth")["other_parameter"]
    assert back["w"].format == "csr" and (back["w"] != matrix).nnz == 0
    assert back["nested"]["m"].format == "csc" and np.array_equal(back["pred"], other["pred"]) and back["n"] == 3
    assert "layer" not in back  # a submodule's weights travel in state_dict


# ----------------------------------------------------------------------------- image paths
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_image_paths_may_not_leave_the_dataset_folder(tmp_path, kind):
    folder = write_image_dataset(tmp_path / "data")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(folder / "images" / "i3.png", outside / "secret.png")
    value = {"dotdot": "../../outside/secret.png", "absolute": str(outside / "secret.png"), "symlink": "images/link.png"}[kind]
    if kind == "symlink":
        (folder / "images" / "link.png").symlink_to(outside / "secret.png")
    lines = (folder / "pics.item").read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t" + value
    (folder / "pics.item").write_text("\n".join(lines) + "\n")
    settings = {"data_path": str(folder.parent), "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                                                              "item": ["item_id"]}, "image_size": 8}
    with pytest.raises(ItemImageError, match=r"outside the dataset folder \(1\): item 'i3'.*allow_external_images"):
        create_dataset(Config(model="SASRec", dataset="pics", config_dict=settings), images=True)
    allowed = create_dataset(Config(model="SASRec", dataset="pics", config_dict={**settings, "allow_external_images": True}),
                             images=True)
    assert bool(allowed.image_store.has_image[allowed.token2id("item_id", "i3")])


# ----------------------------------------------------------------------------- rebuilds
def _read_repeatedly(data_path, seconds, queue):
    import time

    import recbole_gen  # noqa: F401
    from recbole_gen.config import Config as C
    from recbole_gen.data import create_dataset as make

    torch.set_num_threads(1)
    config = C(model="SASRec", dataset="emoji-seq", config_dict={"data_path": str(data_path), "emoji_seq_users": 300,
                                                                 "image_size": 8, "show_progress": False})
    end, reads = time.time() + seconds, 0
    try:
        while time.time() < end:
            dataset = make(config, images=True)
            assert dataset.item_num == 3656 and bool(dataset.image_store.has_image[1:].all())
            reads += 1
        queue.put(("ok", reads))
    except BaseException as error:  # reported to the test
        queue.put(("error", f"{type(error).__name__}: {error}"))


def test_a_rebuild_while_a_run_reads_the_dataset_keeps_it_whole(emoji_seq_small, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(emoji_seq_small / "emoji-seq", data / "emoji-seq")
    before = sorted(p.name for p in (data / "emoji-seq").iterdir() if p.name != ".cache")  # other tests' image cache
    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    reader = context.Process(target=_read_repeatedly, args=(data, 25, queue))
    reader.start()
    rebuilt = subprocess.run([sys.executable, "-m", "recbole_gen", "make-dataset", "emoji-seq", "--force",
                              "--data_path", str(data), "--emoji_seq_users=300"], capture_output=True, text=True, timeout=300)
    reader.join(timeout=300)
    status, detail = queue.get()
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert status == "ok" and detail >= 1, detail
    after = sorted(p.name for p in (data / "emoji-seq").iterdir())
    assert [name for name in after if name != ".cache"] == before  # whole (the readers' image cache kept beside)
    assert len(list((data / "emoji-seq" / "images").glob("*.png"))) == 3655
    assert not [p for p in data.iterdir() if p.name.endswith((".staging", ".retired"))]  # nothing left beside it


def test_a_failed_rebuild_keeps_the_old_folder(emoji_seq_small, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(emoji_seq_small / "emoji-seq", data / "emoji-seq")
    before = sorted(p.name for p in (data / "emoji-seq").iterdir())
    code = main(["make-dataset", "emoji-seq", "--force", "--data_path", str(data), f"--emoji_font_file={tmp_path / 'no.ttf'}"])
    _one_line_error(capsys, code, "no.ttf")
    assert sorted(p.name for p in (data / "emoji-seq").iterdir()) == before


# ----------------------------------------------------------------------------- bad input: one line, exit 2
@pytest.fixture
def genlmm_args(gtiny, tmp_path):
    data_path, cache = gtiny
    config = recbole_config(data_path, cache_dir=str(tmp_path / "cache"))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    return ["--model=GenLMM", "--dataset=gtiny", f"--config_files={tmp_path / 'tiny.yaml'}"]


@pytest.mark.parametrize("arg, fragments", [
    ("--num_samples=-1", ["num_samples must be >= 1, got -1"]),
    ("--history_len=abc", ["history_len must be int, got 'abc'"]),
    ("--temperature=-1", ["temperature must be >= 0, got -1"]),
    ("--lr_scheduler=step", ["lr_scheduler must be one of constant, linear, cosine"]),
])
def test_a_wrong_value_stops_before_any_work(genlmm_args, tmp_path, capsys, arg, fragments):
    code = run_recbole_main([*genlmm_args, arg])
    _one_line_error(capsys, code, *fragments)
    assert not (tmp_path / "cache").exists() and not Path("log").exists()  # nothing trained, nothing logged


def test_an_unknown_key_is_warned_with_close_matches(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        Config(model="SASRec", dataset="ml-100k", config_dict={"nosuchkey": 1, "learning_rat": 0.1})
    assert "'nosuchkey' is not a setting" in caplog.text and "did you mean learning_rate" in caplog.text


def test_generate_with_a_ranker_checkpoint_says_it_draws_nothing(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data")
    assert run_recbole_main(["--model=Pop", "--dataset=tiny", f"--data_path={data}", "--load_col=None",
                             "--epochs=1", "--show_progress=False", "--checkpoint_dir=ckpt"]) == 0
    (checkpoint,) = Path("ckpt").glob("Pop-*.pth")
    code = main(["generate", "--model-file", str(checkpoint), "--user", "u1"])
    _one_line_error(capsys, code, "holds a Pop, which ranks items and draws nothing")


def test_an_interaction_file_with_only_a_header_is_named(tmp_path, capsys):
    folder = tmp_path / "data" / "empty"
    folder.mkdir(parents=True)
    (folder / "empty.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    code = run_recbole_main(["--model=SASRec", "--dataset=empty", f"--data_path={tmp_path / 'data'}"])
    _one_line_error(capsys, code, "empty.inter has a header but no interactions")


def test_a_bad_image_is_one_line_at_dataset_creation(tmp_path, capsys):
    folder = write_image_dataset(tmp_path / "data")
    (folder / "images" / "i4.png").write_text("not a png")
    code = run_recbole_main(["--model=SASRec", "--dataset=pics", f"--data_path={folder.parent}", "--metrics=['Hit','TargetSim']",
                             "--load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id']}"])
    _one_line_error(capsys, code, "1 item image problem(s)", "item 'i4' -> images/i4.png")
    assert not Path("saved").exists()  # found before any training


def test_every_recbole_model_is_found_by_name(tmp_path):
    from recbole_gen.utils import get_model, known_model_names

    assert {"Random", "Pop", "SASRec", "LightGCN", "KGAT"} <= set(known_model_names())
    assert get_model("Random").__name__ == "Random"
    data = write_tiny_dataset(tmp_path / "data")
    assert run_recbole_main(["--model=Random", "--dataset=tiny", f"--data_path={data}", "--load_col=None",
                             "--epochs=1", "--show_progress=False"]) == 0
