"""The end of a run: one sequence, the same for a run just trained (train.py) and for a refit of a finished one
(`python -m perceiver.calibration RUN`, `refit_run`):

    1. the temperature, fitted on the validation split (calibration.section), and calibration.json with its SHA-256
    2. reliability.png
    3. metrics.json: written whole from the test logits after training; after a refit its calibration and per-scan
       sections are fitted again and its other figures kept (they do not depend on the temperature)
    4. model.keras, with the classes and the calibration inside
    5. after training, acc.png, loss.png, confusion.png and roc.png (a refit leaves them: the curves, the confusion
       matrix and the ROC do not depend on the temperature)
    6. report.html, from those files (htmlreport.run_report)

Each file is written only when its content changes, so a refit that changes nothing leaves `git status` clean
(calibration.py's docstring says how float noise is told apart from a change).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from perceiver import calibration
from perceiver import classifier
from perceiver import dataset
from perceiver import htmlreport
from perceiver import metrics
from perceiver import plots
from perceiver import runs
from perceiver.errors import UsageError


def finish_run(run_dir, model, classes, val, test, *, min_confidence=calibration.DEFAULT_MIN_CONFIDENCE,
               trained=None):
    """The end of a run (the module docstring lists the steps, in order).

    Args:
        run_dir: Path. The run folder.
        model: modules.Perceiver with the best weights.
        classes: list[str].
        val: (logits, labels) of the validation split.
        test: (logits, labels, scans) of the test split.
        min_confidence: float. The default threshold stored with the run.
        trained: dict | None. After training: {"records": the test split's records, "label_smoothing": float,
            "history": history rows, "summary": train.py's facts of the run (best epoch, epochs run, ...)}; metrics.json
            and the plots are then written whole. None for a refit: the run's metrics.json, if it has one, keeps
            its figures but the calibration and per-scan sections.

    Returns:
        dict: metrics.json's content (after a refit of a run without metrics.json: just {"calibration": ...}).

    Raises:
        UsageError: when the run's metrics.json cannot be read back for a refit.
    """
    run_dir = pathlib.Path(run_dir)
    metrics_path = run_dir / runs.METRICS
    saved = None
    if trained is None and metrics_path.is_file():
        saved = _read_json(metrics_path)
        if saved is None:
            raise UsageError(f"{metrics_path} is not readable JSON; restore it or train the run again.")
    recorded = (saved or {}).get("calibration") or (_read_json(run_dir / runs.CALIBRATION) if trained is None
                                                    else None)
    section = calibration.section(*val, *test, min_confidence=min_confidence, recorded=recorded)
    write_calibration(run_dir, section)
    plots.plot_reliability(run_dir, section["reliability"]["before"], section["reliability"]["after"],
                           section["temperature"])
    logits, labels, scans = test
    if trained is not None:
        figures = metrics.classification_metrics(logits, labels, trained["records"], classes,
                                                 trained["label_smoothing"], temperature=section["temperature"])
        figures.update(**trained["summary"], calibration=section)
        _write_json_if_changed(metrics_path, figures)
    elif saved is not None:
        per_scan = metrics.per_scan(scans, labels, logits, section["temperature"])
        figures = {**saved, "calibration": section,
                   "per_scan": calibration.settled(per_scan, saved.get("per_scan"))}
        _write_json_if_changed(metrics_path, figures)
    else:
        figures = {"calibration": section}
    classifier.write_run_model(run_dir, model, classes, section["temperature"], min_confidence)
    if trained is not None:
        plots.plot_run(run_dir, trained["history"], figures)
        plots.plot_roc(run_dir, logits, labels, classes)
    if metrics_path.is_file():
        htmlreport.run_report(run_dir)  # it shows the calibration: written again (if it changed), never left stale
    return figures


def write_calibration(run_dir, section):
    """calibration.json (the section's RECORD_KEYS) with its SHA-256, when its content changes or has no checksum:
    it decides answers, so it is verified on load like the weights."""
    path = pathlib.Path(run_dir) / runs.CALIBRATION
    if _write_json_if_changed(path, {k: section[k] for k in calibration.RECORD_KEYS}) or not runs.checksum_path(
            path).is_file():
        runs.write_checksum(path)


def split_logits(loaded, data_root, split):
    """Logits, labels and scan ids of one split of a finished run (as recorded in its split.csv)."""
    records, assignment = dataset.read_manifest(loaded.run_dir / runs.SPLIT, root=str(data_root))
    chosen = [r for r in records if assignment[r.path] == split]
    result = dataset.load_images([r.path for r in chosen], size=loaded.image_size, channels=loaded.channels,
                                 progress=False)
    if result.skipped:
        raise UsageError(f"{len(result.skipped)} {split} images of {loaded.run_dir} cannot be read (first: "
                         f"{result.skipped[0][0]}: {result.skipped[0][1]}); restore the data folder.")
    logits = np.asarray(loaded.model.predict(dataset.normalize(result.images), batch_size=256, verbose=0), np.float64)
    return logits, dataset.labels_to_indices(chosen, loaded.classes), [r.scan for r in chosen]


def refit_run(run_dir, *, min_confidence=calibration.DEFAULT_MIN_CONFIDENCE):
    """The end of a finished run again (`finish_run` with its best weights): predicts its validation and test splits
    and fits the temperature anew; returns the calibration section."""
    run_dir = pathlib.Path(run_dir)
    loaded = runs.load_run(run_dir, check_model_file=False)  # the model.keras this refit writes again
    root = runs.data_root(loaded.config)
    val = split_logits(loaded, root, "val")[:2]
    test = split_logits(loaded, root, "test")
    figures = finish_run(run_dir, loaded.model, loaded.classes, val, test, min_confidence=min_confidence)
    return figures["calibration"]


def _read_json(path):
    """A run folder's JSON file as a dict, or None when it is missing or not a JSON object."""
    try:
        value = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json_if_changed(path, obj):
    """Writes `obj` as the run folder's JSON (runs.atomic_write_json) unless the file already holds the same values."""
    try:
        if json.loads(pathlib.Path(path).read_text()) == obj:
            return False
    except (OSError, ValueError):  # missing or damaged: written
        pass
    runs.atomic_write_json(path, obj)
    return True


def main(argv=None):
    def work(args):
        if not 0.5 <= args.min_confidence < 1:
            raise UsageError(f"--min-confidence {args.min_confidence} must be in [0.5, 1).")
        return calibration.describe(refit_run(args.run, min_confidence=args.min_confidence))

    return runs.folder_command(
        argv, prog="python -m perceiver.calibration", description="Fit a finished run's temperature on its "
        "validation split; report calibration on its test split.", work=work, loads_tensorflow=True,
        options=[(("--min-confidence",), dict(type=float, default=calibration.DEFAULT_MIN_CONFIDENCE,
                                               help="default threshold stored with the run: below it driver.py "
                                                    "answers 'uncertain'"))])


if __name__ == "__main__":
    sys.exit(main())
