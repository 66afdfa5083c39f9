"""The README's pictures of the two HTML reports, taken with headless Chromium (the first screen of each, 1280 pixels
wide).

    python docs/screenshots.py          # writes docs/report_scans.png, docs/report_run.png, docs/screenshots.json

docs/report_scans.png: `python driver.py SCANS --report ...` with the reference run goliath/ on a small phantom set
(`phantom.py`, 3 patients, 6 slices a scan, seed 7) plus a right knee named LEFT (flagged), a scan of three left and
three right slices (uncertain), a text file named .png and a blank image (both failed): the set tests/test_report.py
uses. docs/report_run.png: goliath/report.html, as `python -m perceiver.htmlreport goliath` writes it. Needs Chromium
(`apt-get install chromium`, or $CHROMIUM naming a Chromium or Chrome binary).

docs/screenshots.json records what the pictures were taken of (`record`): the SHA-256 of goliath's config.json,
metrics.json, calibration.json, the checksum file of its weights and its report.html (a remade goliath changes all
of them; a changed run report changes the last), and of the two pictures. tests/test_report.py compares it with the
files of today, so a picture of an older goliath or report fails the tests, with no browser needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from perceiver import dataset  # noqa: E402  (after the project root is on the path)
from perceiver import htmlreport  # noqa: E402
from perceiver import phantom  # noqa: E402

SIZE = (1280, 1000)  # the first screen of each report
COLOURS = 192  # a palette keeps each PNG small
PICTURES = ("docs/report_scans.png", "docs/report_run.png")
MADE_FROM = ("goliath/config.json", "goliath/metrics.json", "goliath/calibration.json",
             "goliath/model.weights.h5.sha256", "goliath/report.html")  # what the pictures show
RECORD = "docs/screenshots.json"


def record():
    """{"made_from": {path: SHA-256}, "pictures": {path: SHA-256}} of today's files (paths relative to the project),
    as docs/screenshots.json holds it for the pictures it names."""
    def digests(paths):
        return {p: hashlib.sha256(pathlib.Path(REPO, p).read_bytes()).hexdigest() for p in paths}

    return {"made_from": digests(MADE_FROM), "pictures": digests(PICTURES)}


def scan_set(folder):
    """The phantom scans plus a flagged, an uncertain and two failed inputs (tests/test_report.py's set)."""
    phantom.generate(folder, patients=3, slices=6, seed=7, progress=False)
    paths = sorted(str(p) for p in folder.glob("*.png"))

    def scan(side):
        first = next(p for p in paths if dataset.side_from_name(p) == side)
        name = dataset.parse_akoa_name(os.path.basename(first))["scan"]
        return sorted((p for p in paths if dataset.parse_akoa_name(os.path.basename(p))["scan"] == name),
                      key=lambda p: dataset.parse_akoa_name(os.path.basename(p))["slice"])

    for patient, side, slices in (("OAI9999991", "LEFT", scan("right")),
                                  ("OAI9999992", "RIGHT", scan("left")[:3] + scan("right")[3:])):
        for k, path in enumerate(slices):
            shutil.copy(path, folder / f"{patient}_BaseLine_3_de3d1_SAG_3D_DESS_WE_{side}.nii.gz_{k}.png")
    (folder / "notes.png").write_text("not an image")
    Image.new("L", (100, 100), 128).save(folder / "blank.png")


def screenshot(page, out, profile):
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("error: Chromium is needed: apt-get install chromium, or set $CHROMIUM.")
    raw = out.with_suffix(".raw.png")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", f"--window-size={SIZE[0]},{SIZE[1]}", f"--screenshot={raw}",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    Image.open(raw).convert("RGB").quantize(COLOURS, dither=Image.Dither.NONE).save(out, optimize=True)
    raw.unlink()
    print(f"wrote {out} ({os.path.getsize(out) / 1e3:.0f} kB)")


def main():
    docs = pathlib.Path(REPO) / "docs"
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        tmp = pathlib.Path(tmp)
        run_report = htmlreport.run_report(os.path.join(REPO, "goliath"), tmp / "run.html")
        if run_report.read_bytes() != (pathlib.Path(REPO) / "goliath" / "report.html").read_bytes():
            sys.exit("error: goliath/report.html is stale; run python -m perceiver.htmlreport goliath first, so that the "
                     "picture is of the committed report.")
        scans = tmp / "scans"
        scan_set(scans)
        report = tmp / "scans.html"
        # the paths shown are relative, as a user in the folder above the scans would see them: no temporary folder
        # or checkout path in the picture
        (tmp / "goliath").symlink_to(os.path.join(REPO, "goliath"), target_is_directory=True)
        proc = subprocess.run([sys.executable, os.path.join(REPO, "driver.py"), "scans", "--run", "goliath",
                               "--report", report],
                              cwd=tmp, stdout=subprocess.DEVNULL, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if proc.returncode not in (0, 1):  # 1: the two failed inputs, on purpose
            sys.exit(f"error: driver.py exited with {proc.returncode}")
        screenshot(report, docs / "report_scans.png", tmp / "profile-scans")
        screenshot(run_report, docs / "report_run.png", tmp / "profile-run")
    (pathlib.Path(REPO) / RECORD).write_text(json.dumps(record(), indent=2) + "\n")
    print(f"wrote {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
