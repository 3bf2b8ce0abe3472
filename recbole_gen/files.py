"""Atomic file writes: every cache, checkpoint, result and generated image is written to a temporary
name in its folder and renamed into place, so a crash never leaves half a file behind."""
import os
import tempfile
from pathlib import Path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Create ``path`` (and its folder) from ``write(binary_file)``, atomically, with ordinary (umask)
    permissions rather than mkstemp's 0600; the temporary file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path, data):
    return atomic_write(path, lambda f: f.write(data))
