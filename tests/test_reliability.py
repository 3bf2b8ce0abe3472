"""Nothing executes, escapes or is lost: checkpoints cannot run code, image paths stay inside the dataset folder,
a rebuild never destroys a dataset its readers use, and every bad input ends with one line and exit status 2."""
import fcntl
import json
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from recbole_gen.checkpoint import CheckpointError, export_checkpoint, load_checkpoint
from recbole_gen.cli import main, run_recbole_main
from recbole_gen.config import Config, ConfigError
from recbole_gen.data import ItemImageError, create_dataset
from recbole_gen.data.builtin import BUILDERS, build_dataset
from recbole_gen.quick_start import load_data_and_model, run_recbole
from recbole_gen.utils import LogFile
from test_data_images import write_image_dataset
from test_genlmm_support import emoji64, gtiny, recbole_config  # noqa: F401
from tiny_data import write_tiny_dataset, write_tiny_knowledge

TINY_SASREC = {"epochs": 1, "hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 1, "show_progress": False,
               "load_col": None, "MAX_ITEM_LIST_LENGTH": 10}


class Payload:
    """Unpickling this runs a shell command (what a hostile checkpoint would carry)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def sasrec_run(tmp_path_factory):
    """One tiny SASRec run, shared by the tests that only read it: ``(data_path, checkpoint, exported folder)``."""
    root = tmp_path_factory.mktemp("sasrec")
    data = write_tiny_dataset(root / "data")
    result = run_recbole("SASRec", "tiny", config_dict={**TINY_SASREC, "data_path": str(data), "log_dir": str(root / "log"),
                                                        "checkpoint_dir": str(root / "saved")})
    return data, Path(result["model_file"]), export_checkpoint(result["model_file"], root / "exported")


def _tiny_args(data, *args):
    return ["--model=SASRec", "--dataset=tiny", f"--data_path={data}", "--load_col=None", "--epochs=1",
            "--show_progress=False", "--hidden_size=8", "--inner_size=16", "--n_layers=1", "--n_heads=1", *args]


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


def test_recbole_checkpoints_store_plain_data_and_export_to_safetensors(sasrec_run):
    data, model_file, folder = sasrec_run
    checkpoint = torch.load(model_file, weights_only=True)  # plain data: torch's safe loader reads it
    assert isinstance(checkpoint["config"], dict) and checkpoint["config"]["model"] == "SASRec"
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "recbole_gen.json"}
    config, model, *_ = load_data_and_model(folder, config_dict={"data_path": str(data)})
    reloaded = load_checkpoint(model_file)["state_dict"]
    assert config["model"] == "SASRec" and all(torch.equal(model.state_dict()[k], v) for k, v in reloaded.items())


@pytest.mark.parametrize("model", ["ItemKNN", "SASRecF"])
def test_models_with_arrays_matrices_or_modules_beside_their_weights_save_safely(tmp_path, model):
    """ItemKNN keeps scipy sparse matrices in other_parameter, SASRecF a submodule: both save, reload weights-only
    and test (the main job's ItemKNN row stopped on its own checkpoint before this)."""
    data = write_tiny_dataset(tmp_path / "data")
    options = {"ItemKNN": {}, "SASRecF": {"hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 1,
                                          "selected_features": ["tags"], "MAX_ITEM_LIST_LENGTH": 10}}[model]
    result = run_recbole(model, "tiny", config_dict={"data_path": str(data), "epochs": 1, "show_progress": False,
                                                     "load_col": None, **options})
    assert "ndcg@10" in result["test_result"]
    torch.load(result["model_file"], weights_only=True)  # nothing pickled
    _, reloaded, *_ = load_data_and_model(result["model_file"], checkpoint_paths=True)
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


def _edited(folder, tmp_path, file, edit):
    """A copy of exported checkpoint ``folder`` with ``file`` replaced by ``edit(its text)``."""
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    (copy / file).write_bytes(edit((copy / file).read_bytes()))
    return copy


def _config_edit(**values):
    return lambda data: json.dumps({**json.loads(data), **values}).encode()


@pytest.mark.parametrize("file, edit, fragment", [
    ("recbole_gen.json", lambda data: b"{oops", "recbole_gen.json cannot be read as JSON"),
    ("recbole_gen.json", lambda data: b"[1]", "recbole_gen.json holds a list, not a JSON object"),
    ("config.json", lambda data: b"{oops", "config.json cannot be read as JSON"),
    ("config.json", lambda data: b"[1, 2]", "config.json holds a list, not a JSON object"),
    ("model.safetensors", lambda data: data[:len(data) // 2], "is incomplete or truncated"),
    ("config.json", _config_edit(model="GRU4Rec"), "does not fit the GRU4Rec it names"),
    ("config.json", _config_edit(model="NoSuchModel"), "Unknown model 'NoSuchModel'"),
    ("config.json", _config_edit(dataset="../../elsewhere"), "names the dataset '../../elsewhere', which is not a folder"),
])
def test_a_malformed_exported_checkpoint_is_one_line_naming_it(sasrec_run, tmp_path, capsys, file, edit, fragment):
    data, _, exported = sasrec_run
    folder = _edited(exported, tmp_path, file, edit)
    code = main(["generate", "--model-file", str(folder), "--user", "u1", f"--data_path={data}"])
    _one_line_error(capsys, code, str(folder), fragment)


@pytest.mark.parametrize("change, fragment", [
    ({"config": {}}, "holds no usable config"),
    ({"config": "SASRec"}, "holds no usable config"),
    ({"state_dict": {}}, "does not fit the SASRec it names on dataset 'tiny'"),
])
def test_a_malformed_checkpoint_file_is_one_line_naming_it(sasrec_run, tmp_path, capsys, change, fragment):
    data, model_file, _ = sasrec_run
    torch.save({**load_checkpoint(model_file), **change}, tmp_path / "odd.pth")
    code = main(["generate", "--model-file", str(tmp_path / "odd.pth"), "--user", "u1", f"--data_path={data}"])
    _one_line_error(capsys, code, "odd.pth", fragment)


def test_a_checkpoint_does_not_choose_where_files_are_written(sasrec_run, tmp_path, capsys):
    """A shared checkpoint whose config names folders elsewhere writes nothing there: data, logs, caches and
    checkpoints go where the user's command line (or the defaults, in the working folder) say."""
    data, _, exported = sasrec_run
    outside = tmp_path / "outside"
    paths = {"data_path": str(outside / "data" / "tiny"), "log_dir": str(outside / "log"),
             "cache_dir": str(outside / "cache"), "checkpoint_dir": str(outside / "saved")}
    folder = _edited(exported, tmp_path, "config.json", _config_edit(**paths))
    config, *_ = load_data_and_model(folder, config_dict={"data_path": str(data)})
    assert (config["log_dir"], config["cache_dir"], config["checkpoint_dir"]) == ("log", None, "saved")
    code = main(["generate", "--model-file", str(folder), "--user", "u1"])  # the default data_path holds no 'tiny'
    _one_line_error(capsys, code, str(tmp_path / "dataset" / "tiny"))
    assert not outside.exists()
    built_in = _edited(folder, tmp_path / "b", "config.json", _config_edit(dataset="emoji-seq",
                                                                             data_path=str(outside / "emoji-seq")))
    code = main(["generate", "--model-file", str(built_in), "--user", "u1", "--checkpoint-paths"])
    _one_line_error(capsys, code, "a built-in dataset is not built where a checkpoint says")
    assert not (outside / "emoji-seq").exists()  # (its logs went where the checkpoint says: the user asked)


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
    ("--learning_rate=nan", ["learning_rate must be a finite number > 0, got nan"]),
    ("--learning_rate=inf", ["learning_rate must be a finite number > 0, got inf"]),
    ("--train_batch_size=0", ["train_batch_size must be >= 1, got 0"]),
    ("--epochs=-3", ["epochs must be >= 0 (0: evaluate the model as it starts", "got -3"]),
    ("--seed=abc", ["seed must be int, got 'abc'"]),
    ("--topk=[0]", ["topk must be a positive integer"]),
    ("--valid_metric=MRR@10", ["valid_metric must be one of the metrics computed (Hit, NDCG, at topk 10)"]),
    ("--eval_encoder=nosuch", ["eval_encoder must be one of", "got 'nosuch'"]),
    ("--image_size=0", ["image_size must be >= 1, got 0"]),
    ("--image_max_pixels=0", ["image_max_pixels must be >= 1, got 0"]),
    ("--lmm_image_size=15", ["lmm_image_size must be vq_grid (4) times a power of two, got 15"]),
    ("--lmm_path=/etc", ["lmm_path must be ~ or a folder holding a Hugging Face-format Janus checkpoint"]),
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
    code = main(["generate", "--model-file", str(checkpoint), "--user", "u1", f"--data_path={data}"])
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
                             "--valid_metric=Hit@10",
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


def test_an_invalid_config_file_names_the_file_and_line(genlmm_args, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("epochs: 1\ntopk: [10\n")
    code = run_recbole_main([*genlmm_args, f"--config_files={tmp_path / 'bad.yaml'}"])
    _one_line_error(capsys, code, "bad.yaml, line 3, column 1: not valid YAML")


@pytest.mark.parametrize("file, text, fragments", [
    ("tiny.inter", "", ["tiny.inter is empty (0 bytes)"]),
    ("tiny.item", "", ["tiny.item is empty (0 bytes)"]),
    ("tiny.inter", "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t10\nu1\ti2\tyesterday\n",
     ["tiny.inter, line 3: timestamp 'yesterday' is not a number"]),
    ("tiny.inter", "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t10\nu1\ti2\t\n",
     ["tiny.inter, line 3: no timestamp"]),
    ("tiny.inter", "\ufeffuser_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t10\n",
     ["tiny.inter starts with a UTF-8 byte-order mark (BOM)", "encoding: utf-8-sig"]),
    ("tiny.item", "\ufeffitem_id:token\nu1\n", ["tiny.item starts with a UTF-8 byte-order mark (BOM)"]),
    ("tiny.item", "item_id\ttitle:text\ni1\ta\n", ["tiny.item, line 1: the field 'item_id' is not written name:type"]),
])
def test_a_malformed_atomic_file_is_one_line_naming_file_and_line(tmp_path, capsys, file, text, fragments):
    data = write_tiny_dataset(tmp_path / "data")
    (data / "tiny" / file).write_text(text, encoding="utf-8")
    code = run_recbole_main(_tiny_args(data))
    _one_line_error(capsys, code, *fragments)
    assert not Path("saved").exists()


def test_duplicate_rows_are_a_warning_and_a_bom_file_reads_as_utf8_sig(tmp_path, caplog):
    from recbole_gen.data.atomic_files import check_atomic_files

    data = write_tiny_dataset(tmp_path / "data")
    lines = (data / "tiny" / "tiny.inter").read_text().splitlines()
    (data / "tiny" / "tiny.inter").write_text("\ufeff" + "\n".join([*lines[:4], lines[2], *lines[4:]]) + "\n")
    with caplog.at_level(logging.WARNING):
        check_atomic_files(Config(model="SASRec", dataset="tiny", config_dict={"data_path": str(data), "load_col": None,
                                                                               "encoding": "utf-8-sig"}))
    assert "1 row(s) repeat an earlier row exactly (first at line 5)" in caplog.text


def test_a_topk_larger_than_the_catalogue_stops_before_training(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data")  # 30 items
    code = run_recbole_main(_tiny_args(data, "--topk=[10,50]"))
    _one_line_error(capsys, code, "topk asks for 50 items, but dataset 'tiny' has 30")
    assert not Path("saved").exists()


def _fill_disk(monkeypatch, folder):
    """Every atomic write into ``folder`` fails as on a full disk: its temporary file is /dev/full."""
    make = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, path = make(*args, **kwargs)
        if Path(path).resolve().is_relative_to(folder.resolve()):
            full = os.open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("where", ["checkpoint_dir", "log_dir"])
def test_a_full_disk_is_one_line_naming_the_folder(tmp_path, capsys, monkeypatch, where):
    """torch's serializer failure (a checkpoint) and a log record that cannot be written both stop the run with one
    line; nothing half-written is left."""
    data, full = write_tiny_dataset(tmp_path / "data"), tmp_path / "full"
    if where == "checkpoint_dir":
        _fill_disk(monkeypatch, full)
    else:
        monkeypatch.setattr(LogFile, "_open", lambda self: open("/dev/full", "a"))
    code = run_recbole_main(_tiny_args(data, f"--{where}={full}"))
    logging.getLogger().handlers = [h for h in logging.getLogger().handlers if not isinstance(h, LogFile)]  # /dev/full
    _one_line_error(capsys, code, f"cannot write to {full}", "no space left on its disk")
    assert not [p for p in full.rglob("*") if p.is_file()]


def test_image_dir_outside_the_dataset_folder_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    folder = write_image_dataset(tmp_path / "data", image_column=False)
    shutil.move(folder / "images", tmp_path / "outside")
    config = Config(model="SASRec", dataset="pics", config_dict={"data_path": str(folder.parent), "load_col": None,
                                                                 "image_dir": str(tmp_path / "outside")})
    listed = []
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: listed.append(self) or iter(()))
    with pytest.raises(ItemImageError, match="image_dir '.*outside' is outside the dataset folder"):
        create_dataset(config, images=True)
    assert not listed


def test_generate_checks_its_arguments_before_loading_anything(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    code = main(["generate", "--model-file", "missing.pth", "--user", "u1", "--out", str(tmp_path / "notes.txt")])
    _one_line_error(capsys, code, "--out", "notes.txt' is a file")
    code = main(["generate", "--model-file", "missing.pth", "--user", "u1", "--num-samples", "0"])
    _one_line_error(capsys, code, "--num-samples must be >= 1, got 0")
    code = main(["recommend", "--model-file", "missing.pth", "--user", "u1", "--k", "0"])
    _one_line_error(capsys, code, "--k and --num-samples must be >= 1, got 0")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "locked").mkdir(mode=0o555)
        code = main(["generate", "--model-file", "missing.pth", "--user", "u1", "--out", str(tmp_path / "locked" / "g")])
        _one_line_error(capsys, code, "is not writable by you")


def test_a_busy_port_under_nproc_is_one_line(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = run_recbole_main(_tiny_args(data, "--nproc=2", "--ip=127.0.0.1", f"--port={port}"))
    _one_line_error(capsys, code, f"cannot listen on 127.0.0.1:{port}", "--port=")


def test_an_image_with_too_many_pixels_is_refused_before_decoding(tmp_path, capsys):
    folder = write_image_dataset(tmp_path / "data")
    Image.new("1", (300, 300)).save(folder / "images" / "i4.png")
    code = run_recbole_main(["--model=SASRec", "--dataset=pics", f"--data_path={folder.parent}", "--image_max_pixels=50000",
                             "--metrics=['Hit','TargetSim']", "--valid_metric=Hit@10",
                             "--load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id']}"])
    _one_line_error(capsys, code, "too large (1): item 'i4' -> images/i4.png (300 x 300 pixels, more than "
                                  "image_max_pixels (50,000))")


def test_an_image_of_any_single_colour_is_warned_about(tmp_path, caplog):
    folder = write_image_dataset(tmp_path / "data")  # every item a single colour of its own
    Image.new("RGB", (16, 16), (255, 0, 0)).save(folder / "images" / "i2.png")
    pixels = np.full((16, 16, 3), 200, dtype=np.uint8)
    pixels[3, 5] = (10, 20, 30)
    for i in range(3, 13):
        Image.fromarray(pixels).save(folder / "images" / f"i{i}.png")
    with caplog.at_level(logging.WARNING):
        create_dataset(Config(model="SASRec", dataset="pics", config_dict={"data_path": str(folder.parent),
                                                                          "load_col": None}), images=True)
    assert "2 item image(s) are a single flat colour (check them): i1, i2" in caplog.text


def test_ctrl_c_is_one_line_with_exit_status_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("recbole_gen.quick_start.run", interrupted)
    code = run_recbole_main(_tiny_args(write_tiny_dataset(tmp_path / "data")))
    err = capsys.readouterr().err.strip()
    assert code == 130 and err.splitlines() == [err] and "interrupted" in err and "complete" in err, err


def test_a_killed_builds_leftovers_are_removed_by_the_next_build(tmp_path):
    """A staging folder whose build died (its lock is free) and a retired old folder go; a staging folder that a
    live build holds stays."""
    BUILDERS["leftovers-test"] = lambda folder, config: (folder / "built").write_text("yes")
    try:
        dead, retired, live = (tmp_path / name for name in (".d-123.staging", ".d-99.retired", ".d-456.staging"))
        for leftover in (dead, retired, live):
            leftover.mkdir()
        held = os.open(live, os.O_RDONLY)
        fcntl.flock(held, fcntl.LOCK_EX)
        build_dataset("leftovers-test", tmp_path / "d", config=None)
        os.close(held)
    finally:
        BUILDERS.pop("leftovers-test")
    assert (tmp_path / "d" / "built").is_file() and not dead.exists() and not retired.exists() and live.exists()


@pytest.mark.parametrize("line, key", [
    ("allow_external_images: True", "allow_external_images"),
    ("cache_dir: /tmp/elsewhere", "cache_dir"),
    ("image_dir: ../../outside", "image_dir"),
    ("checkpoint_dir: /tmp/saved", "checkpoint_dir"),
])
def test_a_dataset_folders_own_yaml_may_not_lift_a_safeguard(tmp_path, line, key):
    data = write_tiny_dataset(tmp_path / "data")
    (data / "tiny" / "tiny.yaml").write_text(f"load_col: ~\n{line}\n")
    with pytest.raises(ConfigError, match=f"tiny.yaml sets '{key}': a dataset folder's yaml describes its data"):
        Config(model="SASRec", dataset="tiny", config_dict={"data_path": str(data)})
    (data / "tiny" / "tiny.yaml").write_text("load_col: ~\nimage_dir: pictures\n")
    config = Config(model="SASRec", dataset="tiny", config_dict={"data_path": str(data), "image_dir": "mine"})
    assert config["load_col"] is None and config["image_dir"] == "mine"  # the folder's, under the user's


@pytest.mark.parametrize("model, package", [("LightGBM", "lightgbm"), ("KGAT", "dgl")])
def test_a_missing_optional_package_is_one_line_naming_it(tmp_path, capsys, monkeypatch, model, package):
    """LightGBM's package is imported when the model is looked up, KGAT's dgl only when the model is built."""
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    for name in [n for n in sys.modules if n.startswith("recbole.model.exlib_recommender")]:
        monkeypatch.delitem(sys.modules, name)
    data = write_tiny_knowledge(write_tiny_dataset(tmp_path / "data"))
    code = run_recbole_main([f"--model={model}", "--dataset=tiny", f"--data_path={data}", "--load_col=None"])
    _one_line_error(capsys, code, f"the package '{package}' is not installed, and RecBole's {model}")
