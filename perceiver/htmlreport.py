"""Self-contained HTML reports: driver.py's scan report and a training run's report. Each is one file that a browser
opens with no network: images inline as data URIs, plain CSS, a little JavaScript, nothing fetched (a
Content-Security-Policy in the page forbids it).

    python -m perceiver.htmlreport goliath                      # (re)writes goliath/report.html from the run folder's files
    python -m perceiver.htmlreport runs/akoa --out akoa.html    # the same report written elsewhere
    python driver.py scans/ --report report.html      # the scan report (driver.py calls scan_report)

The scan report: a one-line notice under the title when the caller gives one (`settings["data_note"]`, e.g. that
the model was trained on synthetic data only), the run used (folder, classes, temperature, confidence threshold, scan
rule), the summary counts (`verdicts.counts`, the dict the results file holds), one card per scan (flagged first,
then uncertain, then the rest in input order) with a strip of its slices as the model saw them (at most
MAX_THUMBNAILS, evenly spaced), its verdict, calibrated probability, expected side and where that came from, and the
attention on its central slice (the middle one of its slices in order, `len // 2`: the middle of the knee, where an
edge slice may show little bone; the mean of the cross-attends' maps over the image, as `driver.py --explain` draws
each one); a table with one row per scan that sorts on a click on a column header and filters by verdict; every
input that failed, with its reason. Scan and file names wrap only at their separators (/ _ . -; `_breakable`).

The run report (train.py writes it at the end of every run; this command writes it again from the folder alone, no
model loaded): the notice that the run was trained on synthetic data only when its config.json says so
(`runs.data_note`), the settings (config.json's train, model and data sections), the split (patients, scans and images
per split and label, from split.csv), the curves, history.csv, the confusion matrix, ROC, reliability diagram and
the test metrics of metrics.json, each with a one-line definition. A report is written only when its bytes change.

Hooks for tests and scripts, in the page: every count as `<dd id="count-NAME" data-count="N">` (scans, slices,
classified, uncertain, flagged, failed, failed_files, ignored); every metric as `id="metric-NAME"` with the exact
value in `data-value`; each card and table row with `data-verdict` (a class, "uncertain" or "failed") and
`data-status` ("flagged", "uncertain", "classified" or "failed"). The first script of the page records every
JavaScript error and every resource that fails to load in `<html data-js-errors>`, and the last one sets
`<html data-ready="1">` when it has run. The table's view can be set from the address:
`report.html#sort=probability&order=desc&verdict=flagged`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import pathlib
import re
import sys

import numpy as np
from PIL import Image

from perceiver import records
from perceiver import runs
from perceiver.errors import UsageError
from perceiver.inputs import InputError, display_image
from perceiver.plots import CURVES, attention_overlay, write_if_changed
from perceiver.reports import display_path, flag_label, format_summary
from perceiver.verdicts import UNCERTAIN

MAX_THUMBNAILS = 16  # slices shown per scan: a 40-slice volume shows every 2nd or 3rd
STRIP_COLUMNS = 8  # thumbnails a row: 16 fill two rows of a card at the model's 64 pixels
THUMB_HEIGHT = 64  # pixels: the thumbnails are the images the model saw (64 x 64 for the akoa presets)
OVERLAY_SIZE = 176  # pixels, the longest side of the attention picture
JPEG_QUALITY = 85  # thumbnails and overlays: noisy MRI pictures are far smaller as JPEG (bench/speed/report_size.py)
MAX_OVERLAYS = 200  # attention pictures beyond the flagged and uncertain scans': bounds a report of many scans
COUNTS = ("scans", "slices", "classified", "uncertain", "flagged", "failed", "failed_files", "ignored")
STATUS_ORDER = {"flagged": 0, UNCERTAIN: 1, "classified": 2, "failed": 3}


# === Pieces of a page ===
def _text(value):
    """HTML-escaped text; a file name's undecodable byte (a surrogate escape) shows as a visible `\\udcff`."""
    return html.escape(str(value).encode("utf-8", "backslashreplace").decode("utf-8"))


_SEPARATOR = re.compile(r"(?<=[/\\_.\-])")  # just after each slash, backslash, _, . or - of a name: where it may wrap


