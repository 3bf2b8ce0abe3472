"""Files that are never seen half-written, and folders that readers and rebuilders share safely.

Every cache, checkpoint, result and generated image is written to a temporary name in its folder and
renamed into place; a folder (a dataset, an import) is built beside its final place and swapped in under
an exclusive lock, while readers hold a shared one; cache and artifact files are named by one stable
digest of the settings that define them.

A write that fails because the disk is full or the folder is not writable raises :class:`StorageError`: one line
naming the folder, what the file needed and what to do (a traceback from inside torch's serializer would hide the
reason, "No space left on device", three exceptions deep).
"""
import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class StorageError(OSError):
    """A file or folder could not be written: the disk is full or the place is not writable. The message names the
    folder and what to do; ``errno`` is the disk's."""

    def __str__(self):
        return self.strerror  # the message alone, without OSError's "[Errno 28]"


def _os_error(error):
    """The disk's own error behind ``error``: itself, or an ``OSError`` it was raised while handling (torch's
    serializer reports a failed write as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__context__
    return error


def _size_text(size):
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1000


@contextlib.contextmanager
def storage_errors(folder, size=None):
    """Raise a write under ``folder`` that fails for want of space or permission as one :class:`StorageError`
    (``size``: the bytes the write needed, when known); any other error passes unchanged."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, RuntimeError) as error:
        cause = _os_error(error)
        if cause is None or cause.errno not in NO_SPACE + NOT_WRITABLE:
            raise
        folder = Path(folder)
        if cause.errno in NO_SPACE:
            existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
            needed = f", the file needs about {_size_text(size)}" if size else ""
            raise StorageError(cause.errno, f"cannot write to {folder}: no space left on its disk "
                                            f"({_size_text(shutil.disk_usage(existing).free)} free{needed}); free "
                                            f"some space or point the run at another folder") from None
        raise StorageError(cause.errno, f"cannot write to {folder}: {cause.strerror.lower()}; choose a folder you "
                                        f"can write to") from None


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def digest(settings, size=16):
    """A stable hex digest of JSON-serialisable ``settings`` (key order does not matter): names caches."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=size // 2).hexdigest()


def atomic_write(path, write, size=None):
    """Create ``path`` (and its folder) from ``write(binary_file)``, atomically, with ordinary (umask)
    permissions rather than mkstemp's 0600; the temporary file is removed if ``write`` fails, and a full disk or
    an unwritable folder is a :class:`StorageError` (``size``: the bytes the file needs, if known, for its message)."""
    path = Path(path)
    with storage_errors(path.parent, size):
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


def array_bytes(value):
    """The bytes of the arrays (tensors, numpy arrays) in nested dicts and lists: about what saving them needs."""
    if isinstance(value, dict):
        return sum(array_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(array_bytes(v) for v in value)
    return getattr(value, "nbytes", 0) if hasattr(value, "shape") else 0


def atomic_write_bytes(path, data):
    return atomic_write(path, lambda f: f.write(data), size=len(data))


def lock_file(folder):
    """The lock file of ``folder``: beside it, so that it survives the folder being swapped."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def folder_lock(folder, shared=True):
    """Hold ``folder``'s lock: shared for readers and cache writers, exclusive for a rebuild's swap.

    An advisory ``flock`` on :func:`lock_file`; released when the block ends or the process dies. A folder
    in a place this user cannot write (a read-only install) cannot be rebuilt either, and a reader of a folder
    whose parent does not exist has nothing to read: no lock is needed (and no folder is created for it)."""
    path = lock_file(folder)
    try:
        if not shared:
            path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError:  # not writable (a read-only install), or no folder to read
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
    move from the old folder into the new one. The build holds a lock on its staging folder while it lives, so
    the swap can tell a killed build's leftovers (removed then) from a concurrent build's work in progress."""
    folder = Path(folder)
    with storage_errors(folder.parent):
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", suffix=".staging", dir=folder.parent))
        alive = os.open(staging, os.O_RDONLY)
        fcntl.flock(alive, fcntl.LOCK_EX)
        try:
            yield staging
            os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it 0700
            with folder_lock(folder, shared=False):
                _remove_leftovers(folder, staging)
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
            os.close(alive)
            shutil.rmtree(staging, ignore_errors=True)


def _remove_leftovers(folder, staging):
    """Remove what killed builds of ``folder`` left beside it (called under its exclusive lock): retired old folders,
    and staging folders whose build no longer holds their lock."""
    for path in folder.parent.glob(f".{glob.escape(folder.name)}-*"):
        if path == staging or not path.is_dir():
            continue
        if path.name.endswith(".retired"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.endswith(".staging"):
            try:
                handle = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(path, ignore_errors=True)
            except BlockingIOError:
                pass  # a build in progress
            finally:
                os.close(handle)
