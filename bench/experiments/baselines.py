"""Benchmark: the Perceiver against two baselines, all three trained and scored on the same patient split.

    python bench/experiments/baselines.py                       # synthetic set: the Perceiver, then both baselines
    python bench/experiments/baselines.py --data /data/AKOA     # real AKOA slices
    python bench/experiments/baselines.py --perceiver-run runs/akoa-x   # a finished train.py run: its split, recipe
    python bench/experiments/baselines.py --only lr,cnn --perceiver-run runs/akoa-x
    python bench/experiments/baselines.py --epochs 3 --image-size 32 --perceiver-args "--preset tiny"   # a quick look
    python bench/experiments/baselines.py --cnn-lr 1e-3                    # the CNN with its own peak learning rate

Order of work: the Perceiver first (train.py in a child process, run folder OUT_DIR/perceiver, or the finished run
given by --perceiver-run); then its `split.csv` is the split for every row and its `config.json` the recipe for the
CNN; then the baselines:

- logistic regression: scikit-learn `LogisticRegression(C=--lr-c)` on the grey pixels (channel 0) of the images at
  the Perceiver's image size (64 x 64 by default), flattened, standardised with a `StandardScaler` fitted on the
  training patients' images. Fitted on the train split only (validation is not used).
- CNN (`build_cnn`): four blocks of 3x3 convolution (no bias) + BatchNorm + ReLU, two convolutions in each of the
  first two blocks and one in the last two, widths 32, 64, 96, 128, a 2x2 max-pool after each block, global average
  pooling, then one float32 Dense layer of logits: 233,186 parameters at 64 x 64 x 3. Trained exactly as train.py
  trains the Perceiver: the optimizer, warm-up and cosine schedule and loss of `recipe.py`, with the optimizer, peak
  learning rate, weight decay, warm-up, label smoothing, clipping, epochs, batch size, augmentation, mixed precision
  and seed that the Perceiver's `config.json` records (so the CNN follows train.py's defaults when they change), the
  same per-epoch batches (`dataset.make_dataset(..., epoch=e)`), and the same model selection: the weights of the
  epoch with the lowest validation loss are scored on test. `--cnn-lr` gives the CNN its own peak learning rate
  (default: the Perceiver's, which was tuned for the Perceiver); the JSON records which one each row used.
  To change the recipe of both, pass the train.py flags through `--perceiver-args` (e.g. `--perceiver-args
  "--no-augment --lr 1e-3"`); a single flag needs the `=` form: `--perceiver-args="--no-augment"`.

Every row is scored by `metrics.classification_metrics` on the test patients: per-image accuracy, ROC-AUC, the
per-knee majority vote (metrics' `per_patient`: the slices of each patient's knee), the per-scan vote (JSON only),
parameters (logistic regression: coefficients + intercepts) and training wall time (logistic regression: the fit;
CNN and Perceiver: the sum of the epochs' times, each timed as train.py times it: batches + fit + validation).
The Markdown table is printed to stdout; OUT_DIR/baselines.json and OUT_DIR/baselines.md hold it with the data
folder, the split, the image counts, the recipe, the date, the versions and the command. Progress goes to stderr.

Measured on the 2-core CPU (2026-11-29; bench/RESULTS.md has the reference set's table too),
`python bench/experiments/baselines.py`:

    | model | per-image accuracy | ROC-AUC | per-knee vote accuracy | parameters | training time (s) |
    |---|---|---|---|---|---|
    | logistic regression (grey pixels, C=0.01) | 0.8214 (345/420) | 0.8869 | 0.8750 (35/40) | 4,097 | 1.1 |
    | CNN (4 conv blocks, 32-64-96-128) | 0.9905 (416/420) | 0.9998 | 1.0000 (40/40) | 233,186 | 285.9 |
    | Perceiver (preset akoa-conv) | 0.9643 (405/420) | 0.9917 | 1.0000 (40/40) | 364,246 | 214.8 |
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import pathlib
import platform
import shlex
import sys
import time
import warnings

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver import dataset  # noqa: E402
from perceiver import metrics  # noqa: E402
from perceiver import phantom  # noqa: E402
from perceiver import runs  # noqa: E402
from perceiver.errors import UsageError, start_command  # noqa: E402

ROWS = ("lr", "cnn", "perceiver")
DEFAULT_OUT_DIR = common.REPO / "bench" / "results"
LR_MAX_ITER = 2000  # lbfgs iterations; enough to converge on 64 x 64 pixels at C=0.01 (the JSON records n_iter)
CNN_WIDTHS = (32, 64, 96, 128)
CNN_CONVS = (2, 2, 1, 1)  # 3x3 convolutions per block: two where they are cheap, so the last features see ~52 px
RECIPE_KEYS = ("optimizer", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "epochs", "batch_size",
               "clip_norm", "augment", "seed", "image_size", "channels")
# train.py flags that baselines.py sets itself for the child run, and where the user sets them instead
_OWN_FLAGS = {"--out": "--out-dir or --perceiver-run", "--resume": "--perceiver-run", "--seed": "--seed",
              "--data": "--data", "--split-manifest": "--split-manifest", "--epochs": "--epochs",
              "--image-size": "--image-size", "--phantom-patients": "--phantom-patients",
              "--phantom-slices": "--phantom-slices"}
TABLE_HEAD = ("model", "per-image accuracy", "ROC-AUC", "per-knee vote accuracy", "parameters", "training time (s)")


# === Settings ===


def build_parser():
    p = argparse.ArgumentParser(
        prog="bench/experiments/baselines.py",
        description="Logistic regression, a small CNN and the Perceiver on one patient split, in one table.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="AKOA folder or DIR/<class>/ images (default: the synthetic set `python train.py` uses, or "
                        "the data of --perceiver-run)")
    g.add_argument("--split-manifest", default=None,
                   help="a split.csv to train the Perceiver on (default: train.py splits by patient with --seed)")
    g.add_argument("--phantom-patients", type=int, default=phantom.DEFAULT_PATIENTS,
                   help=f"patients in the synthetic set (default: {phantom.DEFAULT_PATIENTS})")
    g.add_argument("--phantom-slices", type=int, default=phantom.DEFAULT_SLICES,
                   help=f"slices per synthetic scan (default: {phantom.DEFAULT_SLICES})")
    g.add_argument("--image-size", type=int, default=None,
                   help="images are resized to SIZE x SIZE for every row (default: train.py's, 64)")

    g = p.add_argument_group("perceiver")
    g.add_argument("--perceiver-run", default=None,
                   help="a finished train.py run folder to read instead of training one; its split and recipe are "
                        "used (default: train one in OUT_DIR/perceiver)")
    g.add_argument("--perceiver-args", default="",
                   help="more train.py flags for the child run, in one string, e.g. \"--preset tiny --lr 1e-3\"; "
                        "write a single flag as --perceiver-args=\"--no-augment\" (default: none)")
    g.add_argument("--epochs", type=int, default=None,
                   help="epochs of the Perceiver and so of the CNN (default: train.py's)")

    g = p.add_argument_group("baselines")
    g.add_argument("--only", default=",".join(ROWS),
                   help=f"comma-separated rows to run, of {', '.join(ROWS)} (default: {','.join(ROWS)})")
    g.add_argument("--lr-c", type=float, default=0.01,
                   help="inverse L2 strength C of the logistic regression (default: 0.01)")
    g.add_argument("--cnn-lr", type=float, default=None,
                   help="peak learning rate of the CNN (default: the Perceiver's, from its config.json)")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the split, the phantom, the initial weights and the batches (default: the seed of "
                        "--perceiver-run, else 0)")
    g.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR),
                   help="folder for baselines.json, baselines.md and the Perceiver's run (default: bench/results/)")
    return p


def check_args(args):
    """Fills in derived settings and refuses combinations that cannot give one split and one recipe."""
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in ROWS]
    if unknown or not args.only:
        raise UsageError(f"--only {','.join(unknown) or '(empty)'}: name rows among {', '.join(ROWS)}.")
    checks = [
        (args.lr_c > 0, f"--lr-c {args.lr_c} must be positive"),
        (args.cnn_lr is None or args.cnn_lr > 0, f"--cnn-lr {args.cnn_lr} must be positive"),
        (args.epochs is None or args.epochs >= 1, f"--epochs {args.epochs} must be at least 1"),
        (args.image_size is None or args.image_size >= 4, f"--image-size {args.image_size} must be at least 4"),
        (args.seed is None or args.seed >= 0, f"--seed {args.seed} must be zero or positive"),
        (args.phantom_patients >= 5, f"--phantom-patients {args.phantom_patients} must be at least 5"),
        (args.phantom_slices >= 1, f"--phantom-slices {args.phantom_slices} must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message + ".")
    if args.data is not None and not pathlib.Path(args.data).is_dir():
        raise UsageError(f"--data {args.data} is not a folder; pass the folder that holds the images.")
    if args.split_manifest is not None and not pathlib.Path(args.split_manifest).is_file():
        raise UsageError(f"--split-manifest {args.split_manifest} is not a file; pass a run's split.csv.")
    try:
        args.perceiver_argv = shlex.split(args.perceiver_args)
    except ValueError as e:
        raise UsageError(f"--perceiver-args {args.perceiver_args!r} cannot be split into flags ({e}).") from None
    for token in args.perceiver_argv:
        name = token.split("=")[0]
        # argparse takes a unique prefix (--ou for --out), so a prefix of one of ours is refused as well
        own = [flag for flag in _OWN_FLAGS if name.startswith("--") and len(name) > 2 and flag.startswith(name)]
        if own:
            raise UsageError(f"--perceiver-args must not hold {name}: baselines.py sets {own[0]} for train.py "
                             f"itself; use baselines.py's {_OWN_FLAGS[own[0]]}.")
    if args.perceiver_run is not None:
        given = [flag for flag, value in (("--split-manifest", args.split_manifest), ("--epochs", args.epochs),
                                          ("--image-size", args.image_size),
                                          ("--perceiver-args", args.perceiver_argv or None)) if value is not None]
        if given:
            raise UsageError(f"{given[0]} cannot be combined with --perceiver-run, whose split and recipe every row "
                             "uses; drop it, or leave out --perceiver-run to train a new Perceiver.")
    elif "cnn" in args.only and "perceiver" not in args.only:
        raise UsageError("the CNN is trained with the Perceiver's recipe, so --only without perceiver needs "
                         "--perceiver-run RUN, a finished train.py run folder.")
    return args


# === The Perceiver ===


def _read_json(path, what):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{what} {path} is not readable JSON ({e}); pass a run folder that train.py finished.") \
            from None


def read_perceiver_run(run_dir):
    """What the table needs from a finished train.py run folder: config, metrics, epoch seconds, split path."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"--perceiver-run {run_dir} is not a folder; pass a run folder written by train.py.")
    for name in (runs.CONFIG, runs.METRICS, runs.HISTORY, runs.SPLIT):
        if not (run_dir / name).is_file():
            raise UsageError(f"the Perceiver run {run_dir} has no {name}; pass a run folder that train.py finished.")
    config = _read_json(run_dir / runs.CONFIG, "the Perceiver's config")
    scores = _read_json(run_dir / runs.METRICS, "the Perceiver's metrics")
    settings = config.get("train") if isinstance(config, dict) else None
    missing = [k for k in RECIPE_KEYS if not isinstance(settings, dict) or k not in settings]
    if missing or "parameters" not in config or "data" not in config:
        lack = f"train.{missing[0]}" if missing else ("parameters" if "parameters" not in config else "data")
        raise UsageError(f"{run_dir / runs.CONFIG} has no {lack}; it was not written by this project's train.py.")
    try:
        with open(run_dir / runs.HISTORY, newline="") as f:
            seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError(f"{run_dir / runs.HISTORY} has no usable seconds column ({e}); pass a run folder that "
                         "train.py finished.") from None
    return dict(run_dir=run_dir, config=config, settings=settings, metrics=scores, seconds=seconds,
                split=run_dir / runs.SPLIT)


