"""What driver.py reports: the verdict table (one row per scan), the summary counts, the results file (CSV or JSON:
scans and their slices), and the test split's accuracy and confusion matrix. The classification is in driver.py and
the per-scan verdicts in verdicts.py; their `Result` and `Scan` objects are what these read.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib

from perceiver import fileio
from perceiver import records
from perceiver import runs
from perceiver.errors import UsageError
from perceiver.metrics import confusion_counts
from perceiver.verdicts import IGNORED

SIDES = ("left", "right")


def display_path(path):
    p = os.path.abspath(path)
    rel = os.path.relpath(p)
    return rel if not rel.startswith("..") else p


def flag_label(r, classes):
    sides = sorted(classes) == sorted(SIDES)
    return "WRONG SIDE?" if sides else "MISMATCH"


def _slice_rows(scan, classes):
    """(file, slice index, predicted, probability, probabilities) of every classified slice of a scan; the index of
    an AKOA PNG is the slice number in its name ("" for another image); a DICOM series' slice names its own file."""
    for r in scan.members:
        if r.error is not None:
            continue
        info = None if r.is_volume else records.parse_akoa_name(os.path.basename(r.path))
        for k, q in enumerate(r.slice_probabilities):
            j = max(range(len(q)), key=lambda i: q[i])
            index = k if r.is_volume else ("" if info is None or info["slice"] is None else info["slice"])
            yield (r.files[k] if r.files else r.path), index, classes[j], float(q[j]), [float(v) for v in q]


def format_table(scans, classes, *, per_slice=False):
    """The plain-text table, one row per scan: scan, slices, verdict, probability, expected, flag (with
    `per_slice`, its slices under it); a scan whose every file failed shows why."""
    rows = []
    for scan in scans:
        name = display_path(scan.name)
        if scan.verdict == "failed":
            reasons = "; ".join(sorted({r.error for r in scan.members if r.error}))
            rows.append((name, "-", "-", "-", scan.expected or "-", f"failed: {reasons}"))
            continue
        note = f" ({scan.failed} file{'s' if scan.failed != 1 else ''} failed)" if scan.failed else ""
        flag = flag_label(scan, classes) if scan.flagged else (
            f"uncertain ({scan.predicted}?)" if scan.verdict == "uncertain" else "")
        rows.append((name, str(scan.slices), scan.verdict, f"{scan.probability:.4f}", scan.expected or "-",
                     (flag + note).strip()))
        if per_slice:
            for path, k, predicted, probability, _ in _slice_rows(scan, classes):
                label = f"  slice {k}" if k != "" else f"  {os.path.basename(path)}"
                rows.append((label, "", predicted, f"{probability:.4f}", "", ""))
    header = ("scan", "slices", "verdict", "probability", "expected", "flag")
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(5)]
    align = ("<", ">", "<", ">", "<")
    lines = ["  ".join(f"{header[i]:{align[i]}{widths[i]}}" for i in range(5)) + f"  {header[5]}"]
    for row in rows:
        lines.append(("  ".join(f"{row[i]:{align[i]}{widths[i]}}" for i in range(5)) + f"  {row[5]}").rstrip())
    return "\n".join(lines)


def format_summary(counts, classes):
    """One line: scans classified, uncertain, flagged, failed (and slices, files ignored)."""
    sides = sorted(classes) == sorted(SIDES)
    what = "possible wrong-side label" if sides else "mismatch with the expected class"
    n = counts["flagged"]
    text = (f"{counts['scans']:,} scan{'s' if counts['scans'] != 1 else ''} ({counts['slices']:,} slice"
            f"{'s' if counts['slices'] != 1 else ''}): "
            f"{counts['classified']:,} classified, {counts['uncertain']:,} uncertain, {n:,} {what}"
            f"{'s' if n != 1 and sides else ''}, {counts['failed']:,} failed")
    if counts.get("failed_files"):
        n = counts["failed_files"]
        text += f"; {n:,} input{'s' if n != 1 else ''} could not be classified"
    if counts.get("ignored"):
        m = counts["ignored"]
        reasons = counts.get("ignored_by_reason") or {"type": m}
        why = ", ".join(f"{n:,} {IGNORED[k][n != 1]}" for k, n in reasons.items() if k in IGNORED)
        text += f" ({m:,} other entr{'ies' if m != 1 else 'y'} ignored: {why})"
    return text


def _scan_dict(scan, classes):
    return {"scan": scan.name, "verdict": scan.verdict, "predicted": scan.predicted, "probability": scan.probability,
            "probabilities": scan.probabilities, "slices_used": scan.slices, "plane": scan.plane,
            "orientation": scan.orientation, "expected": scan.expected,
            "expected_source": scan.expected_source, "agreement": scan.agreement, "flagged": scan.flagged,
            "failed_files": [{"file": r.path, "error": r.error} for r in scan.members if r.error is not None],
            "slices": [{"file": path, "slice": k, "predicted": predicted, "probability": probability,
                        "probabilities": probs} for path, k, predicted, probability, probs in _slice_rows(scan, classes)]}