def _breakable(value):
    """A path or scan name as HTML that wraps only at its separators: escaped piece by piece (`_text`), with a <wbr>
    after each / \\ _ . - (a line still breaks inside a piece longer than the line, by the CSS, as a last resort)."""
    return "<wbr>".join(_text(piece) for piece in _SEPARATOR.split(str(value)) if piece)


def _data_uri(data, mime):
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_uri(array):
    """A uint8 (h, w) or (h, w, 3) array as a JPEG data URI."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return _data_uri(buf.getvalue(), "image/jpeg")


ASSETS = pathlib.Path(__file__).resolve().parent / "assets"  # the reports' CSS and JavaScript, kept out of code


def _asset(name):
    """A file of perceiver/assets/ as text, without its final newline (the page adds its own layout)."""
    return (ASSETS / name).read_text(encoding="utf-8").rstrip("\n")


_ERROR_TRAP = _asset("report-error-trap.js")  # first in <head>: notes a script error or a missing image on <html>
_TABLE_SCRIPT = _asset("report-table.js")  # sorting and filtering of the scan table, the view kept in the address
_STYLE = "\n" + _asset("report.css") + "\n"


_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")


def _page(title, body):
    """The whole document: the error trap first, then the page, then the table script."""
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<script>{_ERROR_TRAP}</script>\n'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_text(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n<script>{_TABLE_SCRIPT}</script>\n</body>\n</html>\n")


def _data_note_html(note):
    """The notice as one prominent line under the page's title; nothing when there is none."""
    return f"<p id='data-note' class='data-note' role='note'>{_text(note)}</p>" if note else ""


def _kv(pairs, attrs=None):
    """A <dl class="kv"> of (label, html value) pairs; attrs: {label: extra attributes of its <dd>}."""
    attrs = attrs or {}
    return '<dl class="kv">' + "".join(f"<dt>{_text(k)}</dt><dd{attrs.get(k, '')}>{v}</dd>" for k, v in pairs) + "</dl>"


def _write(path, text, option):
    """Writes a page atomically, unless the file already holds it (a committed report stays untouched)."""
    try:
        write_if_changed(path, text)
    except OSError as e:
        raise UsageError(f"cannot write {option} {path}: {e.strerror or e}.") from None


# === The scan report (driver.py --report) ===
def _status(scan):
    """"flagged", "uncertain", "classified" or "failed": the summary count a scan falls in (flagged ones are also
    classified in verdicts.counts)."""
    if scan.verdict == "failed":
        return "failed"
    if scan.flagged:
        return "flagged"
    return UNCERTAIN if scan.verdict == UNCERTAIN else "classified"


def _slices(scan, index_of):
    """(input index, slice index or None, probabilities) of every classified slice of a scan, in slice order: a
    volume's own order; slice images by the slice number in their AKOA name, else in input order."""
    entries = []
    for r in scan.members:
        if r.error is None:
            i = index_of[id(r)]
            if r.is_volume:
                entries += [((i, k), i, k, q) for k, q in enumerate(r.slice_probabilities)]
            else:
                info = records.parse_akoa_name(os.path.basename(r.path))
                number = info["slice"] if info and info["slice"] is not None else math.inf
                entries.append(((number, i), i, None, r.slice_probabilities[0]))
    return [(i, k, q) for _, i, k, q in sorted(entries, key=lambda e: e[0])]


def _gray(image):
    """A decoded uint8 (h, w, c) image as (h, w) grey when its channels agree, else (h, w, 3)."""
    if image.shape[-1] == 1 or (image.shape[-1] == 3 and (image == image[..., :1]).all()):
        return image[..., 0]
    return image[..., :3]