def train_perceiver(args, run_dir):
    """Runs train.py in a child process (stdout to our stderr, as progress) and returns its run folder."""
    run_dir = pathlib.Path(run_dir).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"{run_dir} already holds a Perceiver run; pass it with --perceiver-run to reuse it, or "
                         "choose another --out-dir.")
    cmd = [sys.executable, "train.py", "--out", str(run_dir), "--quiet", "--seed", str(args.seed)]
    if args.data is not None:
        cmd += ["--data", str(pathlib.Path(args.data).resolve())]
    else:
        cmd += ["--phantom-patients", str(args.phantom_patients), "--phantom-slices", str(args.phantom_slices)]
    if args.split_manifest is not None:
        cmd += ["--split-manifest", str(pathlib.Path(args.split_manifest).resolve())]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    if args.image_size is not None:
        cmd += ["--image-size", str(args.image_size)]
    cmd += args.perceiver_argv
    common.run_child(cmd, "perceiver")
    return run_dir


def perceiver_row(run):
    scores, settings = run["metrics"], run["settings"]
    return dict(key="perceiver", model=f"Perceiver (preset {settings.get('preset', '?')})",
                parameters=int(run["config"]["parameters"]), train_seconds=float(sum(run["seconds"])),
                scores=scores,
                details=dict(run_dir=common.portable(run["run_dir"]), lr=settings["lr"],
                             best_epoch=scores.get("best_epoch"), epochs_run=len(run["seconds"])))


