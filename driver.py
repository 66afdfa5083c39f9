"""Classify knee MRI images as left or right with a trained Perceiver; check the side that files claim; show where the
model looked.

    python driver.py                                  # the reference run's test split: accuracy, confusion matrix
    python driver.py scans/                           # every image under scans/ (recursive): one row per scan
    python driver.py 'scans/**/*.png' knee.dcm vol.nii.gz --run runs/akoa   # globs, DICOM, NIfTI, another run
    python driver.py scans/ --expect left             # every input should be a left knee: flag the others
    python driver.py scans/ --results-file out.csv    # also write the table (csv, or json with .json / --results-format)
    python driver.py knee.png --explain explain/      # a PNG per input: the image beside each cross-attend's map
    python driver.py scans/ --report report.html      # one HTML file: counts, a card per scan, a sortable table
    python driver.py knee.png --run model.keras       # a whole saved model (loaded in safe mode)
    python driver.py --export knee.onnx               # the model with its pre-processing as one file (classifier.py)

With INPUTs, the slices are grouped into scans (verdicts.py) and the table has one row per scan (probability is the
scan's calibrated probability of its most probable side; expected is what the file names or DICOM header say, or
--expect; a confident disagreement is flagged as a possible wrong-side label, and below --min-confidence the verdict
is "uncertain"):

    scan                                                           slices  verdict    probability  expected  flag
    scans/OAI9001234_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz       40  left            0.9912  left
    scans/OAI9001235_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz       40  right           0.9630  left      WRONG SIDE?
    scans/OAI9001236_BaseLine_3_de3d1_SAG_3D_DESS_WE_RIGHT.nii.gz      40  uncertain       0.7712  right     uncertain (right?)
    knee.dcm                                                           24  left            0.9930  left
    notes.png                                                           -  -                    -  -         failed: not-image: ...
    5 scans (144 slices): 3 classified, 1 uncertain, 1 possible wrong-side label, 1 failed; 1 input could not be classified

Without INPUT, the test split recorded in the run's split.csv is classified and accuracy plus a confusion matrix
(rows: true class, columns: predicted) are printed as `test split: accuracy A (correct/total images)`, then the
per-scan verdicts; the README gives the reference run's figures.

Inputs: PNG, JPEG, TIFF and BMP files (preprocessed exactly as in training: `dataset.load_image` then
`dataset.normalize`); DICOM (.dcm, .dicom, or any other file whose content is DICOM, whatever its name: UID names,
IM000123, .IMA, I.001; single- or multi-frame)
through pydicom; NIfTI (.nii, .nii.gz) through nibabel. A DICOM or NIfTI file with more than one slice is a volume:
each slice is classified and the volume is one scan (`--per-slice` shows each slice). Single-frame DICOM files of one
folder that share a SeriesInstanceUID are one volume, sorted by position (inputs.group_dicom_series,
volumes.read_dicom_series). A volume cut in another plane than sagittal (by its ImageOrientationPatient or NIfTI
affine) is refused with one sentence naming the plane (inputs.check_plane); nothing is reoriented. A DICOM image that
cannot be a sagittal knee MR by its header (not MR, colour, a localizer, a mosaic, no orientation, ...:
volumes.check_header), a blank input (one value throughout) or one under 64 pixels on a side is reported as
"unsuitable: <reason>", never given a side (inputs.check_suitable). Every input fails alone: an unforeseen error is
that input's "internal error (...)" (`--debug` prints its traceback), and the rest are classified.
NIfTI slices are taken along the stored array's last axis, as stored (no reorientation): slice k is
`data[:, :, k]` with array axis 0 as image rows. That is how AKOA's PNGs were cut from their .nii.gz volumes
(`..._LEFT.nii.gz_17.png` is slice 17), so a volume gives the pictures the model was trained on; reorienting to
RAS+ would turn a knee's anterior side to the same side for left and right knees and mirror some slices relative to
the training images. 16-bit, signed and float slices are scaled so that their maximum becomes 255, exactly like
16-bit PNGs in training (DICOM's modality LUT or rescale slope/intercept is applied first; MONOCHROME1 is
inverted). The readers are in volumes.py.

Expected side (only when the run's classes are exactly left and right): `--expect`, else for DICOM the header's
ImageLaterality (0020,0062), else Laterality (0020,0060), else a side spelled in the file name (AKOA style: LEFT,
Right, R_I_G_H_T, ...).

Exit status: 0 every input was classified (uncertain verdicts included); 1 some input could not be classified (its
reason is printed, the others are classified); 2 a usage error (missing run, weights that do not fit, no input found,
unsupported file): one sentence on stderr; 3 only with --strict, when a possible wrong-side label was found; 4 only
with `--strict uncertain`, when a scan was uncertain and none was flagged. 3 and 4 take precedence over 1, a wrong or
unsure side being the more serious finding. Without --strict a flag is reported but exits 0.

Loading is strict and safe: a run folder's model is rebuilt from config.json and its weights loaded from the
`.weights.h5` file (plain HDF5 arrays, nothing unpickled); weights of another shape or preset are refused in one
sentence. A `.keras` file is loaded with `safe_mode=True` (no Python lambdas deserialised), after its checksum when one
is beside it. A run's `model.keras` (modules.PerceiverClassifier) carries its classes, temperature and threshold and
gives the run folder's answers; another `.keras` model's classes are `--classes`, or left,right for two outputs.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import pathlib
import sys
import time

import numpy as np
from tqdm import tqdm

from perceiver import calibration
from perceiver import classifier
from perceiver import dataset
from perceiver import fileio
from perceiver import htmlreport
from perceiver import metrics
from perceiver import runs
from perceiver import verdicts
from perceiver.errors import (EXIT_USAGE, UsageError, UserError,  # noqa: F401  (driver.UserError etc. for callers)
                              add_common_flags, drop_stdout, run_command, start_command)
from perceiver.inputs import InputError, display_image, find_inputs, test_split_inputs
from perceiver.plots import explain_figure
from perceiver.predict import DEFAULT_BATCH, Predictor, Result, classify  # noqa: F401  (driver.Result for callers)
from perceiver.reports import SIDES, flag_label, format_summary, format_table, report_test_split, write_results
from perceiver.volumes import DICOM_EXTENSIONS, NIFTI_EXTENSIONS

PROJECT = pathlib.Path(__file__).resolve().parent
DEFAULT_RUN = PROJECT / "goliath"
EXIT_OK, EXIT_FAILED, EXIT_WRONG_SIDE, EXIT_UNCERTAIN = 0, 1, 3, 4


# === Loading a model ===
def load(run=None, *, weights="best", classes=None):
    """Loads a run folder (rebuilt from config.json + weights) or a `.keras` file (safe mode): `classifier.load_model`
    with the shipped reference run as the default.

    Args:
        run: str | None. Run folder or `.keras` file. Defaults to the shipped reference run `goliath/`.
        weights: str. "best" or "last" weights of a run folder. Defaults to "best".
        classes: list[str] | None. Class names for a `.keras` file. Defaults to left, right for two outputs.

    Returns:
        runs.LoadedRun.

    Raises:
        UserError: with one sentence when the run cannot be used.
    """
    path = pathlib.Path(run) if run is not None else DEFAULT_RUN
    if run is None and not path.exists():
        raise UsageError(f"the shipped reference run {path.name}/ is not in this checkout; pass a run folder written "
                         "by train.py with --run DIR.")
    return classifier.load_model(path, weights=weights, classes=classes)


# === Explaining ===
def _explain_name(path, used, folder):
    """A file name in the --explain `folder` for input `path`, not yet in `used` (which it joins) nor in the folder."""
    base = os.path.basename(path)
    for ext in (".nii.gz",) + NIFTI_EXTENSIONS + DICOM_EXTENSIONS + (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    name, k = f"{base}.explain.png", 2
    while name in used or os.path.lexists(os.path.join(folder, name)):  # never over a file that came meanwhile
        name, k = f"{base}.explain-{k}.png", k + 1
    used.add(name)
    return name


def explain(loaded, inputs, results, images, out_dir, *, per_slice=False, progress=False):
    """Writes one explanation PNG per classified input (a volume: its middle slice, or every slice with per_slice).

    Returns:
        list[str] of the PNGs written.
    """
    out_dir = make_explain_folder(out_dir)
    jobs = _explain_jobs(results, per_slice)
    used, written = set(), []
    for (i, k), maps in tqdm(zip(jobs, _attention_maps(loaded.model, images, jobs)), total=len(jobs),
                             desc="explaining", unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True):
        r, item = results[i], inputs[i]
        try:
            gray = display_image(item, k)
        except (InputError, dataset.DataError, OSError) as e:
            print(f"warning: no explanation for {item.path}: {e}", file=sys.stderr)
            continue
        base = item.path
        if item.kind == "dicom-series":  # "folder (series UID)" -> "folder.series-UID"
            base = os.path.basename(os.path.dirname(os.path.abspath(item.files[0]))) + f".series-{item.series}"
        if k is None:
            pred, prob, stem = r.predicted, r.probability, base
        else:
            s = r.slices[k]
            pred, prob, stem = s["predicted"], s["probability"], f"{base}_slice{k}"
        where = f" slice {k} of {len(r.slices)}" if k is not None else ""
        expected = f"   expected {r.expected} ({r.expected_source})" if r.expected else ""
        flagged = r.expected is not None and pred != r.expected
        flag = f"   {flag_label(r, loaded.classes)}" if flagged else ""
        volume = (f"   volume: {r.predicted} p={r.probability:.3f}" if k is not None else "")
        path = out_dir / _explain_name(stem, used, out_dir)
        explain_figure(str(path), gray, maps, title=os.path.basename(item.path) + where,
                       subtitle=f"predicted {pred}  p={prob:.3f}{volume}{expected}{flag}", flagged=flagged)
        written.append(str(path))
    return written


def _explain_jobs(results, per_slice):
    """(input index, slice index or None) for each picture to explain: classified inputs only."""
    jobs = []
    for i, r in enumerate(results):
        if r.error is not None:
            continue
        if r.is_volume:
            ks = range(len(r.slices)) if per_slice else [len(r.slices) // 2]
            jobs += [(i, k) for k in ks]
        else:
            jobs.append((i, None))
    return jobs


def _attention_maps(model, images, jobs, batch_size=64):
    """(len(jobs), num_cross_attends, gh, gw) attention maps of the jobs' decoded images."""
    maps = []
    for start in range(0, len(jobs), batch_size):
        x = np.stack([images[i][0 if k is None else k] for i, k in jobs[start:start + batch_size]])
        maps.append(model.attention_heatmaps(dataset.normalize(x), batch_size=batch_size))
    return np.concatenate(maps) if maps else []