def _strip(pictures):
    """The thumbnails in rows of up to STRIP_COLUMNS, 2 black pixels apart, each THUMB_HEIGHT high (aspect kept);
    one grey channel when they all are grey."""
    mode = "L" if all(p.ndim == 2 for p in pictures) else "RGB"
    tiles = []
    for p in pictures:
        h, w = p.shape[:2]
        size = (max(1, round(w * THUMB_HEIGHT / h)), THUMB_HEIGHT)
        tile = Image.fromarray(p, "L" if p.ndim == 2 else "RGB").resize(size, Image.Resampling.BILINEAR)
        tiles.append(tile.convert(mode))
    columns = min(len(tiles), STRIP_COLUMNS)
    rows = math.ceil(len(tiles) / columns)
    width = max(sum(t.width for t in tiles[r * columns:(r + 1) * columns]) + 2 * (columns - 1) for r in range(rows))
    strip = Image.new(mode, (width, rows * THUMB_HEIGHT + 2 * (rows - 1)))
    for j, tile in enumerate(tiles):
        row = j // columns
        x = sum(t.width + 2 for t in tiles[row * columns:j])
        strip.paste(tile, (x, row * (THUMB_HEIGHT + 2)))
    return np.asarray(strip)


def _evenly(n, most=MAX_THUMBNAILS):
    """Up to `most` indices spread evenly over range(n), first and last included."""
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, most))}) if n else []


def _overlay_picture(item, k, fallback, maps):
    """The attention overlay (uint8 RGB, OVERLAY_SIZE on its longest side) on the slice at display resolution
    (inputs.display_image), or on the decoded image if the file cannot be read again."""
    try:
        gray = display_image(item, k)
    except (InputError, OSError, ValueError):  # the file changed or went away since it was classified
        gray = fallback if fallback.ndim == 2 else fallback.mean(axis=-1).astype(np.uint8)
    h, w = gray.shape
    scale = OVERLAY_SIZE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gray = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))
    return attention_overlay(gray, maps)


def _slice_label(item, k, n):
    """How the card names a slice: a volume's index (as in the results file), an AKOA slice file's number, else the
    file's name."""
    if k is not None:
        return f"slice {k} of {n}"
    info = records.parse_akoa_name(os.path.basename(item.path))
    if info and info["slice"] is not None:
        return f"slice {info['slice']}"
    return "the image" if n == 1 else os.path.basename(item.path)


def _card(scan, classes, pictures, overlay):
    """One scan's card: its slices (`pictures`, uint8 as the model saw them), verdict, probability, expected side and
    the attention picture `overlay` = (data URI, which slice, its probability) or None."""
    status = _status(scan)
    n, shown = len(pictures), _evenly(len(pictures))
    strip = _image_uri(_strip([_gray(pictures[j]) for j in shown]))
    flag = ""
    if scan.flagged:
        flag = f' <span class="badge flagged">{_text(flag_label(scan, classes))}</span>'
    elif status == UNCERTAIN:
        flag = f" (most probable: {_text(scan.predicted)})"
    expected = (f"{_text(scan.expected)} <span class='note'>({_text(scan.expected_source)})</span>"
                if scan.expected else "<span class='note'>not known</span>")
    failed = f"<dt>failed files</dt><dd>{scan.failed}</dd>" if scan.failed else ""
    geometry = f"<dt>plane</dt><dd>{_text(scan.plane)} {_text(scan.orientation or '')}</dd>" if scan.plane else ""
    h, w = pictures[0].shape[:2]
    figure = ""
    if overlay is not None:
        picture, where, p = overlay
        figure = (f'<figure><img class="overlay" alt="attention over {_text(where)}" src="{picture}">'
                  f"<figcaption>attention on the central slice ({_text(where)}: {_text(scan.predicted)} "
                  f"{p:.3f}), the mean of the cross-attends' maps</figcaption></figure>")
    badge = status if status != "classified" else ""
    return (f'<article class="card" data-scan="{_text(scan.name)}" data-verdict="{_text(scan.verdict)}" '
            f'data-status="{status}" data-probability="{scan.probability!r}">'
            f'<h3 title="{_text(scan.name)}">{_breakable(display_path(scan.name))}</h3>'
            f'<img class="strip" alt="{len(shown)} of {n} slices" src="{strip}">'
            f'<div class="note">{len(shown)} of {n} slice{"s" if n != 1 else ""}, as the model saw them '
            f"({h} x {w})</div>"
            f'<div class="body">{figure}<div class="facts"><dl class="kv">'
            f'<dt>verdict</dt><dd><span class="badge {badge}">{_text(scan.verdict)}</span>{flag}</dd>'
            f"<dt>probability</dt><dd>{scan.probability:.4f} <span class='note'>(calibrated, "
            f"{_text(scan.predicted)})</span></dd>"
            f"<dt>expected</dt><dd>{expected}</dd><dt>slices</dt><dd>{scan.slices}</dd>{failed}{geometry}"
            f"</dl></div></div></article>")


