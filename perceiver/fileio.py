"""Atomic, durable writes: the one temporary-name scheme and the one rename that every writer here uses.

A write goes to a temporary file beside the target (`temporary_name`: `.tmp-<pid>-<token>-<name>`, which keeps the
name's ending, as Keras wants for `.weights.h5` and `.keras`), then `replace(tmp, path)` flushes the temporary file's bytes to
the disk (`fsync`), renames it over the target and flushes the folder, so that after a power loss the target is
either the old file or the whole new one, never an empty "complete" file (a rename can reach the disk before the
data it names). On a file system that cannot fsync a folder (some network mounts), the folder's flush is skipped.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
import shutil


def temporary_name(path):
    """A sibling name for writing `path` atomically: `.tmp-<pid>-<8 hex digits>-<name>` (two writers of one path,
    threads or processes, never share it; the name keeps its ending)."""
    path = pathlib.Path(path)
    return path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def is_leftover(name):
    """Whether a file name is a temporary file of an atomic write (`temporary_name`, or `<name>.tmp<pid>` as
    split.csv's writer named them before 2026-12-04) that a killed process left behind: never a result."""
    return bool(re.match(r"\.tmp-\d+-", name) or re.search(r"\.tmp\d+$", name))


@contextlib.contextmanager
def atomic(path):
    """`with atomic(path) as tmp:` write the file (or folder) `tmp`; on leaving the block without an exception it
    replaces `path` durably (`replace`). Whatever happens, no temporary file is left behind (a full disk, a kill
    between the two is the one exception: `is_leftover` tells such a file)."""
    tmp = temporary_name(path)
    try:
        yield tmp
        replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


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