# === Command line ===
def build_parser():
    p = argparse.ArgumentParser(
        prog="driver.py",
        description="Classify knee MRI images (left vs right knee) with a trained Perceiver; without INPUT, evaluate "
                    "the run's test split.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image file, DICOM or NIfTI file, folder (searched recursively) or glob (default: the run's "
                        "test split)")
    g = p.add_argument_group("model")
    g.add_argument("--run", default=None,
                   help="run folder written by train.py, or a .keras file (default: goliath/, the reference run)")
    g.add_argument("--weights", default="best", choices=("best", "last"),
                   help="which weights of the run folder (default: best)")
    g.add_argument("--classes", default=None,
                   help="comma-separated class names of a .keras model (default: left,right for two outputs)")
    g = p.add_argument_group("checks")
    g.add_argument("--expect", default=None, choices=SIDES,
                   help="the side every input should be; others are flagged (default: from file names and DICOM "
                        "headers)")
    g.add_argument("--min-confidence", type=float, default=None, metavar="P",
                   help="below this calibrated probability a scan's verdict is 'uncertain', never a side (default: "
                        f"the run's calibration.json, else {calibration.DEFAULT_MIN_CONFIDENCE})")
    g.add_argument("--strict", nargs="?", const="flags", default=None, choices=("flags", "uncertain"),
                   help="exit with status 3 when a possible wrong-side label is found; '--strict uncertain' also "
                        "exits with 4 when a scan is uncertain (default: off, exit 0)")
    g.add_argument("--data-root", default=None,
                   help="folder the run's split.csv paths are relative to (default: the training data folder in "
                        "config.json)")
    g = p.add_argument_group("output")
    g.add_argument("--results-file", default=None, help="also write the results to this file (default: none)")
    g.add_argument("--results-format", default=None, choices=("csv", "json"),
                   help="format of --results-file (default: json for a .json file, else csv)")
    g.add_argument("--per-slice", action="store_true",
                   help="list every slice of a volume, and explain every slice (default: off, volumes only)")
    g.add_argument("--report", default=None, metavar="FILE",
                   help="also write a self-contained HTML report: the counts, a card per scan with its slices and "
                        "attention, a table that sorts and filters (default: none)")
    g.add_argument("--explain", default=None, metavar="OUTDIR",
                   help="write a PNG per input into OUTDIR, a new or empty folder: the image beside each "
                   "cross-attend's attention map (default: none)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    g = p.add_argument_group("export (no INPUT)")
    g.add_argument("--export", default=None, metavar="OUT",
                   help="write the --run model with its pre-processing, classes and calibration to OUT and exit "
                        "(classifier.py; never overwrites)")
    g.add_argument("--format", default=None, choices=classifier.FORMATS,
                   help="format of --export (default: from OUT: .keras, .onnx, .tflite, else a TensorFlow "
                        "SavedModel folder)")
    g = p.add_argument_group("speed")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"images per prediction batch "
                                                                         f"(default: {DEFAULT_BATCH})")
    g.add_argument("--workers", type=int, default=None, help="decoding threads (default: half the CPUs, at least 1)")
    g = p.add_argument_group("troubleshooting")
    g.add_argument("--debug", action="store_true",
                   help="print the traceback of an input's internal error on stderr, for a bug report (the input "
                        "fails alone either way; default: off)")
    add_common_flags(g)
    return p