# === Data ===


def load_data(args, run, settings):
    """The images of every split, with the Perceiver run's split when there is one."""
    if args.data is not None:
        root = pathlib.Path(args.data)
    elif run is not None:
        root = runs.data_root(run["config"], progress=sys.stderr.isatty())
    else:
        root = phantom.default_root(args.phantom_patients, args.phantom_slices, args.seed)
        common.log(f"data: synthetic knee set in {root}")
        phantom.generate(root, patients=args.phantom_patients, slices=args.phantom_slices, seed=args.seed,
                         progress=sys.stderr.isatty())
    manifest = run["split"] if run is not None else args.split_manifest
    size = int(settings["image_size"])
    data = dataset.prepare_data(root, ratios=dataset.DEFAULT_RATIOS, seed=args.seed, manifest=manifest,
                                size=(size, size), channels=int(settings["channels"]),
                                cache_dir=settings.get("cache_dir"), progress=sys.stderr.isatty())
    counts = {s: len(data.paths[s]) for s in dataset.SPLITS}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise UsageError(f"the {empty[0]} split of {root} is empty ({counts}); add images or use another split.")
    if len(data.classes) < 2:
        raise UsageError(f"{root} has only the class {data.classes}; a classifier needs at least two.")
    source = common.portable(manifest) if manifest is not None else \
        f"computed by patient (seed {args.seed}, ratios {'/'.join(map(str, dataset.DEFAULT_RATIOS))})"
    common.log(f"data: {root}; train {counts['train']:,} / val {counts['val']:,} / test {counts['test']:,} images; "
         f"split {source}")
    return data, dict(root=common.portable(root), classes=list(data.classes), split_source=source, images=counts,
                      image_size=[size, size], channels=int(settings["channels"]), skipped=len(data.skipped))


