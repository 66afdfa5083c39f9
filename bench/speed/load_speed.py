"""Benchmark: decode an AKOA-sized folder (about 18,680 slices of 228 x 260) to 64 x 64, then load it from the cache.

    python bench/speed/load_speed.py                     # data in $TMPDIR/akoa-bench-* (made once), fresh cache
    python bench/speed/load_speed.py --generator builtin --mode RGB   # 3-channel PNGs, the slower case
    python bench/speed/load_speed.py --data DIR          # time your own folder
    python bench/speed/load_speed.py --workers 1         # single process, for comparison
    python bench/speed/load_speed.py --json results.json

The data comes from `phantom.py OUT --patients 330` when phantom.py is in the repository, else from a small
built-in generator (numpy + Pillow, 467 scans x 40 slices with AKOA file names and side balance, MRI-like noise;
3 equal channels by default, the slower case). The first load uses an empty cache folder; the OS page cache is
warm either way (files were just written or read), so this measures decoding, not the disk. Targets on the 2-core
dev machine: first load <= 30 s, cached load <= 2 s.

Measured on the 2-core dev machine while other jobs ran (load average about 3):

    images 18,480 (228 x 260 L -> 64 x 64 x 3), 2 workers, 2 CPUs, load average 2.8, data: phantom.py --patients 330
    step            seconds   images/s
    discover           0.41
    first load        16.59      1,114   (target <= 30 s)
    cached load        0.54     33,916   (target <= 2 s; cache 217 MiB)

With `--generator builtin --mode RGB` (18,680 RGB images): first load 21.9 s, cached 0.58 s. On idle cores the
first load is about 0.8 ms an image per core.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver import dataset  # noqa: E402
from perceiver import runs  # noqa: E402
from perceiver.errors import start_command  # noqa: E402

SIDES = {"left": ("LEFT", "Left", "left", "L_E_F_T"), "right": ("RIGHT", "Right", "right", "R_I_G_H_T")}
VISITS = (3, 4, 5, 6, 7, 8, 100, 101, 102)


def akoa_plan(patients=330, slices=40, seed=0):
    """Scans like AKOA's: 330 patients, 467 scans (194 left, 273 right), so 18,680 slices at 40 per scan."""
    rng = np.random.default_rng(seed)
    scans = []  # (patient, visit, side)
    for p in range(patients):
        pid = 9000000 + p * 37
        v = VISITS[rng.integers(len(VISITS))]
        if p < 100:  # both knees
            scans += [(pid, v, "left"), (pid, v, "right")]
        elif p < 137:  # two visits, one knee
            scans += [(pid, v, "right"), (pid, VISITS[(VISITS.index(v) + 1) % len(VISITS)], "right")]
        else:
            scans.append((pid, v, "left" if p < 231 else "right"))
    files = []
    for i, (pid, visit, side) in enumerate(scans):
        spelling = SIDES[side][0] if i % 10 < 7 else SIDES[side][i % 4]
        sep = "_" if i % 5 else ""
        for s in range(slices):
            files.append((f"OAI{pid:07d}_BaseLine_{visit}{sep}de3d1_SAG_3D_DESS_WE_{spelling}.nii.gz_{s}.png",
                          side, i, s))
    return files


def _draw(args):
    from PIL import Image

    out_dir, chunk, mode = args
    yy, xx = np.mgrid[0:260, 0:228].astype(np.float32)
    base_of = {}
    for name, side, scan, s in chunk:
        if scan not in base_of:  # anatomy shared by the 40 slices of a scan
            srng = np.random.default_rng(scan)
            cx, cy = srng.uniform(90, 140), srng.uniform(110, 150)
            d = 1 if side == "right" else -1
            base = 30 + 90 * np.exp(-(((xx - cx) / 38) ** 2 + ((yy - cy + 40) / 70) ** 2))  # femur
            base += 80 * np.exp(-(((xx - cx) / 34) ** 2 + ((yy - cy - 70) / 45) ** 2))  # tibia
            patella = np.exp(-(((xx - cx - d * 55) / 14) ** 2 + ((yy - cy + 10) / 24) ** 2))
            base_of = {scan: (base, patella)}
        base, patella = base_of[scan]
        rng = np.random.default_rng(scan * 1000 + s)
        img = base + (60 + s) * patella + rng.standard_normal(base.shape, dtype=np.float32) * 9
        a = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([a] * 3, -1) if mode == "RGB" else a).save(os.path.join(out_dir, name))
    return len(chunk)


def make_builtin(out_dir, *, patients, mode, workers):
    from concurrent.futures import ProcessPoolExecutor

    files = akoa_plan(patients)
    os.makedirs(out_dir, exist_ok=True)
    chunks = [(out_dir, files[i:i + 400], mode) for i in range(0, len(files), 400)]
    with ProcessPoolExecutor(workers) as ex:
        return sum(ex.map(_draw, chunks))