def confidence_threshold(given, loaded, num_classes):
    """--min-confidence, else the run's stored default, else calibration.DEFAULT_MIN_CONFIDENCE; checked."""
    threshold = given if given is not None else loaded.min_confidence
    threshold = calibration.DEFAULT_MIN_CONFIDENCE if threshold is None else threshold
    if not 1.0 / num_classes <= threshold <= 1.0:
        source = ("--min-confidence" if given is not None
                  else f"the min_confidence in the run's {runs.CALIBRATION} (refit it, or pass --min-confidence)")
        raise UsageError(f"{source} {threshold:g} must be between {1.0 / num_classes:g} (always confident) and 1.")
    return float(threshold)


def check_outputs(args, inputs=()):
    """Checks every output path before any work, so that a typo costs no classification: the folder of
    --results-file and --report exists, the path is not a folder, and it is none of the inputs, no file of the run (a
    results file written over a scan or over model.weights.h5 would destroy it) and not the other output; the
    --explain folder is a new or empty folder (it is created now), and no two outputs are the same path.

    Raises:
        UsageError: naming the option and the path.
    """
    files = (("--results-file", args.results_file, "results.csv"), ("--report", args.report, "report.html"))
    for option, value, example in files:
        if value:
            path = pathlib.Path(value)
            folder = path.parent if str(path.parent) else pathlib.Path(".")
            if path.is_dir():
                raise UsageError(f"{option} {path} is a folder; pass a file name such as {path / example}.")
            if not folder.is_dir():
                raise UsageError(f"the folder of {option} {path} does not exist; create it or pass another path.")
            if not os.access(folder, os.W_OK):
                raise UsageError(f"cannot write {option} {path}: its folder is not writable.")
            _refuse_overwriting(path, inputs, pathlib.Path(args.run or DEFAULT_RUN), option)
    named = [(option, pathlib.Path(value).resolve()) for option, value in
             (("--results-file", args.results_file), ("--report", args.report), ("--explain", args.explain)) if value]
    for i, (option, path) in enumerate(named):  # the outputs must not replace each other either
        for other, other_path in named[i + 1:]:
            if path == other_path:
                raise UsageError(f"{option} and {other} are both {path}; pass a different path to each.")
    if args.explain is not None:
        check_explain_folder(args.explain)
        make_explain_folder(args.explain)