def _cards(scans, classes, inputs, results, images, attention):
    """The cards of the classified scans, flagged first, then uncertain, then the rest in input order, and a note
    on the attention pictures (none: every card has one)."""
    index_of = {id(r): i for i, r in enumerate(results)}
    shown = sorted((s for s in scans if s.verdict != "failed"), key=lambda s: STATUS_ORDER[_status(s)])  # stable
    slices = [_slices(s, index_of) for s in shown]
    central = []  # (input index, slice index or None, probability of the predicted class): each overlay's slice
    for s, own in zip(shown, slices):
        i, k, q = own[len(own) // 2]  # the middle of the scan, whatever the model thought of it
        central.append((i, k, float(q[classes.index(s.predicted)])))
    drawn = [n for n, s in enumerate(shown) if n < MAX_OVERLAYS or _status(s) != "classified"]
    maps = attention([central[n][:2] for n in drawn]) if attention is not None and drawn else []
    maps = dict(zip(drawn, maps))
    cards = []
    for n, s in enumerate(shown):
        pictures = [images[i][0 if k is None else k] for i, k, _ in slices[n]]
        overlay = None
        if n in maps:
            i, k, p = central[n]
            picture = _overlay_picture(inputs[i], k, _gray(images[i][0 if k is None else k]), maps[n])
            overlay = (_image_uri(picture), _slice_label(inputs[i], k, len(pictures)), p)
        cards.append(_card(s, classes, pictures, overlay))
    note = ""
    if attention is None and shown:
        note = "<p class='note'>No attention pictures: this model does not give its attention maps.</p>"
    elif len(drawn) < len(shown):
        note = (f"<p class='note'>Attention pictures for the flagged and uncertain scans and the first "
                f"{MAX_OVERLAYS} cards ({len(drawn):,} of {len(shown):,} scans), to keep the file small.</p>")
    return "".join(cards), note


def _table(scans, classes):
    heads = (("scan", "scan", ""), ("slices", "slices", "num"), ("verdict", "verdict", ""),
             ("probability", "probability", "num"), ("expected", "expected", ""), ("source", "source", ""),
             ("flag", "flag", ""))
    rows = []
    for scan in scans:
        status = _status(scan)
        if status == "failed":
            note = "failed: " + "; ".join(sorted({r.error for r in scan.members if r.error}))
        else:
            note = flag_label(scan, classes) if scan.flagged else (
                f"uncertain ({scan.predicted}?)" if status == UNCERTAIN else "")
            note += f" ({scan.failed} file{'s' if scan.failed != 1 else ''} failed)" if scan.failed else ""
        p = "" if scan.probability is None else f"{scan.probability:.4f}"
        rows.append(f'<tr data-scan="{_text(scan.name)}" data-verdict="{_text(scan.verdict)}" data-status="{status}" '
                    f'data-probability="{"" if scan.probability is None else repr(scan.probability)}">'
                    f"<td class='name'>{_breakable(display_path(scan.name))}</td><td class='num'>{scan.slices}</td>"
                    f"<td class='short' data-sort='{STATUS_ORDER[status]}{_text(scan.verdict)}'>"
                    f"{_text(scan.verdict)}</td><td class='num' data-sort='{p}'>{p}</td>"
                    f"<td class='short'>{_text(scan.expected or '')}</td>"
                    f"<td class='short'>{_text(scan.expected_source or '')}</td><td>{_text(note.strip())}</td></tr>")
    options = [("all", "all scans"), ("flagged", "flagged"), (UNCERTAIN, "uncertain"),
               ("classified", "classified, not flagged"), ("failed", "failed")] + [(c, f"verdict {c}") for c in classes]
    select = "".join(f'<option value="{_text(v)}">{_text(label)}</option>' for v, label in options)
    head = "".join(f'<th data-key="{key}" class="{cls}" title="sort by {label}">{label}</th>'
                   for key, label, cls in heads)
    return (f'<div class="controls"><label>show <select id="verdict-filter">{select}</select></label>'
            f'<span id="shown" class="note"></span><span class="note">click a column header to sort</span></div>'
            f'<table id="scan-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _counts_html(counts):
    labels = {"scans": "scans", "slices": "slices", "classified": "classified", "uncertain": "uncertain",
              "flagged": "flagged", "failed": "failed scans", "failed_files": "inputs failed",
              "ignored": "entries ignored"}
    return '<dl class="counts">' + "".join(
        f'<div class="{name}"><dt>{labels[name]}</dt><dd id="count-{name}" data-count="{int(counts.get(name, 0))}">'
        f"{int(counts.get(name, 0)):,}</dd></div>" for name in COUNTS) + "</dl>"


def scan_report(path, scans, *, inputs, results, images, counts, classes, run, settings, attention=None):
    """Writes the scan report (see the module docstring) to `path`, atomically.

    Args:
        path: str. The HTML file.
        scans: list[verdicts.Scan]. The verdicts, in input order.
        inputs: list[inputs.Input]. What was classified, in order.
        results: list[predict.Result]. One per input, in order.
        images: dict. {input index: uint8 (n, h, w, c)}: the decoded images (predict.classify with keep_images).
        counts: dict. `verdicts.counts`, with what report_test_split added in test-split mode.
        classes: list[str]. The run's classes.
        run: str. The run folder or model file, as given.
        settings: dict. {"temperature", "min_confidence", "scan_rule"}, as the results file has them, and optionally
            "data_note": one line shown under the title when not empty (e.g. `runs.data_note(config)` of the run).
        attention: callable | None. jobs [(input index, slice index or None)] -> maps (jobs, cross-attends, gh,
            gw): driver._attention_maps bound to the model and images. None: no attention pictures. Defaults to None.

    Raises:
        UsageError: when the file cannot be written.
    """
    cards, note = _cards(scans, classes, inputs, results, images, attention)
    failed = [(r.path, r.error) for r in results if r.error is not None]
    failed_html = ("<ul class='failed'>" + "".join(
        f"<li data-file='{_text(p)}'><code class='name'>{_breakable(display_path(p))}</code>: {_text(e)}</li>"
        for p, e in failed)
        + "</ul>") if failed else "<p class='note'>None: every input was classified.</p>"
    test_split = ""
    if "accuracy" in counts:
        test_split = (f"<p id='test-split' data-accuracy='{counts['accuracy']!r}'>Test split: accuracy "
                      f"{counts['accuracy']:.4f} per image; {counts['scan_accuracy']:.4f} of the scans right by "
                      "their most probable side.</p>")
    what = ("the run's test split" if test_split else
            f"{len(inputs):,} input{'s' if len(inputs) != 1 else ''} (files, volumes or DICOM series) found from "
            "the command line")
    run_facts = _kv([
        ("run", f"<code>{_text(run)}</code>"),
        ("classes", _text(", ".join(classes))),
        ("temperature", f"{settings['temperature']:.4f} <span class='note'>(calibrated probability = "
                        "softmax(logits / T), fitted on the validation split)</span>"),
        ("min confidence", f"{settings['min_confidence']:g} <span class='note'>(below it a scan is "
                           "uncertain, never a side)</span>"),
        ("scan rule", f"{_text(settings['scan_rule'])} <span class='note'>(a scan's probability from its "
                      "slices', metrics.scan_probabilities)</span>"),
        ("inputs", _text(what)),
    ], {"temperature": f' id="run-temperature" data-value="{settings["temperature"]!r}"',
        "min confidence": f' id="run-min-confidence" data-value="{settings["min_confidence"]!r}"',
        "scan rule": f' id="run-scan-rule" data-value="{_text(settings["scan_rule"])}"'})
    body = (f"<header><h1>Knee laterality: scan report</h1><p class='sub'>driver.py, run {_text(run)}</p>"
            "<nav><a href='#summary'>summary</a><a href='#cards'>scans</a><a href='#table'>table</a>"
            f"<a href='#failed'>failed inputs</a></nav>{_data_note_html(settings.get('data_note'))}</header>"
            f"<section id='run'><h2>Run</h2>{run_facts}</section>"
            f"<section id='summary'><h2>Summary</h2>{_counts_html(counts)}"
            f"<p>{_text(format_summary(counts, classes))}</p>{test_split}</section>"
            f"<section><h2>Scans</h2><p class='note'>Flagged first, then uncertain, then the rest in input order. "
            f"A flagged scan is a confident verdict that disagrees with its expected side.</p>{note}"
            f"<div id='cards' class='cards'>{cards}</div></section>"
            f"<section id='table'><h2>Table</h2>{_table(scans, classes)}</section>"
            f"<section id='failed'><h2>Failed inputs ({len(failed):,})</h2>{failed_html}</section>")
    _write(path, _page("Knee laterality: scan report", body), "--report")


# === The run report (train.py, python -m perceiver.htmlreport RUN) ===
def _png_uri(path):
    return _data_uri(pathlib.Path(path).read_bytes(), "image/png")


def _figure(run_dir, name, caption):
    path = run_dir / name
    if not path.is_file():
        return f"<p class='note'>{_text(name)} is not in this run folder.</p>"
    return (f"<figure><img alt='{_text(caption)}' src='{_png_uri(path)}'><figcaption>{_text(caption)} "
            f"(<code>{_text(name)}</code>)</figcaption></figure>")


def _value(v):
    if isinstance(v, (dict, list)):
        return f"<code>{_text(json.dumps(v))}</code>"
    return _text("" if v is None else v)


def _settings_table(title, section):
    rows = "".join(f"<tr><td>{_text(k)}</td><td>{_value(v)}</td></tr>" for k, v in (section or {}).items())
    return f"<div><h3>{_text(title)}</h3><table>{rows}</table></div>"


def _split_table(run_dir, config, classes):
    """Patients, scans and images per split, and images per label, from split.csv."""
    path = run_dir / runs.SPLIT
    if not path.is_file():
        return f"<p class='note'>{runs.SPLIT} is not in this run folder.</p>"
    # paths are only counted here, so any folder will do as the root of relative ones; the files need not exist
    found, split = records.read_manifest(path, root=str(runs.data_root(config, regenerate=False)))
    labels = classes or sorted({r.label for r in found})
    head = ("<tr><th>split</th><th class='num'>patients</th><th class='num'>scans</th><th class='num'>images</th>"
            + "".join(f"<th class='num'>{_text(c)}</th>" for c in labels) + "</tr>")
    rows = []
    for name in (*records.SPLITS, "total"):
        chosen = [r for r in found if name == "total" or split[r.path] == name]
        cells = [len({r.patient for r in chosen}), len({r.scan for r in chosen}), len(chosen),
                 *[sum(r.label == c for r in chosen) for c in labels]]
        keys = ["patients", "scans", "images", *[f"images-{c}" for c in labels]]
        rows.append(f"<tr id='split-{name}'><td>{name}</td>" + "".join(
            f"<td class='num' data-key='{_text(k)}' data-count='{v}'>{v:,}</td>" for k, v in zip(keys, cells))
            + "</tr>")
    return (f"<table id='split'>{head}{''.join(rows)}</table><p class='note'>Split by patient: every image of a "
            "patient is in one split. (A patient with both knees counts once per split; scans are patient, visit "
            "and side.)</p>")


def _history_table(run_dir, best_epoch):
    rows = runs.read_history(run_dir / runs.HISTORY)
    if not rows:
        return f"<p class='note'>{runs.HISTORY} is not in this run folder.</p>"
    columns = [c for c in runs.HISTORY_COLUMNS if c in rows[0]]

    def cell(c, v):
        try:
            x = float(v)
        except ValueError:
            return f"<td>{_text(v)}</td>"
        text = f"{int(x)}" if c == "epoch" else (f"{x:.3g}" if c == "learning_rate" else
                                                  f"{x:.1f}" if c == "seconds" else f"{x:.4f}")
        return f"<td class='num'>{text}</td>"

    body = "".join(f"<tr class='{'best' if str(r.get('epoch')) == str(best_epoch) else ''}'>"
                   + "".join(cell(c, r.get(c, "")) for c in columns) + "</tr>" for r in rows)
    head = "".join(f"<th class='num'>{_text(c)}</th>" for c in columns)
    return (f"<table id='history'><tr>{head}</tr>{body}</table><p class='note'>The highlighted epoch's weights "
            "(lowest validation loss) are the ones tested and kept as model.weights.h5.</p>")


def _confusion_table(cm):
    classes, counts = cm["classes"], cm["counts"]
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th class='num'>{_text(c)}</th>" for c in classes) + "</tr>"
    rows = "".join(f"<tr><th>{_text(t)}</th>" + "".join(
        f"<td class='num' id='confusion-{_text(t)}-{_text(p)}' data-count='{int(v)}'>{int(v):,}</td>"
        for p, v in zip(classes, row)) + "</tr>" for t, row in zip(classes, counts))
    return f"<table id='confusion'>{head}{rows}</table>"


def _metric_rows(m):
    """(id, name, value, shown, definition) for each test metric in metrics.json that the run has."""
    from perceiver.metrics import shown  # here: scipy and scikit-learn load in ~1.2 s, and driver.py imports this module
    # an undefined figure is null with a "<name>_undefined" reason (metrics' docstring): shown as "undefined (why)"
    rows = [("accuracy", "accuracy per image", m["accuracy"], f"{shown(m, 'accuracy')} ({m['correct']:,}/"
             f"{m['images']:,} images)", "the share of test images whose most probable class is the true one"),
            ("loss", "test loss", m["loss"], shown(m, "loss"), m.get("loss_definition", "mean cross-entropy")),
            ("roc_auc", "ROC-AUC", m["roc_auc"], shown(m, "roc_auc"),
             "area under the ROC curve: the chance that a random image of the positive class scores above a random "
             f"other image ({m.get('roc_auc_definition', '')})")]
    for key, name in (("per_patient", "per-patient vote"), ("per_scan", "per-scan verdict")):
        if key in m:
            g = m[key]
            rows.append((f"{key}_accuracy", f"{name} accuracy", g["accuracy"], f"{shown(g, 'accuracy')} "
                         f"({g['correct']:,}/{g['total']:,})", g.get("definition", "")))
    c = m.get("calibration")
    if c:
        d = c.get("definitions", {})
        rows.append(("temperature", "temperature", c["temperature"], f"{c['temperature']:.4f}",
                     f"T in softmax(logits / T), fitted on the {c.get('fitted_on', 'validation split')} by "
                     "minimising the negative log-likelihood; accuracy does not change"))
        for key, name in (("ece", "ECE"), ("brier", "Brier score"), ("nll", "negative log-likelihood")):
            for when, label in (("test_before", "raw softmax"), ("test_after", "calibrated")):
                if key in c.get(when, {}):
                    v = c[when][key]
                    rows.append((f"{key}_{when.split('_')[1]}", f"{name} ({label})", v, f"{v:.4f}",
                                 d.get(key, "")))
        u = c.get("uncertain_at_min_confidence", {})
        for level in ("slices", "scans"):
            if level in u:
                s = u[level]
                rest = (f", the rest {s['accuracy_of_classified']:.4f} right ({s['correct']:,}/{s['classified']:,})"
                        if s["classified"] else ", none left")
                rows.append((f"uncertain_{level}", f"uncertain {level} at {c['min_confidence']:g}",
                             s["uncertain"], f"{s['uncertain']:,}/{s['total']:,}{rest}",
                             f"{level} whose calibrated probability is below the confidence threshold, which "
                             "driver.py answers 'uncertain'; the accuracy is that of the others"))
    rows.append(("best_epoch", "best epoch", m["best_epoch"], f"{m['best_epoch']} of {m.get('epochs_run', '?')}",
                 "the epoch with the lowest validation loss, whose weights every test metric scores"))
    return rows


def run_report(run_dir, out=None):
    """Writes the run report of a finished run folder from its files alone (no model is loaded).

    Args:
        run_dir: str | pathlib.Path. The run folder.
        out: str | pathlib.Path | None. The HTML file. Defaults to RUN_DIR/report.html.

    Returns:
        pathlib.Path: the file written.

    Raises:
        UsageError: when the folder is no finished run (no config.json or metrics.json) or the file cannot be written.
    """
    run_dir = pathlib.Path(run_dir)
    config = runs.read_config(run_dir)
    metrics_path = run_dir / runs.METRICS
    if not metrics_path.is_file():
        raise UsageError(f"{run_dir} has no {runs.METRICS}: the run has not finished its evaluation, so there is "
                         "nothing to report yet.")
    try:
        m = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{metrics_path} is not readable JSON ({e}); restore it or train the run again.") from None
    classes = list(config["data"].get("classes", []))
    command = config.get("command", "")
    command = " ".join(command) if isinstance(command, list) else command
    title = f"Training run {run_dir.resolve().name}"
    facts = _kv([("command", f"<code>{_text(command)}</code>"), ("classes", _text(", ".join(classes))),
                 ("preset", _text(config.get("train", {}).get("preset", "?"))),
                 ("parameters", f"{config.get('parameters', 0):,}"), ("seed", _text(config.get("seed", ""))),
                 ("backend", _text(config.get("backend", ""))),
                 ("versions", _text(", ".join(f"{k} {v}" for k, v in config.get("versions", {}).items())))])
    metric_rows = "".join(
        f"<tr><td>{_text(name)}</td><td class='num' id='metric-{key}' "
        f"data-value='{'null' if value is None else repr(value)}'>{_text(text)}</td>"
        f"<td class='def'>{_text(definition)}</td></tr>" for key, name, value, text, definition in _metric_rows(m))
    curves = "".join(_figure(run_dir, name, f"Training and validation {what} per epoch, and the test {what} of the "
                             "kept epoch's weights") for _, name, what in CURVES)
    figures = (_figure(run_dir, runs.ROC_PLOT, "ROC on the test split")
               + _figure(run_dir, runs.RELIABILITY_PLOT, "Reliability: accuracy against confidence, before and after "
                         "temperature scaling"))
    body = (f"<header><h1>{_text(title)}</h1><p class='sub'>{m['images']:,} test images of held-out patients; "
            "written by train.py, or again by <code>python -m perceiver.htmlreport RUN</code></p>"
            "<nav><a href='#metrics'>test metrics</a><a href='#curves'>curves</a><a href='#split-section'>split</a>"
            f"<a href='#settings'>settings</a></nav>{_data_note_html(runs.data_note(config))}</header>"
            f"<section id='run'><h2>Run</h2>{facts}</section>"
            f"<section id='metrics'><h2>Test metrics</h2><table class='metrics'><tr><th>metric</th><th>value</th>"
            f"<th>what it is</th></tr>{metric_rows}</table>"
            f"<h3 style='margin-top:14px'>Confusion matrix (rows: true class, columns: predicted)</h3>"
            f"{_confusion_table(m['confusion_matrix'])}"
            f"<div class='figures'>{figures}</div></section>"
            f"<section id='curves'><h2>Curves</h2><div class='figures'>{curves}</div>"
            f"{_history_table(run_dir, m.get('best_epoch'))}</section>"
            f"<section id='split-section'><h2>Split</h2>{_split_table(run_dir, config, classes)}</section>"
            f"<section id='settings'><h2>Settings (config.json)</h2><div class='settings'>"
            f"{_settings_table('train', config.get('train'))}{_settings_table('model', config.get('model'))}"
            f"{_settings_table('data', config.get('data'))}</div></section>")
    out = pathlib.Path(out) if out is not None else run_dir / runs.REPORT
    _write(out, _page(title, body), "the run report")
    return out


def main(argv=None):
    return runs.folder_command(
        argv, prog="python -m perceiver.htmlreport", description="Write a training run's HTML report from its run "
        "folder (config.json, split.csv, history.csv, metrics.json and the plots).",
        options=[(("--out",), dict(default=None, help="the HTML file (default: RUN/report.html)"))],
        work=lambda args: f"wrote {run_report(args.run, args.out)}")


if __name__ == "__main__":
    sys.exit(main())