def records_of_test(data):
    by_path = {r.path: r for r in data.records}
    return [by_path[p] for p in data.paths["test"]]


# === Logistic regression ===


def grey_pixels(images):
    """uint8 (n, h, w, c) -> float32 (n, h * w): channel 0 (the images are grey copied into every channel)."""
    images = np.asarray(images)
    return images[..., 0].reshape(len(images), -1).astype(np.float32)


def fit_logistic_regression(data, *, c, seed):
    """Standardised grey pixels -> LogisticRegression, fitted on the train split; returns the row."""
    t0 = time.perf_counter()
    scaler = StandardScaler().fit(grey_pixels(data.images["train"]))
    model = LogisticRegression(C=c, max_iter=LR_MAX_ITER, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(scaler.transform(grey_pixels(data.images["train"])), data.labels["train"])
    seconds = time.perf_counter() - t0
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if not converged:
        common.log(f"logistic regression: lbfgs did not converge in {LR_MAX_ITER} iterations; the row is still scored")
    probs = model.predict_proba(scaler.transform(grey_pixels(data.images["test"])))
    # classification_metrics takes logits; log-probabilities are logits (softmax gives the probabilities back)
    log_probs = np.log(np.clip(probs, 1e-12, 1.0))
    scores = metrics.classification_metrics(log_probs, data.labels["test"], records_of_test(data), data.classes, 0.0)
    parameters = int(model.coef_.size + model.intercept_.size)
    size = data.images["train"].shape[1:3]
    return dict(key="lr", model=f"logistic regression (grey pixels, C={c:g})", parameters=parameters,
                train_seconds=seconds, scores=scores,
                details=dict(C=c, max_iter=LR_MAX_ITER, n_iter=int(np.max(model.n_iter_)), converged=converged,
                             features=f"channel 0, {size[0]} x {size[1]}, flattened, StandardScaler on train"))


# === CNN ===


def build_cnn(input_shape, num_classes, widths=CNN_WIDTHS, *, convs=CNN_CONVS, dtype=None):
    """A small VGG-style CNN: per block `convs[i]` x (3x3 conv, no bias -> BatchNorm -> ReLU), then a 2x2 max-pool;
    global average pooling; one Dense layer of float32 logits.

    Args:
        input_shape: tuple. (height, width, channels).
        num_classes: int. Logits out.
        widths: tuple[int]. Filters of each block. Defaults to (32, 64, 96, 128).
        convs: tuple[int]. 3x3 convolutions in each block. Defaults to (2, 2, 1, 1).
        dtype: str | None. Dtype policy of the hidden layers ("mixed_bfloat16", ...); the logits stay float32.
            Defaults to None (float32).
    """
    import keras  # here, not at the top: start_command quiets TensorFlow's start-up lines before it loads

    if len(widths) != len(convs):
        raise ValueError(f"widths {tuple(widths)} and convs {tuple(convs)} must name the same number of blocks")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for block, (width, n) in enumerate(zip(widths, convs), start=1):
        for i in range(1, n + 1):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                                    dtype=dtype, name=f"block{block}_conv{i}")(x)
            x = keras.layers.BatchNormalization(dtype=dtype, name=f"block{block}_bn{i}")(x)
            x = keras.layers.ReLU(dtype=dtype, name=f"block{block}_relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, dtype=dtype, name=f"block{block}_pool")(x)  # (batch, h / 2, w / 2, width)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="pool")(x)  # (batch, widths[-1])
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="cnn_baseline")