def ensure_data(out_dir, *, generator, patients, mode, workers):
    """Makes the data once (a marker file records how); returns a description of it."""
    marker = os.path.join(out_dir, ".complete")
    if os.path.exists(marker):
        with open(marker) as f:
            return f.read().strip()
    if generator == "phantom":
        common.log(f"making data with phantom.py in {out_dir} ...")
        _, seconds = common.timed(lambda: subprocess.run(
            [sys.executable, str(common.REPO / "phantom.py"), out_dir, "--patients", str(patients)], check=True))
        source = f"phantom.py --patients {patients}"
    else:
        common.log(f"making data with the built-in generator in {out_dir} ...")
        _, seconds = common.timed(lambda: make_builtin(out_dir, patients=patients, mode=mode, workers=workers))
        source = f"built-in generator ({mode})"
    common.log(f"made in {seconds:.0f} s")
    with open(marker, "w") as f:
        f.write(source)
    return source


def main(argv=None):
    start_command(argv)
    parser = argparse.ArgumentParser(description="Time the first and the cached image load.")
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=None, help="folder to time (default: $TMPDIR/akoa-bench-<generator>, made "
                                                "if missing)")
    g.add_argument("--generator", default="auto", choices=("auto", "phantom", "builtin"),
                   help="what makes the data: auto is phantom.py when present, else builtin (default: auto)")
    g.add_argument("--patients", type=int, default=330, help="patients when making data (default: 330)")
    g.add_argument("--mode", default="RGB", choices=("RGB", "L"), help="built-in generator image mode (default: RGB)")
    g = parser.add_argument_group("load")
    g.add_argument("--size", type=int, default=64, help="target side in pixels (default: 64)")
    g.add_argument("--channels", type=int, default=3, choices=(1, 3), help="channels (default: 3)")
    g.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    g = parser.add_argument_group("output")
    g.add_argument("--json", default=None, help="also write the results here as JSON (default: none)")
    args = parser.parse_args(argv)

    workers = args.workers or len(os.sched_getaffinity(0))
    generator = args.generator
    if generator == "auto":
        generator = "phantom" if (common.REPO / "phantom.py").exists() else "builtin"
    suffix = generator if generator == "phantom" else f"builtin-{args.mode}"
    data = args.data or os.path.join(tempfile.gettempdir(), f"akoa-bench-{suffix}")
    source = "given folder" if args.data else ensure_data(data, generator=generator, patients=args.patients,
                                                          mode=args.mode, workers=workers)
    found, t_discover = common.timed(lambda: dataset.discover(data))
    paths = [r.path for r in found.records]
    from PIL import Image

    with Image.open(paths[0]) as im:
        src_size, src_mode = im.size, im.mode
    with tempfile.TemporaryDirectory(prefix="akoa-cache-") as cache:
        def load():
            return dataset.load_images(paths, size=args.size, channels=args.channels, cache_dir=cache,
                                       workers=workers, progress=False)

        first, t_first = common.timed(load)
        again, t_cached = common.timed(load)
        cache_mb = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache)) / 2**20
    assert again.from_cache and np.array_equal(first.images, again.images)
    n = len(paths)
    load = os.getloadavg()[0]
    print(f"images {n:,} ({src_size[1]} x {src_size[0]} {src_mode} -> {args.size} x {args.size} x {args.channels}), "
          f"{workers} workers, {os.cpu_count()} CPUs, load average {load:.1f}, data: {source}")
    print(f"{'step':<14}{'seconds':>9}{'images/s':>11}")
    print(f"{'discover':<14}{t_discover:>9.2f}")
    print(f"{'first load':<14}{t_first:>9.2f}{n / t_first:>11,.0f}   (target <= 30 s)")
    print(f"{'cached load':<14}{t_cached:>9.2f}{n / t_cached:>11,.0f}   (target <= 2 s; cache {cache_mb:,.0f} MiB)")
    if first.skipped:
        print(f"skipped {len(first.skipped)} files, e.g. {first.skipped[0]}")
    if args.json:
        runs.atomic_write_json(args.json, {
            "images": n, "source_height_width": [src_size[1], src_size[0]], "source_mode": src_mode,
            "size": args.size, "channels": args.channels, "workers": workers, "cpus": os.cpu_count(),
            "load_average": load, "data": source, "discover_s": t_discover, "first_load_s": t_first,
            "cached_load_s": t_cached, "cache_mib": cache_mb, "skipped": len(first.skipped)})


if __name__ == "__main__":
    main()
