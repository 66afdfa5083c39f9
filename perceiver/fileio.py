"""Durable atomic replacement of a file: what every writer here calls instead of a bare `os.replace`.

A write goes to a temporary file beside the target, then `replace(tmp, path)` flushes the temporary file's bytes to
the disk (`fsync`), renames it over the target and flushes the folder, so that after a power loss the target is
either the old file or the whole new one, never an empty "complete" file (a rename can reach the disk before the
data it names). On a file system that cannot fsync a folder (some network mounts), the folder's flush is skipped.
"""

from __future__ import annotations

import os


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