def _augmentation(settings):
    augment = dataset.Augment.from_settings(settings)
    return f"on ({augment.describe()})" if augment else "off"


def cnn_recipe(settings, cnn_lr):
    """The settings of train.py's recipe that the CNN is trained with, from the Perceiver's config.json."""
    cnn_settings = {k: settings[k] for k in RECIPE_KEYS}
    cnn_settings.update(flip_swap=bool(settings.get("flip_swap", False)),
                        **{key: settings.get(key) for key in dataset.Augment.SETTINGS},
                        mixed_precision=settings.get("mixed_precision", "off"), xla=settings.get("xla"),
                        perceiver_lr=settings["lr"], cnn_lr=settings["lr"] if cnn_lr is None else cnn_lr)
    return cnn_settings


def train_cnn(data, cnn_settings, *, seed):
    """Trains build_cnn with train.py's epoch loop and model selection; returns the row."""
    import keras

    from perceiver import recipe

    classes = data.classes
    batch, epochs = int(cnn_settings["batch_size"]), int(cnn_settings["epochs"])
    steps = math.ceil(len(data.paths["train"]) / batch)
    dtype = {"off": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}.get(cnn_settings["mixed_precision"])
    keras.utils.set_random_seed(seed)
    model = build_cnn(data.images["train"].shape[1:], len(classes), dtype=dtype)
    model.compile(
        optimizer=recipe.make_optimizer(
            optimizer=cnn_settings["optimizer"], lr=cnn_settings["cnn_lr"], weight_decay=cnn_settings["weight_decay"],
            warmup_epochs=cnn_settings["warmup_epochs"], epochs=epochs, steps_per_epoch=steps,
            clip_norm=cnn_settings["clip_norm"]),
        loss=recipe.make_loss(len(classes), cnn_settings["label_smoothing"]),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=cnn_settings["xla"] if isinstance(cnn_settings["xla"], bool) else "auto",
    )
    common.log(f"cnn: {model.count_params():,} parameters; {epochs} epochs of {steps} steps, batch {batch}, "
         f"{cnn_settings['optimizer']} lr {cnn_settings['cnn_lr']:g}")
    augment = dataset.Augment.from_settings(cnn_settings)
    val_ds = dataset.make_dataset(data.images["val"], data.labels["val"], batch_size=batch, training=False,
                                  class_names=classes)
    best_val, best_epoch, best_weights, seconds = math.inf, -1, None, []
    for epoch in range(epochs):
        t0 = time.time()
        train_ds = dataset.make_dataset(data.images["train"], data.labels["train"], batch_size=batch, training=True,
                                        seed=seed, epoch=epoch, augment=augment, class_names=classes)
        logs = model.fit(train_ds, validation_data=val_ds, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                         verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()]).history
        seconds.append(time.time() - t0)
        loss, val_loss = (float(logs[k][-1]) if logs.get(k) else math.nan for k in ("loss", "val_loss"))
        if not (math.isfinite(loss) and math.isfinite(val_loss)):
            common.log(f"cnn: epoch {epoch + 1}: the loss became NaN or infinite, so training stopped")
            break
        if val_loss < best_val:
            best_val, best_epoch, best_weights = val_loss, epoch + 1, model.get_weights()
        common.log(f"cnn: epoch {epoch + 1}/{epochs}  loss {loss:.4f}  val_loss {val_loss:.4f}  "
             f"val_acc {float(logs['val_accuracy'][-1]):.4f}  {seconds[-1]:.1f}s"
             f"{'  *best' if best_epoch == epoch + 1 else ''}")
    if best_weights is None:
        raise UsageError("the CNN's loss was NaN or infinite from its first epoch, so it has no weights to score; "
                         "lower --cnn-lr.")
    model.set_weights(best_weights)
    test_ds = dataset.make_dataset(data.images["test"], data.labels["test"], batch_size=batch, training=False,
                                   class_names=classes)
    logits = np.asarray(model.predict(test_ds, verbose=0), dtype=np.float64)
    scores = metrics.classification_metrics(logits, data.labels["test"], records_of_test(data), classes, 0.0)
    widths = "-".join(str(w) for w in CNN_WIDTHS)
    return dict(key="cnn", model=f"CNN ({len(CNN_WIDTHS)} conv blocks, {widths})",
                parameters=int(model.count_params()), train_seconds=float(sum(seconds)), scores=scores,
                details=dict(lr=cnn_settings["cnn_lr"], best_epoch=best_epoch, best_val_loss=best_val,
                             epochs_run=len(seconds), widths=list(CNN_WIDTHS), convs_per_block=list(CNN_CONVS)))


