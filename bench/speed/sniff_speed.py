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
import platform
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from perceiver import inputs  # noqa: E402


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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000, help="non-image files in the folder (default: 100000)")
    p.add_argument("--rounds", type=int, default=3, help="timed searches (default: 3)")
    p.add_argument("--dir", default=None, help="folder to make the files in (default: $TMPDIR/sniff-<files>)")
    args = p.parse_args(argv)
    folder = args.dir or os.path.join(tempfile.gettempdir(), f"sniff-{args.files}")
    t = time.perf_counter()
    make_folder(folder, args.files)
    print(f"folder: {folder} ({args.files:,} files; made or found in {time.perf_counter() - t:.1f} s)")
    times = []
    for _ in range(args.rounds + 1):
        t = time.perf_counter()
        found, ignored = inputs.find_inputs([folder])
        times.append(time.perf_counter() - t)
        assert len(found) == 1 and ignored == {"type": args.files}, (len(found), ignored)
    first, rest = times[0], times[1:]
    median = statistics.median(rest)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print(f"first search: {first:.2f} s; then median {median:.2f} s (range {min(rest):.2f} to {max(rest):.2f} s) over "
          f"{len(rest)} rounds = {args.files / median:,.0f} files/s")


if __name__ == "__main__":
    main()
