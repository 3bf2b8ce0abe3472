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
