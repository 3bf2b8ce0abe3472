"""Once-per-catalogue training results (the tiny image tokenizer, the catalogue pre-training), cached on disk.

Each artifact is ``<folder>/<prefix>-<key>.pt`` (a state dict) plus ``<prefix>-<key>.json`` (how and when it
was built); the key hashes the settings that define it and the catalogue's pixels, so a changed setting or
catalogue builds a new one and an unchanged one is reused by every later run. Both files are written
atomically: an interrupted build leaves nothing that a later run could mistake for a finished one.
"""
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from recbole_gen.files import atomic_write, atomic_write_bytes

logger = logging.getLogger(__name__)


def catalogue_hash(pixels):
    array = np.ascontiguousarray((pixels.float().numpy() * 255).round().astype(np.uint8))
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


def cache_key(settings, pixels):
    blob = json.dumps(settings, sort_keys=True, default=str) + catalogue_hash(pixels)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def progress(done, total, start):
    """``"done/total, 12s elapsed, ETA 1m05s"`` for the log lines of a long build."""
    elapsed = time.time() - start
    left = elapsed / max(done, 1) * (total - done)
    return f"{done}/{total}, {elapsed:.0f}s elapsed, ETA {int(left // 60)}m{int(left % 60):02d}s"


def load_or_build(folder, prefix, key, build, what):
    """``(state_dict, info)`` of artifact ``key`` from ``folder``, or ``build() -> (state_dict, info)`` now and
    cached. ``info`` gains ``key`` and ``build_seconds``; ``what`` names the artifact in the log."""
    folder = Path(folder)
    weights, meta = folder / f"{prefix}-{key}.pt", folder / f"{prefix}-{key}.json"
    if weights.is_file() and meta.is_file():
        return torch.load(weights, map_location="cpu", weights_only=True), json.loads(meta.read_text())
    logger.info(f"building {what} (cached as {weights})")
    start = time.time()
    state, info = build()
    info = {"key": key, **info, "build_seconds": round(time.time() - start, 1)}
    state = {k: v.detach().cpu() for k, v in state.items()}
    atomic_write(weights, lambda f: torch.save(state, f))
    atomic_write_bytes(meta, json.dumps(info, indent=1, default=str).encode())
    return state, info
