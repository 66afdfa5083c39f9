"""The HTML reports in a real browser: headless Chromium loads each page from disk, runs its scripts and dumps the DOM
(`--dump-dom`), prints the page's console messages on stderr (`--enable-logging=stderr`) and takes a screenshot.

What a page must do: show the figures its data holds (the counts of the results file, the values of metrics.json),
order and list what it should, run its scripts without an error (the page's own error trap and the console are both
read, and a deliberately broken page proves that both catch an error), fetch nothing, and draw something.

Chromium is required, never skipped: CI installs it (.ci/run); locally `apt-get install chromium`, or point $CHROMIUM
at a Chromium or Chrome binary.
"""

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import helpers
from PIL import Image

import driver
from perceiver import htmlreport
from perceiver import inputs
from perceiver import runs
from perceiver import verdicts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLIATH = os.path.join(REPO, "goliath")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# === A browser ===
def _chromium():
    found = os.environ.get("CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if not found:
        pytest.fail("Chromium is needed for the report tests and was not found: apt-get install chromium, or set "
                    "$CHROMIUM to a Chromium or Chrome binary.")
    return found


def _browser(tmp_path, url, *flags):
    """Runs headless Chromium on `url` with a fresh profile; returns (stdout, console lines)."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *flags, url]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # every console message, whatever its level, is logged as `...:INFO:CONSOLE:<line>] "text", source: ...`
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


class Page(HTMLParser):
    """A dumped DOM: every element as a dict of its attributes, plus "tag" and "text" (its text content)."""

    def __init__(self, dom):
        super().__init__()
        self.elements, self._open = [], []
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "text": "", **{k: "" if v is None else v for k, v in attrs}}
        self.elements.append(element)
        if tag not in VOID:
            self._open.append(element)

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i]["tag"] == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def by_id(self, name):
        found = [e for e in self.elements if e.get("id") == name]
        assert len(found) == 1, f"{len(found)} elements with id {name}"
        return found[0]

    def find(self, tag, cls=None):
        return [e for e in self.elements if e["tag"] == tag and (cls is None or cls in e.get("class", "").split())]


def _load(tmp_path, path, fragment=""):
    """(Page, console lines) of an HTML file after its scripts ran."""
    dom, console = _browser(tmp_path, path.resolve().as_uri() + fragment, "--dump-dom")
    return Page(dom), console


def _assert_ran_cleanly(page, console):
    root = page.find("html")[0]
    assert "data-js-errors" not in root, root["data-js-errors"]
    assert root.get("data-ready") == "1", "the page's last script did not run to its end"
    assert console == [], console


def _assert_not_blank(tmp_path, path):
    shot = tmp_path / f"{path.stem}.png"
    _browser(tmp_path, path.resolve().as_uri(), f"--screenshot={shot}", "--window-size=1280,2000",
             "--hide-scrollbars")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert pixels.shape[:2] == (2000, 1280)
    colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert len(colours) > 200, f"the screenshot has {len(colours)} colours: a blank page"


def _data_images(path):
    """Every image the file holds, decoded; the file names nothing else to fetch."""
    text = path.read_text()
    sources = re.findall(r'\b(?:src|href)\s*=\s*["\']([^"\']*)["\']', text)
    outside = [s for s in sources if not s.startswith(("data:image/", "#"))]
    assert not outside, f"the report refers to files or addresses: {outside[:3]}"
    assert "url(" not in text and "@import" not in text
    return [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in sources if s.startswith("data:")]


# === The error checks can fail ===
def test_a_broken_page_is_caught_by_the_error_trap_and_the_console(tmp_path):
    """A check that cannot fail is worse than none: a script error, a console.error and an image that cannot load, in
    a page built by htmlreport, are each seen."""
    broken = tmp_path / "broken.html"
    broken.write_text(htmlreport._page("broken", "<p id='x'>before</p><img alt='bad' src='data:image/png;base64,AAAA'>"
                                       "<script>console.error('deliberate message 42'); "
                                       "document.getElementById('x').textContent = 'after'; "
                                       "undefinedFunction();</script>"))
    page, console = _load(tmp_path, broken)
    errors = page.find("html")[0].get("data-js-errors", "")
    assert "undefinedFunction" in errors and "cannot load img" in errors, errors
    assert any("deliberate message 42" in line for line in console), console
    assert any("undefinedFunction" in line for line in console), console
    assert page.by_id("x")["text"] == "after"  # the DOM is dumped after the scripts ran
    with pytest.raises(AssertionError):
        _assert_ran_cleanly(page, console)


# === driver.py --report ===
def _screenshots_module():
    """docs/screenshots.py, whose scan_set makes the scan set of the README's picture and of these tests."""
    spec = importlib.util.spec_from_file_location("screenshots", os.path.join(REPO, "docs", "screenshots.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scan_report(tmp_path_factory):
    """driver.py with the reference run on 4 phantom scans, a right knee named LEFT (flagged), a scan of 3 left and 3
    right slices (uncertain), a text file named .png and a blank image (both failed); --report and --results-file."""
    tmp = tmp_path_factory.mktemp("report")
    scans = tmp / "scans"
    _screenshots_module().scan_set(scans)
    report, results = tmp / "report.html", tmp / "results.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "driver.py"), scans, "--report", report,
                           "--results-file", results], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert results.is_file() and report.is_file(), proc.stderr
    return {"tmp": tmp, "proc": proc, "report": report, "results": json.loads(results.read_text())}


@pytest.mark.slow
def test_the_scan_report_shows_the_results_files_counts_and_runs_cleanly(scan_report, tmp_path):
    proc, saved = scan_report["proc"], scan_report["results"]
    assert proc.returncode == 1, proc.stderr  # two inputs failed
    page, console = _load(tmp_path, scan_report["report"])
    _assert_ran_cleanly(page, console)
    summary = saved["summary"]
    assert (summary["flagged"], summary["uncertain"], summary["failed"]) == (1, 1, 2), summary  # the set-up worked
    for name in htmlreport.COUNTS:
        assert int(page.by_id(f"count-{name}")["data-count"]) == summary[name], name
    assert float(page.by_id("run-temperature")["data-value"]) == saved["settings"]["temperature"]
    assert float(page.by_id("run-min-confidence")["data-value"]) == saved["settings"]["min_confidence"]
    _assert_not_blank(tmp_path, scan_report["report"])


@pytest.mark.slow
def test_the_scan_reports_cards_come_flagged_then_uncertain_each_with_its_pictures(scan_report, tmp_path):
    page, _ = _load(tmp_path, scan_report["report"])
    by_name = {s["scan"]: s for s in scan_report["results"]["scans"]}
    cards = page.find("article", "card")
    judged = [s for s in by_name.values() if s["verdict"] != "failed"]
    assert len(cards) == len(judged) == 6
    statuses = [c["data-status"] for c in cards]
    assert statuses[:2] == ["flagged", "uncertain"] and set(statuses[2:]) == {"classified"}, statuses
    assert "OAI9999991" in cards[0]["data-scan"] and "OAI9999992" in cards[1]["data-scan"]
    for card in cards:
        scan = by_name[card["data-scan"]]
        assert card["data-verdict"] == scan["verdict"]
        assert float(card["data-probability"]) == pytest.approx(scan["probability"], abs=1e-12)
    rows = page.find("tr")
    rows = [r for r in rows if "data-scan" in r]
    assert [r["data-scan"] for r in rows] == list(by_name)  # the table: every scan, in input order
    assert [r["data-verdict"] for r in rows] == [s["verdict"] for s in by_name.values()]
    strips, overlays = page.find("img", "strip"), page.find("img", "overlay")
    assert len(strips) == len(overlays) == 6
    for img in strips:  # two rows of up to 8, 64 pixels high: 6 slices make one row
        picture = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert picture.size == (6 * 64 + 5 * 2, 64), picture.size
    for img in overlays:
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))).convert("RGB"))
        assert max(picture.shape[:2]) == htmlreport.OVERLAY_SIZE
        heat = picture[..., 0].astype(int) - picture[..., 2].astype(int)  # inferno's heat is red over grey anatomy
        assert heat.max() > 60, "no attention drawn on the overlay"
    images = _data_images(scan_report["report"])
    assert len(images) == 12