# === Table ===


def _finite(value):
    """JSON-safe copy: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarise_row(row):
    """A row as the JSON stores it: the table's figures plus metrics' per-image, per-knee and per-scan scores."""
    s = row["scores"]
    return dict(
        key=row["key"], model=row["model"],
        accuracy=s["accuracy"], correct=s["correct"], images=s["images"], roc_auc=s["roc_auc"],
        per_knee={k: s["per_patient"][k] for k in ("accuracy", "correct", "total")},
        per_scan={k: s["per_scan"][k] for k in ("accuracy", "correct", "total")},
        loss=s.get("loss"), confusion_matrix=s.get("confusion_matrix"),
        parameters=row["parameters"], train_seconds=round(row["train_seconds"], 2), details=row["details"],
    )


def _fraction(value, correct, total):
    return "n/a" if value is None else f"{value:.4f} ({correct}/{total})"


def markdown_table(rows):
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    for r in rows:
        cells = [r["model"], _fraction(r["accuracy"], r["correct"], r["images"]),
                 "n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.4f}",
                 _fraction(r["per_knee"]["accuracy"], r["per_knee"]["correct"], r["per_knee"]["total"]),
                 f"{r['parameters']:,}", f"{r['train_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(report):
    d, r = report["data"], report["recipe"]
    lines = ["# Baselines and the Perceiver on one patient split", "",
             f"- data: {d['root']} (classes {', '.join(d['classes'])}; {d['image_size'][0]} x {d['image_size'][1]} x "
             f"{d['channels']})",
             f"- split: {d['split_source']}; images train {d['images']['train']:,} / val {d['images']['val']:,} / "
             f"test {d['images']['test']:,}"]
    if r is not None:
        lines.append(
            f"- recipe of the CNN and the Perceiver (recipe.py): {r['optimizer']}, peak lr {r['perceiver_lr']:g} "
            f"(CNN {r['cnn_lr']:g}), weight decay {r['weight_decay']:g}, warm-up {r['warmup_epochs']:g} epoch(s) "
            f"then cosine, label smoothing {r['label_smoothing']:g}, {r['epochs']} epochs, batch {r['batch_size']}, "
            f"augmentation {_augmentation(r)}; weights of the lowest validation loss scored")
    lines += [f"- {report['date']}, Keras {report['versions']['keras']} ({report['versions']['backend']}), "
              f"scikit-learn {report['versions']['sklearn']}; command: {shlex.join(report['command'])}", "",
              markdown_table(report["rows"]), ""]
    return "\n".join(lines)


def versions():
    import keras

    out = {"python": platform.python_version(), "keras": keras.__version__, "backend": keras.backend.backend(),
           "sklearn": sklearn.__version__, "numpy": np.__version__}
    for name in ("tensorflow", "jax", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    return out


# === Main ===


def run(args, argv):
    out_dir = pathlib.Path(args.out_dir)
    perceiver = None
    if args.perceiver_run is not None:
        perceiver = read_perceiver_run(args.perceiver_run)
    elif "perceiver" in args.only:
        args.seed = 0 if args.seed is None else args.seed  # the child's seed, so the CNN's too
        perceiver = read_perceiver_run(train_perceiver(args, out_dir / "perceiver"))
    if args.seed is None:
        args.seed = int(perceiver["settings"]["seed"]) if perceiver else 0
    if perceiver is not None:
        settings = perceiver["settings"]
    else:  # --only lr without a Perceiver: train.py's image defaults
        size = args.image_size or dataset.DEFAULT_SIZE[0]
        settings = dict(image_size=size, channels=3)
    data, data_info = load_data(args, perceiver, settings)

    rows = []
    if "lr" in args.only:
        common.log("logistic regression: fitting ...")
        rows.append(fit_logistic_regression(data, c=args.lr_c, seed=args.seed))
    cnn_settings = cnn_recipe(perceiver["settings"], args.cnn_lr) if perceiver is not None else None
    if "cnn" in args.only:
        rows.append(train_cnn(data, cnn_settings, seed=args.seed))
    if "perceiver" in args.only:
        rows.append(perceiver_row(perceiver))
    rows = [summarise_row(r) for r in rows]
    test_counts = {r["key"]: r["images"] for r in rows}
    if len(set(test_counts.values())) > 1:
        common.log(f"warning: the rows were scored on different numbers of test images {test_counts}; the Perceiver's "
             "data folder has changed since its run")

    report = _finite(dict(
        rows=rows, data=data_info, recipe=cnn_settings,
        perceiver_run=common.portable(perceiver["run_dir"]) if perceiver else None, seed=args.seed,
        date=datetime.datetime.now().isoformat(timespec="seconds"), versions=versions(),
        command=common.command(__file__, argv),
    ))
    text = markdown_report(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(out_dir / "baselines.json", report)
    runs.atomic_write_text(out_dir / "baselines.md", text)
    print(text)
    common.log(f"wrote {out_dir / 'baselines.json'} and {out_dir / 'baselines.md'}")
    return 0


def main(argv=None):
    start_command(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    return common.run_script(lambda: run(check_args(build_parser().parse_args(argv)), argv))


if __name__ == "__main__":
    sys.exit(main())