def write_results(path, scans, classes, *, fmt, run, counts, settings):
    """Writes the results as CSV or JSON.

    CSV: one row per scan (`level` "scan": verdict, calibrated probability, slices used, plane and orientation codes,
    expected side and agreement), then one row per slice (`level` "slice") and per file that failed (`level` "file").
    Plane and orientation are empty for inputs that record no geometry (images); see inputs.py and volumes.py.
    JSON (schema 2): {"schema", "run", "classes", "settings", "summary", "scans": [{"scan", "verdict", "predicted",
    "probability", "probabilities", "slices_used", "plane", "orientation", "expected", "expected_source",
    "agreement", "flagged",
    "failed_files": [{"file", "error"}], "slices": [{"file", "slice", "predicted", "probability",
    "probabilities"}]}]}.
    """
    path = pathlib.Path(path)
    if path.parent and not path.parent.exists():
        raise UsageError(f"the folder of --results-file {path} does not exist.")
    if fmt == "json":
        # strict: never the bare NaN that JSON does not have (driver.py makes a non-finite output a failure)
        text = fileio.json_text({"schema": 2, "run": str(run), "classes": list(classes), "settings": settings,
                                 "summary": counts, "scans": [_scan_dict(s, classes) for s in scans]})
    else:
        text = _csv_text(scans, classes)
    try:
        runs.atomic_write_text(path, text)
    except OSError as e:
        raise UsageError(f"cannot write --results-file {path}: {e.strerror or e}.") from None


def _csv_text(scans, classes):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["level", "scan", "file", "slice", "verdict", "predicted", "probability", "slices_used", "plane",
                     "orientation", "expected", "expected_source", "agreement", "flag", "error",
                     *[f"p_{c}" for c in classes]])

    def number(v):
        return "" if v is None else f"{v:.6f}"

    for s in scans:
        probs = s.probabilities or [None] * len(classes)
        writer.writerow(["scan", s.name, "", "", s.verdict, s.predicted or "", number(s.probability), s.slices,
                         s.plane or "", s.orientation or "", s.expected or "", s.expected_source or "", s.agreement,
                         flag_label(s, classes) if s.flagged else "", "", *map(number, probs)])
        for path, k, predicted, probability, q in _slice_rows(s, classes):
            writer.writerow(["slice", s.name, path, k, "", predicted, number(probability), "", "", "", s.expected or "",
                             s.expected_source or "", "", "", "", *map(number, q)])
        for r in s.members:
            if r.error is not None:
                writer.writerow(["file", s.name, r.path, "", "failed", "", "", "", "", "", s.expected or "",
                                 s.expected_source or "", "failed", "", r.error, *[""] * len(classes)])
    return buf.getvalue()


# === The test split ===
def confusion_matrix(results, classes):
    """(classes x classes) counts: rows the expected class, columns the predicted class (classified inputs only)."""
    index = {c: i for i, c in enumerate(classes)}
    pairs = [(index[r.expected], index[r.predicted]) for r in results if r.error is None and r.expected in index]
    true, predicted = zip(*pairs) if pairs else ((), ())
    return confusion_counts(true, predicted, len(classes))


def format_confusion(m, classes):
    width = max(8, *(len(c) for c in classes), len(f"{m.max():,}") if m.size else 1)
    corner = "true \\ predicted"
    lines = [f"{corner:<{max(16, width)}}" + "".join(f"  {c:>{width}}" for c in classes)]
    for c, row in zip(classes, m):
        lines.append(f"{c:<{max(16, width)}}" + "".join(f"  {v:>{width},}" for v in row))
    return "\n".join(lines)


def report_test_split(results, scans, classes, where, out):
    """Prints the test split's per-image accuracy, confusion matrix, per-scan verdicts (correct, uncertain, accuracy of
    the confident rest), up to 10 misclassified images and every failure.

    Returns:
        dict: {"accuracy", "confusion_matrix", "scan_accuracy", "scan_accuracy_of_classified"} for the summary.
    """
    ok = [r for r in results if r.error is None]
    correct = sum(r.predicted == r.expected for r in ok)
    m = confusion_matrix(results, classes)
    print(f"test split of {where}: {len(ok):,} images", file=out)
    print(f"test split: accuracy {correct / max(len(ok), 1):.4f} ({correct:,}/{len(ok):,} images)", file=out)
    print(format_confusion(m, classes), file=out)
    judged = [sc for sc in scans if sc.verdict != "failed"]
    right = sum(sc.predicted == sc.expected for sc in judged)
    sure = [sc for sc in judged if sc.verdict != "uncertain"]
    sure_right = sum(sc.verdict == sc.expected for sc in sure)
    print(f"test split: {right:,}/{len(judged):,} scans right by their most probable side; {len(judged) - len(sure):,} "
          f"uncertain; {sure_right:,}/{len(sure):,} of the confident right", file=out)
    wrong = [r for r in ok if r.predicted != r.expected]
    for r in wrong[:10]:
        print(f"  misclassified: {display_path(r.path)}  true {r.expected}, predicted {r.predicted} "
              f"(p={r.probability:.3f})", file=out)
    if len(wrong) > 10:
        print(f"  ... and {len(wrong) - 10:,} more (--results-file lists all)", file=out)
    for r in results:
        if r.error is not None:
            print(f"  failed: {display_path(r.path)}: {r.error}", file=out)
    return {"accuracy": correct / max(len(ok), 1), "confusion_matrix": m.tolist(),
            "scan_accuracy": right / max(len(judged), 1), "scan_accuracy_of_classified": sure_right / max(len(sure), 1)}
