"""Shared test setup: offline, pinned threads, and every test in its own working directory
(RecBole writes log/, log_tensorboard/ and saved/ relative to the current directory)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

import recbole_gen  # noqa: F401  (compat patches before any RecBole import in tests)

torch.set_num_threads(int(os.environ.get("RECBOLE_GEN_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def emoji_seq_small(tmp_path_factory):
    """The built-in emoji-seq with every item but only 300 simulated users, built once per
    session (about 15 s on 2 cores); returns its data_path (the folder holding ``emoji-seq/``)."""
    from recbole_gen.config import Config
    from recbole_gen.data import build_dataset

    parent = tmp_path_factory.mktemp("emoji-data")
    config = Config(model="Pop", dataset="emoji-seq", config_dict={"data_path": str(parent),
                                                                   "emoji_seq_users": EMOJI_SEQ_SMALL_USERS})
    build_dataset("emoji-seq", parent / "emoji-seq", config)
    return parent


EMOJI_SEQ_SMALL_USERS = 300
