"""Files that are never seen half-written, and folders that readers and rebuilders share safely.

Every cache, checkpoint, result and generated image is written to a temporary name in its folder and
renamed into place; a folder (a dataset, an import) is built beside its final place and swapped in under
an exclusive lock, while readers hold a shared one; cache and artifact files are named by one stable
digest of the settings that define them.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def digest(settings, size=16):
    """A stable hex digest of JSON-serialisable ``settings`` (key order does not matter): names caches."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=size // 2).hexdigest()


def atomic_write(path, write):
    """Create ``path`` (and its folder) from ``write(binary_file)``, atomically, with ordinary (umask)
    permissions rather than mkstemp's 0600; the temporary file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path, data):
    return atomic_write(path, lambda f: f.write(data))


def lock_file(folder):
    """The lock file of ``folder``: beside it, so that it survives the folder being swapped."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def folder_lock(folder, shared=True):
    """Hold ``folder``'s lock: shared for readers and cache writers, exclusive for a rebuild's swap.

    An advisory ``flock`` on :func:`lock_file`; released when the block ends or the process dies. A folder
    in a place this user cannot write (a read-only install) cannot be rebuilt either: no lock is needed."""
    path = lock_file(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except PermissionError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def staged_folder(folder, keep=()):
    """Build a new ``folder`` beside it and swap it in: ``with staged_folder(out) as staging: write(staging)``.

    The swap happens under the exclusive lock and only when the block succeeds; a failure leaves the old
    folder as it was (or no folder) and removes the staging copy. Entries named in ``keep`` (e.g. a cache)
    move from the old folder into the new one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", suffix=".staging", dir=folder.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it 0700
        with folder_lock(folder, shared=False):
            if folder.exists():
                for name in keep:
                    if (folder / name).exists() and not (staging / name).exists():
                        os.replace(folder / name, staging / name)
                retired = folder.with_name(f".{folder.name}-{os.getpid()}.retired")
                os.replace(folder, retired)
                os.replace(staging, folder)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