@pytest.mark.slow
def test_the_scan_report_lists_each_failed_input_with_its_reason(scan_report, tmp_path):
    page, _ = _load(tmp_path, scan_report["report"])
    want = {os.path.basename(f["file"]): f["error"] for s in scan_report["results"]["scans"]
            for f in s["failed_files"]}
    assert set(want) == {"notes.png", "blank.png"}
    items = [li for li in page.find("li") if "data-file" in li]
    got = {os.path.basename(li["data-file"]): li["text"].split(": ", 1)[1] for li in items}
    assert got == want
    assert want["blank.png"].startswith("unsuitable") and want["notes.png"].startswith("not-image")


@pytest.mark.slow
def test_the_scan_table_sorts_on_a_click_and_filters_by_verdict(scan_report, tmp_path):
    """A script added to the page clicks the probability header twice (descending) and chooses a verdict, as a user
    would; the address (#sort=...&verdict=...) sets the same view."""
    text = scan_report["report"].read_text()
    clicks = ("<script>var th = document.querySelector('#scan-table th[data-key=probability]'); th.click(); "
              "th.click(); var s = document.getElementById('verdict-filter'); s.value = 'classified'; "
              "s.dispatchEvent(new Event('change')); document.body.setAttribute('data-hash', location.hash);</script>")
    clicked = tmp_path / "clicked.html"
    clicked.write_text(text.replace("</body>", clicks + "</body>"))
    views = {"clicked": _load(tmp_path, clicked), "address": _load(tmp_path, scan_report["report"],
                                                                   "#sort=probability&order=desc&verdict=classified")}
    for how, (page, console) in views.items():
        _assert_ran_cleanly(page, console)
        rows = [r for r in page.find("tr") if "data-scan" in r]
        shown = [r for r in rows if "hidden" not in r]
        assert {r["data-status"] for r in shown} == {"classified"} and len(shown) == 4, how
        assert all(r["data-status"] != "classified" for r in rows if "hidden" in r), how
        p = [float(r["data-probability"]) for r in shown]
        assert p == sorted(p, reverse=True) and len(set(p)) > 1, (how, p)
        assert page.by_id("shown")["text"] == f"4 of {len(rows)} scans shown", how
        cards = page.find("article", "card")
        assert sorted(c["data-scan"] for c in cards if "hidden" not in c) == sorted(r["data-scan"] for r in shown)
        head = [th for th in page.find("th") if th.get("data-key") == "probability"][0]
        assert head["aria-sort"] == "descending", how
    assert views["clicked"][0].find("body")[0]["data-hash"] == "#sort=probability&order=desc&verdict=classified"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder with random weights (the `tiny` preset) on a phantom set, as tests/test_driver.py makes them."""
    return helpers.tiny_run(tmp_path_factory.mktemp("tiny"))


def test_the_test_split_report(tiny_run, tmp_path):
    """Without INPUT, --report reports the run's test split, its accuracy with it."""
    report, results = tmp_path / "split.html", tmp_path / "split.json"
    args = driver.build_parser().parse_args(["--run", str(tiny_run), "--report", str(report), "--results-file",
                                             str(results), "--min-confidence", "0.5"])
    assert driver.run(args, out=io.StringIO()) == driver.EXIT_OK
    saved = json.loads(results.read_text())
    page, console = _load(tmp_path, report)
    _assert_ran_cleanly(page, console)
    for name in htmlreport.COUNTS:
        assert int(page.by_id(f"count-{name}")["data-count"]) == saved["summary"][name], name
    assert float(page.by_id("test-split")["data-accuracy"]) == saved["summary"]["accuracy"]
    assert len(page.find("article", "card")) == saved["summary"]["scans"] > 0
    assert all(c["data-verdict"] in ("left", "right") for c in page.find("article", "card"))  # 0.5: never uncertain


