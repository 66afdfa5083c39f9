"""Benchmark: how long driver.py takes to find its inputs in a folder of many files that are not images, now that
DICOM is found by content (inputs.input_kind reads 132 bytes of every file whose extension is not a known type).

    python bench/speed/sniff_speed.py                     # 100,000 files of 1 KiB in $TMPDIR (made once), 3 rounds
    python bench/speed/sniff_speed.py --files 20000 --rounds 5

The folder holds the given number of files with names a report or export folder might have (`notes_17.txt`,
`17.json`, `IM17`, `17.bin`: half with an extension that is not an image, half without one), of random bytes, plus
one PNG, so that `inputs.find_inputs` has one input to return. Reported: files per second of the search (walk, stat,
sniff), median and range over the rounds; the first round reads from a cold page cache only if the folder was just
written by another process, so it is reported apart.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile

import numpy as np
from PIL import Image

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver import inputs  # noqa: E402
from perceiver.errors import start_command  # noqa: E402


def make_folder(folder, count):
    """Writes `count` non-image files and one PNG into `folder`, unless a previous call already did."""
    marker = os.path.join(folder, ".complete")
    if os.path.exists(marker):
        return
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    names = ("notes_{}.txt", "{}.json", "IM{}", "{}.bin")
    for k in range(count):
        with open(os.path.join(folder, names[k % 4].format(k)), "wb") as f:
            f.write(rng.integers(0, 256, 1024, dtype=np.uint8).tobytes())
    Image.fromarray(np.zeros((64, 64), np.uint8) + 128).save(os.path.join(folder, "knee.png"))
    open(marker, "w").close()


def main(argv=None):
    start_command(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000, help="non-image files in the folder (default: 100000)")
    p.add_argument("--rounds", type=int, default=3, help="timed searches (default: 3)")
    p.add_argument("--dir", default=None, help="folder to make the files in (default: $TMPDIR/sniff-<files>)")
    args = p.parse_args(argv)
    folder = args.dir or os.path.join(tempfile.gettempdir(), f"sniff-{args.files}")
    _, seconds = common.timed(lambda: make_folder(folder, args.files))
    print(f"folder: {folder} ({args.files:,} files; made or found in {seconds:.1f} s)")

    def search():
        found, ignored = inputs.find_inputs([folder])
        assert len(found) == 1 and ignored == {"type": args.files}, (len(found), ignored)

    first = []  # the first search reads a cold page cache when the folder was written by another process
    rest = common.time_steps(search, 1, args.rounds, first)
    print(f"CPU: {common.cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print(f"first search: {first[0]:.2f} s; then median {rest.median:.2f} s (range {rest.fastest:.2f} to "
          f"{rest.slowest:.2f} s) over {len(rest)} rounds = {args.files / rest.median:,.0f} files/s")

if __name__ == "__main__":
    main()
