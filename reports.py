"""What driver.py reports: the verdict table, the summary counts, the results file (CSV or JSON), and the test split's
accuracy and confusion matrix. The classification itself is in driver.py; its `Result` objects are what these read.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib

import runs
from errors import UsageError
from metrics import confusion_counts

SIDES = ("left", "right")


def display_path(path):
    p = os.path.abspath(path)
    rel = os.path.relpath(p)
    return rel if not rel.startswith("..") else p


def flag_label(r, classes):
    sides = sorted(classes) == sorted(SIDES)
    return "WRONG SIDE?" if sides else "MISMATCH"


def format_table(results, classes, *, per_slice=False):
    """The plain-text table: file, predicted, probability, expected, flag (failures last, with their reasons)."""
    rows = []
    for r in results:
        name = display_path(r.path)
        if r.is_volume:
            name += f" (volume, {len(r.slices)} slices)"
        if r.error is not None:
            rows.append((name, "-", "-", r.expected or "-", f"failed: {r.error}"))
            continue
        rows.append((name, r.predicted, f"{r.probability:.4f}", r.expected or "-",
                     flag_label(r, classes) if r.flagged else ""))
        if per_slice and r.is_volume:
            for s in r.slices:
                flag = flag_label(r, classes) if r.expected is not None and s["predicted"] != r.expected else ""
                rows.append((f"  slice {s['slice']}", s["predicted"], f"{s['probability']:.4f}",
                             r.expected or "-", flag))
    header = ("file", "predicted", "probability", "expected", "flag")
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(4)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:>{widths[2]}}  "
             f"{header[3]:<{widths[3]}}  {header[4]}"]
    for row in rows:
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
                     f"{row[3]:<{widths[3]}}  {row[4]}".rstrip())
    return "\n".join(lines)


def summary(results, classes, ignored=0):
    """{"classified", "failed", "flagged", "ignored"} counts."""
    return {"classified": sum(r.error is None for r in results), "failed": sum(r.error is not None for r in results),
            "flagged": sum(r.flagged for r in results), "ignored": int(ignored)}


def format_summary(counts, classes):
    sides = sorted(classes) == sorted(SIDES)
    what = "possible wrong-side label" if sides else "mismatch with the expected class"
    text = (f"{counts['classified']:,} classified, {counts['failed']:,} failed, {counts['flagged']:,} {what}"
            f"{'s' if counts['flagged'] != 1 and sides else ''}")
    if counts.get("ignored"):
        n = counts["ignored"]
        text += f" ({n:,} other file{'s' if n != 1 else ''} ignored: not a supported type)"
    return text


def _result_dict(r):
    return {"file": r.path, "kind": r.kind, "predicted": r.predicted, "probability": r.probability,
            "probabilities": r.probabilities, "expected": r.expected, "expected_source": r.expected_source,
            "flagged": r.flagged, "error": r.error, "slices": r.slices}


def write_results(path, results, classes, *, fmt, run, counts, per_slice=False):
    """Writes the results as CSV (one row per input; with per_slice also one per volume slice) or JSON (schema 1:
    {"schema", "run", "classes", "summary", "results": [{"file", "kind", "predicted", "probability",
    "probabilities", "expected", "expected_source", "flagged", "error", "slices"}]})."""
    path = pathlib.Path(path)
    if path.parent and not path.parent.exists():
        raise UsageError(f"the folder of --results-file {path} does not exist.")
    if fmt == "json":
        text = json.dumps({"schema": 1, "run": str(run), "classes": list(classes), "summary": counts,
                           "results": [_result_dict(r) for r in results]}, indent=2) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "kind", "slice", "predicted", "probability", "expected", "expected_source", "flag",
                         "error", *[f"p_{c}" for c in classes]])
        for r in results:
            probs = r.probabilities or [""] * len(classes)
            writer.writerow([r.path, r.kind, "", r.predicted or "", "" if r.probability is None else
                             f"{r.probability:.6f}", r.expected or "", r.expected_source or "",
                             flag_label(r, classes) if r.flagged else "", r.error or "",
                             *[p if p == "" else f"{p:.6f}" for p in probs]])
            if per_slice and r.is_volume:
                for s in r.slices:
                    flag = flag_label(r, classes) if r.expected is not None and s["predicted"] != r.expected else ""
                    writer.writerow([r.path, r.kind, s["slice"], s["predicted"], f"{s['probability']:.6f}",
                                     r.expected or "", r.expected_source or "", flag, "",
                                     *[f"{p:.6f}" for p in s["probabilities"]]])
        text = buf.getvalue()
    try:
        runs.atomic_write_text(path, text)
    except OSError as e:
        raise UsageError(f"cannot write --results-file {path}: {e.strerror or e}.") from None



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


def report_test_split(results, classes, where, out):
    """Prints the test split's accuracy, confusion matrix, up to 10 misclassified images and every failure.

    Returns:
        dict: {"accuracy", "confusion_matrix"} for the results file's summary.
    """
    ok = [r for r in results if r.error is None]
    correct = sum(r.predicted == r.expected for r in ok)
    m = confusion_matrix(results, classes)
    print(f"test split of {where}: {len(ok):,} images", file=out)
    print(f"test split: accuracy {correct / max(len(ok), 1):.4f} ({correct:,}/{len(ok):,} images)", file=out)
    print(format_confusion(m, classes), file=out)
    wrong = [r for r in ok if r.predicted != r.expected]
    for r in wrong[:10]:
        print(f"  misclassified: {display_path(r.path)}  true {r.expected}, predicted {r.predicted} "
              f"(p={r.probability:.3f})", file=out)
    if len(wrong) > 10:
        print(f"  ... and {len(wrong) - 10:,} more (--results-file lists all)", file=out)
    for r in results:
        if r.error is not None:
            print(f"  failed: {display_path(r.path)}: {r.error}", file=out)
    return {"accuracy": correct / max(len(ok), 1), "confusion_matrix": m.tolist()}
