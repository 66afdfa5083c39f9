"""Atomic, durable writes: the one temporary-name scheme and the one rename that every writer here uses.

A write goes to a temporary file beside the target (`temporary_name`: `.tmp-<pid>-<token>-<name>`, which keeps the
name's ending, as Keras wants for `.weights.h5` and `.keras`), then `replace(tmp, path)` flushes the temporary file's bytes to
the disk (`fsync`), renames it over the target and flushes the folder, so that after a power loss the target is
either the old file or the whole new one, never an empty "complete" file (a rename can reach the disk before the
data it names). On a file system that cannot fsync a folder (some network mounts), the folder's flush is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import re
import secrets
import shutil

from perceiver.errors import UsageError  # a leaf too: errors imports nothing of the package


def temporary_name(path):
    """A sibling name for writing `path` atomically: `.tmp-<pid>-<8 hex digits>-<name>` (two writers of one path,
    threads or processes, never share it; the name keeps its ending)."""
    path = pathlib.Path(path)
    return path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def is_leftover(name):
    """Whether a file name is a temporary file of an atomic write (`temporary_name`, or `<name>.tmp<pid>` as
    split.csv's writer named them before 2026-12-04) that a killed process left behind, or the writer's lock
    (`only_writer`): never a result, so it never makes a folder "not empty"."""
    return bool(re.match(r"\.tmp-\d+-", name) or re.search(r"\.tmp\d+$", name)) or name == LOCK


@contextlib.contextmanager
def atomic(path):
    """`with atomic(path) as tmp:` write the file (or folder) `tmp`; on leaving the block without an exception it
    replaces `path` durably (`replace`). Whatever happens, no temporary file is left behind (a full disk, a kill
    between the two is the one exception: `is_leftover` tells such a file)."""
    tmp = temporary_name(path)
    try:
        yield tmp
        replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # a write() says what failed, not where: name the file the user asked for
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def ensure_space(path, nbytes):
    """Raises the OSError of a full device (ENOSPC, naming `path`) when the folder of `path` has less than `nbytes`
    free. For writers that cannot fail cleanly: HDF5 (Keras weights), whose write into a full disk ends in a cascade
    of tracebacks and a segmentation fault that leaves its temporary file behind; asking first keeps the failure a
    sentence (`errors.run_command`). A file system that cannot say (statvfs fails) is let through."""
    path = pathlib.Path(path)
    try:
        free = shutil.disk_usage(path.parent if str(path.parent) else ".").free
    except OSError:
        return
    if free < nbytes:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {nbytes / 2**20:,.2f} MiB needed, "
                                    f"{free / 2**20:,.2f} MiB free", str(path))


def json_text(obj, *, indent=2):
    """`obj` as strict JSON text, the one JSON writer of the project (run files, results, cache indexes, summaries).

    NaN and infinity are refused (`allow_nan=False`): they are not JSON, and a strict reader (a browser, `jq`,
    Go's and Rust's parsers) rejects the whole file. A figure that is undefined is written as null by its producer,
    beside the reason (`metrics`' `*_undefined` fields, for instance).

    Raises:
        ValueError: for a non-finite float anywhere in `obj`.
    """
    return json.dumps(obj, indent=indent, allow_nan=False) + "\n"


def atomic_write_bytes(path, data):
    """Writes `data` (bytes) to `path` atomically and durably."""
    with atomic(path) as tmp:
        tmp.write_bytes(data)


def replace(tmp, path):
    """Renames the written file `tmp` over `path` durably (see the module docstring). `tmp` may be a folder (a
    TensorFlow SavedModel): each of its files and folders is flushed first."""
    if os.path.isdir(tmp):
        for root, _, files in os.walk(tmp):
            for name in files:
                _sync_file(os.path.join(root, name))
            sync_folder(root)
    else:
        _sync_file(tmp)
    os.replace(tmp, path)
    sync_folder(os.path.dirname(os.path.abspath(path)))


def _sync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def sync_folder(folder):
    """Flushes a folder's entries (a rename, a new file) to the disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL: this file system does not fsync folders
        pass
    finally:
        os.close(fd)


LOCK = ".lock"  # in a run folder: held (flock) by the one command writing there
_HELD = set()  # the folders this process holds

@contextlib.contextmanager
def only_writer(folder, *, command, create=True):
    """Makes this process the one writer of `folder` while the block runs: an exclusive `flock` on `folder/.lock`,
    which the operating system releases when the process ends, however it ends (a kill -9 leaves no stale lock).

    A second command that wants to write the same folder (two trainings into one --out, a refit during training)
    is refused at once, in one sentence, before it writes anything. The folder is created if needed; if it was
    created here and holds nothing but the lock when the block ends, it is removed again.

    Args:
        folder: str | Path. The folder (a run folder).
        command: str. What the user ran, for the message of the second one (e.g. "train.py").
        create: bool. Create a missing folder (train.py); else a missing folder is left to the command's own
            checks, which name it, and nothing is locked. Defaults to True.

    Raises:
        errors.UsageError: when another process holds the lock, or the folder cannot be created.
    """
    folder = pathlib.Path(folder)
    key = os.path.realpath(folder)
    if key in _HELD or (not create and not folder.is_dir()):  # held here already (a refit writes the report
        yield folder                                              # inside its own lock), or nothing to lock
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsageError(f"cannot write in {folder} ({e.strerror or e}); pass another folder.") from None
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(folder / LOCK).st_ino:  # its holder removed it as we opened it
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            raise UsageError(f"another command ({holder}) is writing {folder}; wait for it to finish, or give "
                             f"{command} another folder.") from None
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        _HELD.add(key)
        yield folder
    finally:
        if held:
            _HELD.discard(key)
            (folder / LOCK).unlink(missing_ok=True)  # while still held: the folder keeps no trace of the writer
        os.close(fd)  # releases the lock
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # made here and empty: a run that wrote nothing leaves nothing