# === The run report ===
def _metric_values(metrics):
    c = metrics["calibration"]
    return {"accuracy": metrics["accuracy"], "loss": metrics["loss"], "roc_auc": metrics["roc_auc"],
            "per_patient_accuracy": metrics["per_patient"]["accuracy"],
            "per_scan_accuracy": metrics["per_scan"]["accuracy"], "temperature": c["temperature"],
            "ece_before": c["test_before"]["ece"], "ece_after": c["test_after"]["ece"],
            "brier_before": c["test_before"]["brier"], "brier_after": c["test_after"]["brier"],
            "nll_after": c["test_after"]["nll"],
            "uncertain_scans": c["uncertain_at_min_confidence"]["scans"]["uncertain"],
            "best_epoch": metrics["best_epoch"]}


def test_the_run_report_shows_metrics_json_and_the_split(tmp_path):
    report = htmlreport.run_report(GOLIATH, tmp_path / "goliath.html")
    with open(os.path.join(GOLIATH, runs.METRICS)) as f:
        metrics = json.load(f)
    with open(os.path.join(GOLIATH, runs.CONFIG)) as f:
        config = json.load(f)
    page, console = _load(tmp_path, report)
    _assert_ran_cleanly(page, console)
    for name, value in _metric_values(metrics).items():
        assert float(page.by_id(f"metric-{name}")["data-value"]) == value, name
    classes = metrics["confusion_matrix"]["classes"]
    for i, true in enumerate(classes):
        for j, predicted in enumerate(classes):
            cell = page.by_id(f"confusion-{true}-{predicted}")
            assert int(cell["data-count"]) == metrics["confusion_matrix"]["counts"][i][j]
    for split, images in config["data"]["images"].items():
        cells = {e["data-key"]: int(e["data-count"]) for e in _row(page, f"split-{split}") if e.get("data-key")}
        assert cells["images"] == images, split
        assert sum(cells[f"images-{c}"] for c in classes) == images
    assert {e["data-count"] for e in _row(page, "split-test") if e.get("data-key") == "scans"} == {
        str(metrics["per_scan"]["total"])}
    figures = [img["alt"] for img in page.find("img")]
    assert len(figures) == 4 and all(figures), figures  # acc, loss, ROC, reliability
    assert len(_data_images(report)) == 4
    _assert_not_blank(tmp_path, report)


