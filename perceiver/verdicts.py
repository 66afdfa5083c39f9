"""One verdict per scan: which inputs belong to one scan, the scan's calibrated probability, and whether it is a side,
"uncertain", or a possible wrong-side label.

Scans: a NIfTI file, a multi-frame DICOM file or a DICOM series (its single-frame files gathered by
SeriesInstanceUID: inputs.group_dicom_series) is one scan by itself; AKOA slice PNGs are grouped by
the volume named in their file name (patient, visit, side: `OAI9001234_BaseLine_3_..._LEFT.nii.gz_7.png` is slice 7
of `OAI9001234_BaseLine_3_..._LEFT.nii.gz`) within their folder; any other image is a scan of one slice.

The scan's probabilities come from its slices' calibrated probabilities (predict.Predictor divides the logits by the
run's temperature) by the one rule `metrics.scan_probabilities` (the mean). Below the confidence threshold
(`--min-confidence`, default the run's calibration.json value) the verdict is "uncertain" and never a side; a
possible wrong-side label needs a confident verdict that disagrees with the expected side. An uncertain scan with an
expected side is listed as uncertain, not flagged.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from perceiver import metrics
from perceiver import records

UNCERTAIN = "uncertain"
_AKOA_SLICE = re.compile(r"^(?P<volume>.+?\.nii(?:\.gz)?)_(?P<slice>\d+)\.[A-Za-z]+$")


@dataclasses.dataclass
class Scan:
    """The verdict on one scan.

    Args:
        name: str. The scan as shown: a volume's path, or for AKOA slices `folder/<volume name>` (`scan_name`).
        members: list. The driver Results of its inputs (one per file), in input order.
        verdict: str. A class name, "uncertain", or "failed" (no slice could be classified).
        predicted: str | None. The most probable class (also for an uncertain scan); None when failed.
        probability: float | None. The scan's calibrated probability of `predicted`.
        probabilities: list[float] | None. Every class's, in the run's class order.
        slices: int. Slices that were classified.
        failed: int. Member inputs that could not be classified.
        expected, expected_source: str | None. The side the scan should be, and where that came from.
        flagged: bool. A confident verdict that disagrees with the expected side.
        plane, orientation: str | None. The plane ("sagittal": others are refused) and orientation codes its
            classified members record (volumes.py); None when they record no geometry (images) or disagree.
    """

    name: str
    members: list
    verdict: str = "failed"
    predicted: str | None = None
    probability: float | None = None
    probabilities: list | None = None
    slices: int = 0
    failed: int = 0
    expected: str | None = None
    expected_source: str | None = None
    flagged: bool = False
    plane: str | None = None
    orientation: str | None = None

    @property
    def agreement(self):
        """"agrees", "disagrees", "uncertain", "failed" or "" (no expected side)."""
        if self.verdict == "failed":
            return "failed"
        if self.expected is None:
            return ""
        if self.verdict == UNCERTAIN:
            return UNCERTAIN
        return "agrees" if self.verdict == self.expected else "disagrees"


def scan_key(result):
    """The scan a driver Result belongs to (see the module docstring)."""
    if result.is_volume or result.kind in ("nifti", "dicom-series"):
        return result.path
    folder, name = os.path.split(result.path)
    info = records.parse_akoa_name(name)
    if info is None or info["slice"] is None:
        return result.path
    return os.path.join(folder, info["scan"])  # (patient, visit, side), whatever the spelling of the side


def scan_name(result):
    """How a scan is shown: its volume file, or for AKOA slices `folder/<volume name>` from the first slice's name."""
    folder, name = os.path.split(result.path)
    m = _AKOA_SLICE.match(name)
    return os.path.join(folder, m.group("volume")) if m and scan_key(result) != result.path else result.path


def group(results, classes, min_confidence):
    """Scans of the driver Results, in order of first appearance, each with its verdict (see the module docstring)."""
    by_key = metrics.grouped([scan_key(r) for r in results])
    return [verdict(Scan(scan_name(results[idx[0]]), [results[i] for i in idx]), classes, min_confidence)
            for idx in by_key.values()]


def verdict(scan, classes, min_confidence):
    """Fills in a Scan's verdict from its members' slice probabilities."""
    ok = [r for r in scan.members if r.error is None]
    scan.failed = len(scan.members) - len(ok)
    expected = {(r.expected, r.expected_source) for r in scan.members if r.expected is not None}
    if len(expected) == 1:
        scan.expected, scan.expected_source = next(iter(expected))
    if not ok:
        return scan
    geometry = {(r.plane, r.orientation) for r in ok}
    if len(geometry) == 1:
        scan.plane, scan.orientation = next(iter(geometry))
    probs = np.concatenate([np.asarray(r.slice_probabilities, np.float64) for r in ok])
    p = metrics.scan_probabilities(probs)
    k = int(np.argmax(p))
    scan.predicted, scan.probability, scan.probabilities = classes[k], float(p[k]), [float(v) for v in p]
    scan.slices = len(probs)
    scan.verdict = classes[k] if p[k] >= min_confidence else UNCERTAIN
    scan.flagged = scan.expected is not None and scan.verdict not in (UNCERTAIN, scan.expected)
    return scan


IGNORED = {  # why inputs.find_inputs passed over an entry in a folder: (one, several), in the summary's words
    "type": ("file of another type", "files of another type"),  # a README beside the scans, say
    "special": ("pipe, socket or device", "pipes, sockets or devices"),  # opening one to sniff could wait forever
    "link": ("linked folder, not followed", "linked folders, not followed"),
    "unreadable": ("unreadable folder", "unreadable folders"),
}


def counts(scans, ignored=None):
    """The summary: scans classified (a confident side), uncertain, flagged (of the classified), failed; slices; and
    the entries passed over while searching the inputs (`ignored`: a Counter by reason, `IGNORED`), in all and
    by reason."""
    ignored = {k: int(n) for k, n in (ignored or {}).items() if n}
    return {"scans": len(scans), "classified": sum(s.verdict not in (UNCERTAIN, "failed") for s in scans),
            "uncertain": sum(s.verdict == UNCERTAIN for s in scans), "flagged": sum(s.flagged for s in scans),
            "failed": sum(s.verdict == "failed" for s in scans),
            "failed_files": sum(s.failed for s in scans), "slices": sum(s.slices for s in scans),
            "ignored": sum(ignored.values()), "ignored_by_reason": ignored}
