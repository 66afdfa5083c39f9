"""Benchmark: the rules that turn a scan's slice probabilities into one verdict, on a run's test split.

    python bench/experiments/scan_rules.py          # goliath/, its calibration.json's temperature and threshold
    python bench/experiments/scan_rules.py --run runs/x --min-confidence 0.8

For each rule of `metrics.SCAN_RULES` (the mean of the calibrated slice probabilities, which driver.py and train.py
use; the share of slices each class wins; the summed log-odds): scans classified correctly, scans "uncertain" below
the threshold, accuracy of the confident rest, and the Brier score of the scan probabilities. Prints a Markdown table
and writes it with the numbers as JSON beside the run (scan_rules.json). bench/RESULTS.md quotes a measured table.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver import calibration  # noqa: E402
from perceiver import finish  # noqa: E402
from perceiver import metrics  # noqa: E402
from perceiver import runs  # noqa: E402
from perceiver.errors import run_command, start_command  # noqa: E402


def measure(logits, labels, scans, temperature, threshold):
    probs = metrics.calibrated(logits, temperature)
    rows = []
    for rule in metrics.SCAN_RULES:
        _, scan_probs, scan_labels, sizes = calibration.by_scan(probs, labels, scans, rule)
        unsure = calibration.uncertain_report(scan_probs, scan_labels, threshold)
        rows.append({"rule": rule, "scans": len(sizes), "slices": int(sum(sizes)),
                     "correct": int((scan_probs.argmax(axis=1) == scan_labels).sum()),
                     "uncertain": unsure["uncertain"], "accuracy_of_confident": unsure["accuracy_of_classified"],
                     "brier": calibration.brier_score(scan_probs, scan_labels),
                     "median_confidence": float(sorted(scan_probs.max(axis=1))[len(sizes) // 2])})
    return rows


def markdown(rows, threshold):
    lines = [f"| rule | scans correct | uncertain at p < {threshold:g} | accuracy of the confident | Brier | median "
             "confidence |", "|---|---|---|---|---|---|"]
    for r in rows:
        confident = "none left" if r["accuracy_of_confident"] is None else f"{r['accuracy_of_confident']:.4f}"
        lines.append(f"| {r['rule']} | {r['correct']}/{r['scans']} | {r['uncertain']} | "
                     f"{confident} | {r['brier']:.4f} | {r['median_confidence']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    start_command(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(common.REPO / "goliath"), help="run folder (default: goliath/)")
    p.add_argument("--min-confidence", type=float, default=None, help="threshold (default: the run's)")
    args = p.parse_args(argv)
    return run_command(lambda: scan_rules(args))


def scan_rules(args):
    loaded = runs.load_run(args.run)
    threshold = args.min_confidence or loaded.min_confidence or calibration.DEFAULT_MIN_CONFIDENCE
    logits, labels, scans = finish.split_logits(loaded, runs.data_root(loaded.config), "test")
    rows = measure(logits, labels, scans, loaded.temperature, threshold)
    text = markdown(rows, threshold)
    print(text)
    runs.atomic_write_json(pathlib.Path(args.run) / "scan_rules.json",
                           {"temperature": loaded.temperature, "min_confidence": threshold, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
