"""Benchmark: how large driver.py's HTML report gets, and what it costs, with the reference run goliath/.

    python bench/speed/report_size.py                  # both sets below, made once in $TMPDIR
    python bench/speed/report_size.py --json r.json    # also the rows as JSON

Two sets of about 1,000 slices, classified as a user would (`python driver.py SET --report FILE`, a subprocess):
"volumes", `python phantom.py DIR --patients 25 --format nifti` (35 NIfTI volumes of 40 slices: 35 cards, each with
a 16-slice strip and an attention picture), and "single images", 1,000 of the phantom's PNG slices renamed
knee_0001.png ... (no AKOA name, so 1,000 scans of one slice: the most cards a 1,000-slice set can give). The table
gives the report's size, how much of it is inline images, the size it would have with its pictures as PNG instead of
JPEG (re-encoded from the decoded JPEGs: an estimate), and the wall time of the command with and without --report
(the fastest of --repeats runs each). Targets: a report of 1,000 slices under a few MB.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver import runs  # noqa: E402
from perceiver.errors import start_command  # noqa: E402


def _run(*args):
    """Runs a command of the project (driver.py, phantom.py) as a user would; its output is dropped."""
    subprocess.run([sys.executable, *map(str, args)], check=True, cwd=common.REPO, stdout=subprocess.DEVNULL)


def make_sets(root):
    """{name: folder} of the two sets, made once under `root`."""
    volumes, pngs, single = os.path.join(root, "volumes"), os.path.join(root, "pngs"), os.path.join(root, "single")
    if not os.path.isdir(volumes):
        _run("phantom.py", volumes, "--patients", "25", "--format", "nifti")
    if not os.path.isdir(single):
        _run("phantom.py", pngs, "--patients", "25")
        names = sorted(n for n in os.listdir(pngs) if n.endswith(".png"))[:1000]
        os.makedirs(single + ".tmp", exist_ok=True)
        for k, name in enumerate(names, start=1):
            shutil.copy(os.path.join(pngs, name), os.path.join(single + ".tmp", f"knee_{k:04d}.png"))
        os.replace(single + ".tmp", single)
    return {"volumes (NIfTI, 40 slices)": volumes, "single images (PNG)": single}


def measure(name, folder, out_dir, repeats):
    """The report's size and make-up; the fastest of `repeats` alternating runs without and with --report (the
    first run of a set also warms the file cache)."""
    report = os.path.join(out_dir, re.sub(r"\W+", "-", name).strip("-") + ".html")
    plain, with_report = common.time_alternating(
        [lambda: _run("driver.py", folder), lambda: _run("driver.py", folder, "--report", report)], 0, repeats)
    text = open(report, encoding="utf-8").read()
    images = re.findall(r'src="data:image/[a-z]+;base64,([^"]+)"', text)
    as_png = sum(len(base64.b64encode(_png(i))) for i in images)
    return {"set": name, "scans": text.count('<article class="card"'),
            "slices": int(re.search(r'id="count-slices" data-count="(\d+)"', text).group(1)),
            "bytes": os.path.getsize(report), "image_bytes": sum(map(len, images)), "images": len(images),
            "bytes_as_png": os.path.getsize(report) - sum(map(len, images)) + as_png,
            "seconds": plain.fastest, "seconds_with_report": with_report.fastest}


def _png(encoded):
    """A base64 JPEG of the report as an optimised PNG (lossless from the decoded JPEG: an estimate of PNG's size)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(base64.b64decode(encoded))).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def table(rows):
    lines = ["| set | scans | slices | report | inline images | images' share | with PNG images | driver.py (s) | "
             "with --report (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['scans']:,} | {r['slices']:,} | {r['bytes'] / 1e6:.2f} MB | {r['images']:,} "
                     f"| {r['image_bytes'] / r['bytes']:.0%} | {r['bytes_as_png'] / 1e6:.2f} MB | {r['seconds']:.1f} "
                     f"| {r['seconds_with_report']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    start_command(argv)
    p = argparse.ArgumentParser(description="Size and cost of driver.py --report on two sets of ~1,000 slices.")
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "report-size-sets"),
                   help="where the sets are made once (default: $TMPDIR/report-size-sets)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each command; the fastest counts (default: 2)")
    p.add_argument("--json", default=None, help="also write the rows here (default: none)")
    args = p.parse_args(argv)
    sets = make_sets(args.data)
    with tempfile.TemporaryDirectory(prefix="report-size-") as out_dir:
        rows = [measure(name, folder, out_dir, args.repeats) for name, folder in sets.items()]
    print(table(rows))
    if args.json:
        runs.atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