def _refuse_overwriting(path, inputs, run, option="--results-file"):
    """Refuses an output file that is one of the inputs, the run's .keras file, or one of its run folder's files."""
    if not path.exists():
        return
    target = path.resolve()
    files = [f for item in inputs for f in (item.files or (item.path,))]
    if any(pathlib.Path(f).resolve() == target for f in files):
        raise UsageError(f"{option} {path} is one of the inputs; writing there would destroy it, so pass another "
                         "path.")
    run = run.resolve()
    own = {run / name for name in runs.RUN_FILES} | {run / (name + runs.CHECKSUM_SUFFIX) for name in runs.RUN_FILES}
    if target == run or target in own:
        raise UsageError(f"{option} {path} is a file of the run {run}; writing there would destroy it, so pass "
                         "another path.")


def check_explain_folder(folder):
    """Refuses an --explain folder that already holds files: explanation images never replace a file this run did not
    write (an input named like an explanation was overwritten when the folder was the inputs' own), and the names
    of a run's images depend on its inputs, so a new or empty folder per run is the one rule that needs no guessing.

    Raises:
        UsageError: naming the folder, how many entries it holds and one of them.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return
    try:
        entries = sorted(p.name for p in folder.iterdir() if not fileio.is_leftover(p.name))
    except OSError as e:
        raise UsageError(f"cannot read the --explain folder {folder}: {e.strerror or e}.") from None
    if entries:
        raise UsageError(f"--explain {folder} already holds {len(entries):,} entr{'ies' if len(entries) > 1 else 'y'} "
                         f"(such as {entries[0]}), and explanations never replace a file; pass a new or empty folder.")


def make_explain_folder(folder):
    """Creates the --explain folder (and its parents) if needed; returns it as a Path.

    Raises:
        UsageError: when it is a file or cannot be created.
    """
    folder = pathlib.Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--explain {folder} is a file; pass a folder for the explanation images.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the --explain folder {folder}: {e.strerror or e}.") from None
    return folder


def run(args, out=None):
    """Runs the command line; returns the exit status. Raises UsageError for mistakes the user can fix.

    The results file, the report and the explanations are written before the table is printed, so a reader that
    closes the pipe early (`driver.py scans/ --results-file r.csv | head`) loses nothing; the rest of the table is
    then dropped quietly."""
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if classes is not None and (len(set(classes)) != len(classes) or not all(classes)):
        raise UsageError(f"--classes {args.classes!r} must be distinct, non-empty names separated by commas.")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 1.")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers} must be at least 1.")
    if args.export is not None or args.format is not None:
        return export(args, out)
    fmt = args.results_format or ("json" if str(args.results_file or "").lower().endswith(".json") else "csv")
    test_mode = not args.inputs
    inputs, ignored = find_inputs(args.inputs) if not test_mode else ([], None)  # before loading: a typo fails at once
    check_outputs(args, inputs)
    loaded = load(args.run, weights=args.weights, classes=classes)
    threshold = confidence_threshold(args.min_confidence, loaded, len(loaded.classes))
    if test_mode:
        inputs, ignored = test_split_inputs(loaded, args.data_root), 0
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    predictor = Predictor(loaded, args.batch_size)
    t0 = time.perf_counter()
    keep_images = args.explain is not None or args.report is not None
    classified = classify(predictor, inputs, expect=args.expect, workers=args.workers, progress=progress,
                          keep_images=keep_images, debug=args.debug)
    results, images = classified if keep_images else (classified, None)
    seconds = time.perf_counter() - t0
    scans = verdicts.group(results, loaded.classes, threshold)
    counts = verdicts.counts(scans, ignored)
    where = args.run or DEFAULT_RUN
    text = io.StringIO()  # printed last (see above)
    if test_mode:
        counts.update(report_test_split(results, scans, loaded.classes, where, text))
    else:
        print(format_table(scans, loaded.classes, per_slice=args.per_slice), file=text)
    print(format_summary(counts, loaded.classes), file=text)
    if progress:
        print(f"{counts['slices']:,} images in {seconds:.2f} s ({counts['slices'] / max(seconds, 1e-9):,.0f} "
              "images/s)", file=sys.stderr)
    note = runs.data_note(loaded.config)  # "Trained on synthetic data only: ..." when the run says so
    if note:
        print(note, file=text)
    settings = {"temperature": loaded.temperature, "min_confidence": threshold, "scan_rule": metrics.SCAN_RULE,
                "data_note": note}
    if args.results_file:
        write_results(args.results_file, scans, loaded.classes, fmt=fmt, run=where, counts=counts, settings=settings)
    if args.report:
        attention = (functools.partial(_attention_maps, loaded.model, images)
                     if hasattr(loaded.model, "attention_heatmaps") else None)  # a .keras file may hold another model
        htmlreport.scan_report(args.report, scans, inputs=inputs, results=results, images=images, counts=counts,
                               classes=loaded.classes, run=str(where), settings=settings, attention=attention)
    if args.explain is not None:
        written = explain(loaded, inputs, results, images, args.explain, per_slice=args.per_slice,
                          progress=progress)
        print(f"wrote {len(written):,} explanation image{'s' if len(written) != 1 else ''} to {args.explain}",
              file=text)
    _print_to_pipe(text.getvalue(), out)
    if args.strict and counts["flagged"]:
        return EXIT_WRONG_SIDE
    if args.strict == "uncertain" and counts["uncertain"]:
        return EXIT_UNCERTAIN
    return EXIT_FAILED if counts["failed"] or counts["failed_files"] else EXIT_OK


def export(args, out=None):
    """--export: the run's model as one self-describing file (classifier.export); nothing is classified."""
    if args.export is None:
        raise UsageError("--format applies only with --export OUT.")
    fmt = classifier.format_of(args.export, args.format)
    if args.inputs:
        raise UsageError("--export writes the model and classifies nothing; leave out the INPUTs, or run twice.")
    classifier.check_output(args.export, fmt)  # before the model loads (seconds)
    if args.classes is not None:
        raise UsageError("--export needs a run folder or a model.keras that names its classes; leave out --classes.")
    written = classifier.export(classifier.load(args.run or DEFAULT_RUN, weights=args.weights), args.export, fmt)
    _print_to_pipe(f"wrote {fmt}: {', '.join(written)}\n", out)
    return EXIT_OK


def _print_to_pipe(text, out=None):
    """Writes text to `out` (standard output by default); when the reader has gone (a closed pipe), drops the rest
    without a traceback. A full device is left to `errors.run_command`, which says so."""
    out = sys.stdout if out is None else out
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        if out is sys.stdout:  # Python flushes stdout again at exit: point it at /dev/null so that it stays quiet
            drop_stdout()
    except OSError as e:  # a full device: errors.run_command says so, naming what could not be written
        raise OSError(e.errno, e.strerror, "standard output" if out is sys.stdout else str(out)) from None


def main(argv=None):
    start_command(argv)  # TensorFlow's start-up lines stay out of the table (errors.quiet_tensorflow)
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