def _row(page, row_id):
    """The elements inside the table row with id `row_id`, in document order."""
    start = page.elements.index(page.by_id(row_id))
    inside = []
    for element in page.elements[start + 1:]:
        if element["tag"] == "tr":
            break
        inside.append(element)
    return inside


def test_the_shipped_reference_report_is_what_htmlreport_writes_today(tmp_path):
    """goliath/report.html is committed: it must be the page that `python -m perceiver.htmlreport goliath` writes now."""
    fresh = htmlreport.run_report(GOLIATH, tmp_path / "report.html").read_bytes()
    shipped = open(os.path.join(GOLIATH, runs.REPORT), "rb").read()
    assert shipped == fresh, "goliath/report.html is stale: run python -m perceiver.htmlreport goliath and commit it"


def test_htmlreport_py_refuses_a_folder_that_is_not_a_finished_run(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    shutil.copy(os.path.join(GOLIATH, runs.CONFIG), tmp_path / "half" / runs.CONFIG)
    for folder, message in ((tmp_path / "none", "does not exist"), (tmp_path / "half", "has no metrics.json")):
        assert htmlreport.main([str(folder)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "half" / runs.REPORT).exists()


# === Pieces of the scan report ===
def test_a_scans_slices_are_in_slice_order_and_thumbnails_spread_evenly():
    """AKOA slice files are ordered by their number (10 after 2, not before), whatever the input order."""
    name = "OAI9000001_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_{}.png"
    members = [driver.Result(name.format(k), "image", slice_probabilities=np.array([[0.5, 0.5]])) for k in (10, 2, 0)]
    scan = verdicts.Scan("scan", members)
    index_of = {id(r): i for i, r in enumerate(members)}
    assert [i for i, _, _ in htmlreport._slices(scan, index_of)] == [2, 1, 0]
    assert htmlreport._evenly(40) == [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29, 31, 34, 36, 39]
    assert htmlreport._evenly(6) == [0, 1, 2, 3, 4, 5] and htmlreport._evenly(0) == []
    strip = htmlreport._strip([np.zeros((64, 64), np.uint8)] * 16)
    assert strip.shape == (2 * 64 + 2, 8 * 64 + 7 * 2)  # two rows of eight


def test_an_attention_picture_falls_back_to_the_decoded_image_when_the_file_is_gone(tmp_path):
    item = inputs.Input(str(tmp_path / "gone.png"), "image")
    fallback = np.full((64, 48, 3), 100, np.uint8)
    maps = np.zeros((2, 4, 4), np.float32)
    maps[:, 0, 0] = 1.0  # all the attention in one corner
    picture = htmlreport._overlay_picture(item, None, fallback, maps)
    assert picture.shape == (htmlreport.OVERLAY_SIZE, round(48 * htmlreport.OVERLAY_SIZE / 64), 3)
    assert picture[0, 0, 0] > picture[-1, -1, 0] + 60  # heat in that corner, none in the other


def test_the_attention_picture_is_of_the_central_slice_not_the_most_confident():
    """A scan of five AKOA slices, given out of order, whose edge slice 0 is the most confident: the picture is of
    slice 2, the middle one in slice order, and the caption says so."""
    name = "scans/OAI9000001_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_{}.png"
    order = (3, 0, 4, 1, 2)
    left = {0: 0.99, 1: 0.7, 2: 0.8, 3: 0.75, 4: 0.9}  # slice number -> probability of "left"
    members = [driver.Result(name.format(k), "image", predicted="left", probability=left[k],
                             probabilities=[left[k], 1 - left[k]],
                             slice_probabilities=np.array([[left[k], 1 - left[k]]])) for k in order]
    scan = verdicts.Scan("scans/OAI9000001_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz", members, verdict="left",
                         predicted="left", probability=0.83, probabilities=[0.83, 0.17], slices=5)
    given = [inputs.Input(m.path, "image") for m in members]  # no such files: the decoded images are drawn
    images = {i: np.full((1, 16, 16, 3), 40 * (i + 1), np.uint8) for i in range(5)}
    asked = []

    def attention(jobs):
        asked.extend(jobs)
        return np.full((len(jobs), 2, 4, 4), 1 / 16, np.float32)

    cards, note = htmlreport._cards([scan], ["left", "right"], given, members, images, attention)
    assert asked == [(order.index(2), None)] and note == ""
    assert "attention on the central slice (slice 2: left 0.800)" in cards


def test_names_wrap_at_their_separators_and_stay_escaped():
    assert htmlreport._breakable("scans/OAI9_x-y.png") == "scans/<wbr>OAI9_<wbr>x-<wbr>y.<wbr>png"
    hostile = "a/<script>alert('x')</script>_\udcff&b.png"
    out = htmlreport._breakable(hostile)
    assert "<script" not in out and "&lt;script&gt;" in out and "\\udcff" in out
    assert out.replace("<wbr>", "") == htmlreport._text(hostile)  # only <wbr> added to the escaped text
    assert "break-all" not in htmlreport._STYLE  # a name breaks mid-word only when a piece is longer than the line
    page = Page(htmlreport._page("t", f"<h3 id='n'>{out}</h3>"))
    assert page.by_id("n")["text"] == hostile.replace("\udcff", "\\udcff")
    assert [e["tag"] for e in page.elements].count("script") == 2  # the page's own two, no injected one


def _scan_report_page(tmp_path, note):
    path = tmp_path / "scans.html"
    settings = {"temperature": 1.0, "min_confidence": 0.9, "scan_rule": "mean-probability", "data_note": note}
    htmlreport.scan_report(path, [], inputs=[], results=[], images={}, counts=verdicts.counts([]),
                           classes=["left", "right"], run="goliath", settings=settings)
    return Page(path.read_text())


def test_the_synthetic_data_notice_in_both_reports(tmp_path):
    """The scan report shows the caller's notice (escaped) above the run's facts, none when it is empty; the run
    report shows one when config.json says the data was the embedded synthetic set, and none for a --data folder."""
    with open(os.path.join(GOLIATH, runs.CONFIG)) as f:
        config = json.load(f)
    note = runs.data_note(config)
    assert note == ("Trained on synthetic data only: knee MRI drawn by phantom.py (120 patients, 40 slices a scan, "
                    "seed 0), no real scans.")
    real = {**config, "data": {**config["data"], "phantom": None}}
    assert runs.data_note(real) == runs.data_note({}) == runs.data_note({"data": None}) == ""

    hostile = "Trained on <b>synthetic</b> data & nothing else"
    page = _scan_report_page(tmp_path, hostile)
    shown = page.by_id("data-note")
    assert shown["text"] == hostile and not page.find("b")
    assert page.elements.index(shown) < page.elements.index(page.by_id("run"))  # at the top, before the run
    for empty in ("", None):
        assert not [e for e in _scan_report_page(tmp_path, empty).elements if e.get("id") == "data-note"]

    page = Page(htmlreport.run_report(GOLIATH, tmp_path / "goliath.html").read_text())
    assert page.by_id("data-note")["text"] == note
    copy = tmp_path / "real"
    copy.mkdir()
    for name in (runs.METRICS, runs.SPLIT):
        shutil.copy(os.path.join(GOLIATH, name), copy / name)
    runs.atomic_write_json(copy / runs.CONFIG, real)
    page = Page(htmlreport.run_report(copy).read_text())
    assert not [e for e in page.elements if e.get("id") == "data-note"] and page.by_id("metrics")


def test_the_readme_screenshots_are_of_todays_goliath_and_run_report():
    """docs/screenshots.json names what docs/report_*.png were taken of (goliath's config, metrics, calibration,
    weights checksum and report.html, by SHA-256): a remade goliath or a changed run report makes them stale."""
    shots = _screenshots_module()
    with open(os.path.join(REPO, shots.RECORD)) as f:
        recorded = json.load(f)
    today = shots.record()
    assert set(recorded["made_from"]) == set(shots.MADE_FROM) and set(recorded["pictures"]) == set(shots.PICTURES)
    assert recorded["pictures"] == today["pictures"], (
        "docs/report_*.png changed without docs/screenshots.json: run python docs/screenshots.py")
    stale = [p for p, digest in today["made_from"].items() if recorded["made_from"][p] != digest]
    assert not stale, f"docs/report_*.png are stale ({', '.join(stale)} changed): run python docs/screenshots.py"
