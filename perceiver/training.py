"""Training, the machinery of the `train.py` command (its door at the top of the project, whose docstring gives the
usage): settings and their checks, devices and distribution, the data, the model, the run folder, one `fit` over the
run with resumable state, and the end of the run (finish.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import pathlib
import signal
import sys
import time

import numpy as np

from perceiver import calibration
from perceiver import dataset
from perceiver import fileio
from perceiver import finish
from perceiver import phantom
from perceiver import runs
from perceiver.errors import UsageError, add_common_flags, run_command, start_command
from perceiver.metrics import shown

# Keras (and modules.py, recipe.py, TensorFlow) are imported inside the functions that use them, on purpose:
# setup_devices must run first (JAX reads XLA_FLAGS once, TensorFlow fixes its devices at first use), and main sets
# TF_CPP_MIN_LOG_LEVEL before TensorFlow loads.

PROJECT = runs.PROJECT  # the checkout: runs/ is made there by default
PRESET_NAMES = ("akoa-conv", "akoa", "paper", "tiny")  # modules.PRESETS's keys (a test checks), without importing Keras


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after a flag's help unless the default is None (its help then says what None means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


# === Settings ===


def build_parser():
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a Perceiver on knee MRI slices (left vs right) and write a run folder.",
        formatter_class=DefaultsFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="AKOA folder or DIR/<class>/ images; none: the synthetic knee set")
    g.add_argument("--phantom-patients", type=int, default=phantom.DEFAULT_PATIENTS,
                   help="patients in the synthetic set")
    g.add_argument("--phantom-slices", type=int, default=phantom.DEFAULT_SLICES,
                   help="slices per synthetic scan, spread over the whole knee (AKOA has 40)")
    g.add_argument("--image-size", type=int, default=64, help="images are resized to SIZE x SIZE")
    g.add_argument("--channels", type=int, default=3, choices=runs.CHANNELS, help="image channels")
    g.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions of the patients")
    g.add_argument("--split-manifest", default=None, help="reuse the split in this CSV (a run's split.csv)")
    g.add_argument("--cache-dir", default=None, help="decoded-image cache ($PERCEIVER_CACHE, else $XDG_CACHE_HOME/... or ~/.cache/...)")
    g.add_argument("--workers", type=int, default=None, help="decoding processes (None: CPU count)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="rotation, shift, scale, intensity and contrast jitter (never a plain flip)")
    g.add_argument("--flip-swap", action="store_true", default=False,
                   help="also flip images left-right AND swap their left/right labels (off: a mirrored knee is not "
                        "a real one)")
    defaults = dataset.Augment()
    g.add_argument("--aug-rotation", type=float, default=defaults.rotation_deg, metavar="DEG",
                   help="augmentation: rotation drawn from +-DEG degrees")
    g.add_argument("--aug-shift", type=float, default=defaults.shift, metavar="F",
                   help="augmentation: shift drawn from +-F of the width and of the height")
    g.add_argument("--aug-scale", type=float, default=defaults.scale, metavar="F",
                   help="augmentation: zoom drawn from 1 +- F")
    g.add_argument("--aug-brightness", type=float, default=defaults.brightness, metavar="F",
                   help="augmentation: intensity offset drawn from +-F of the pixel range")
    g.add_argument("--aug-contrast", type=float, default=defaults.contrast, metavar="F",
                   help="augmentation: contrast about each image's mean scaled by 1 +- F")

    g = p.add_argument_group("model")
    g.add_argument("--preset", default="akoa-conv", choices=PRESET_NAMES,
                   help="model preset: akoa-conv (Perceiver IO's conv stem), akoa (pixels), paper, or tiny (tests)")
    g.add_argument("--mixed-precision", default="off", choices=("off", "bf16", "fp16"),
                   help="compute in bfloat16 or float16 with float32 weights and logits")
    g.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the step with XLA (default: on for a GPU and under JAX; off for TensorFlow on a CPU, "
                        "where oneDNN's kernels trained faster, see bench/RESULTS.md)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=12, help="training epochs")
    g.add_argument("--batch-size", type=int, default=32, help="global batch size")
    g.add_argument("--optimizer", default="adamw", choices=("lamb", "adamw"), help="LAMB (the paper) or AdamW")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=1e-4,
                   help="decoupled weight decay (not on biases, norms, latents)")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up, then cosine decay to 0")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy")
    g.add_argument("--clip-norm", type=float, default=0.0,
                   help="clip each gradient to this norm (0: off; under --distribute mirrored it clips per replica)")
    g.add_argument("--early-stop", type=int, default=0, metavar="N",
                   help="stop when the validation loss has not improved for N epochs (0: off); the best weights "
                        "are kept either way")

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default: runs/<preset>-<date>-<time>)")
    g.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and the batches")
    g.add_argument("--resume", action="store_true", default=False,
                   help="continue the run in --out from its last completed epoch, with its saved settings")
    g.add_argument("--config", default=None, help="JSON file of settings (flag names with _); flags override it")
    g.add_argument("--distribute", default="none", choices=("none", "mirrored", "multi-worker", "data-parallel"),
                   help="several devices: mirrored/multi-worker (TensorFlow), data-parallel (JAX)")
    g.add_argument("--cpu-devices", type=int, default=1, help="split the CPU into this many logical devices")
    g.add_argument("--quiet", action="store_true", default=False, help="no progress bars, only summary lines")
    add_common_flags(g)
    return p


_NOT_SETTINGS = {"config", "resume", "quiet", "verbose"}  # how to run, not what to train
_RUN_ONLY = {"workers", "cache_dir"}  # saved, but they change how fast, not what is trained: --resume may change them


def parse_settings(argv=None):
    """Flags over config file over defaults; unknown config keys and wrong types are errors."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    model_overrides = {}
    if known.config:
        path = pathlib.Path(known.config)
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the config file {path}: {e}") from None
        if not isinstance(values, dict):
            raise UsageError(f"config file {path} must hold a JSON object of settings.")
        model_overrides = values.pop("model", {}) or {}
        unknown = sorted(set(values) - set(defaults) | (set(values) & _NOT_SETTINGS))
        if unknown:
            raise UsageError(f"config file {path} has unknown setting(s) {', '.join(unknown)}; "
                             f"use the flag names with _ (e.g. batch_size).")
        for key, value in values.items():
            default = defaults[key]
            ok = default is None or isinstance(value, type(default)) or (
                isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool))
            if not ok or (isinstance(default, int) and not isinstance(default, bool) and isinstance(value, bool)):
                raise UsageError(f"config file {path}: {key} must be a {type(default).__name__}, got {value!r}.")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    args.model_overrides = model_overrides
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.given = {**(values if known.config else {}), **_flags_given(args.argv)}  # what the user chose (--resume)
    return args


def _flags_given(argv):
    """The settings named on the command line (not their defaults), as {dest: value}."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def check_settings(args):
    checks = [
        (args.epochs >= 1, f"--epochs {args.epochs} must be at least 1"),
        (args.batch_size >= 1, f"--batch-size {args.batch_size} must be at least 1"),
        (args.lr > 0, f"--lr {args.lr} must be positive"),
        (args.weight_decay >= 0, f"--weight-decay {args.weight_decay} must be zero or positive"),
        (args.warmup_epochs >= 0, f"--warmup-epochs {args.warmup_epochs} must be zero or positive"),
        (0 <= args.label_smoothing < 1, f"--label-smoothing {args.label_smoothing} must be in [0, 1)"),
        (args.clip_norm >= 0, f"--clip-norm {args.clip_norm} must be zero or positive"),
        (args.early_stop >= 0, f"--early-stop {args.early_stop} must be zero (off) or positive"),
        (runs.MIN_IMAGE_SIZE <= args.image_size <= runs.MAX_IMAGE_SIZE,
         f"--image-size {args.image_size} must be from {runs.MIN_IMAGE_SIZE} to {runs.MAX_IMAGE_SIZE}"),
        (args.phantom_patients >= 5, f"--phantom-patients {args.phantom_patients} must be at least 5"),
        (args.phantom_slices >= 1, f"--phantom-slices {args.phantom_slices} must be at least 1"),
        (args.cpu_devices >= 1, f"--cpu-devices {args.cpu_devices} must be at least 1"),
        (args.seed >= 0, f"--seed {args.seed} must be zero or positive"),
        (args.xla is None or isinstance(args.xla, bool),
         f"xla must be true, false or null (automatic), got {args.xla!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message + ".")
    if args.preset not in PRESET_NAMES:  # a config file's preset skips argparse's choices
        raise UsageError(f"--preset {args.preset!r} is not one of {', '.join(PRESET_NAMES)}.")
    problem = dataset.Augment.setting_problem(vars(args))  # named by its flag, not by Augment's field
    if problem:
        raise UsageError(problem)
    args.ratios = dataset._parse_floats(args.split, 3, "--split")  # a DataError is a UserError: one sentence


# === Devices ===


def resolve_xla(args):
    """`--xla` as given, or the faster choice measured for this backend and device; stored back into `args`."""
    if args.xla is None:
        import keras

        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            args.xla = bool(tf.config.list_physical_devices("GPU"))  # CPU: oneDNN kernels beat XLA's here
        else:
            args.xla = backend == "jax"  # Keras runs JAX un-jitted without it; torch.compile stays opt-in
    return bool(args.xla)


def setup_devices(args):
    """Must run before Keras is imported: JAX reads XLA_FLAGS once, TensorFlow fixes its devices at first use."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if args.cpu_devices > 1 and backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}".strip()
    if backend == "tensorflow":
        import tensorflow as tf

        if args.cpu_devices > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_devices)


def distribution_scope(args):
    """A context for building the model, per --distribute; checks that the engine fits the backend."""
    import keras

    backend = keras.backend.backend()
    if args.distribute == "none":
        return contextlib.nullcontext(), 1
    if args.distribute in ("mirrored", "multi-worker"):
        if backend != "tensorflow":
            raise UsageError(f"--distribute {args.distribute} needs KERAS_BACKEND=tensorflow (it is {backend}); "
                             "under JAX use --distribute data-parallel.")
        import tensorflow as tf

        if args.distribute == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            strategy = tf.distribute.MirroredStrategy(devices=devices)
        else:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return strategy.scope(), strategy.num_replicas_in_sync
    if backend != "jax":
        raise UsageError(f"--distribute data-parallel needs KERAS_BACKEND=jax (it is {backend}); "
                         "under TensorFlow use --distribute mirrored.")
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return contextlib.nullcontext(), len(devices)


# === Data ===


def _check_manifest_found(manifest, root, data):
    """Refuses a manifest most of whose images are missing under the data folder: the wrong --data, not a split."""
    missing = sum(reason.startswith("missing") for _, reason in data.skipped)
    listed = missing + len(data.records)
    if listed and missing > listed // 2:
        raise UsageError(f"{missing:,} of the {listed:,} images that the manifest {manifest} lists are missing under "
                         f"{root}; pass the data folder it was written for with --data.")


def prepare(args, manifest):
    if args.data is None:
        root = phantom.default_root(args.phantom_patients, args.phantom_slices, args.seed)
        print(f"data: synthetic knee set in {root} ({args.phantom_patients} patients, {args.phantom_slices} slices "
              "per scan)", flush=True)
        phantom.generate(root, patients=args.phantom_patients, slices=args.phantom_slices, seed=args.seed,
                         progress=not args.quiet)
    else:
        root = pathlib.Path(args.data)
    t0 = time.time()
    data = dataset.prepare_data(  # a DataError is a UserError: one sentence from run_command
        root, ratios=args.ratios, seed=args.seed, manifest=manifest, size=(args.image_size, args.image_size),
        channels=args.channels, cache_dir=args.cache_dir, workers=args.workers,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    counts = {s: len(data.paths[s]) for s in dataset.SPLITS}
    if args.resume:  # the data the run started with, or a refusal in one sentence (dataset.check_same_data)
        dataset.check_same_data(manifest, data)
    elif manifest is not None:
        _check_manifest_found(manifest, root, data)
    for name, n in counts.items():
        if n == 0:
            fix = f"the manifest {manifest} gives it none" if manifest is not None else "add images or change --split"
            raise UsageError(f"the {name} split of {root} is empty ({counts}); {fix}.")
    if len(data.classes) < 2:
        raise UsageError(f"{root} has only the class {data.classes}; a classifier needs at least two.")
    print(f"data: {len(data.records):,} images of {len(data.classes)} classes {data.classes}; "
          f"train {counts['train']:,} / val {counts['val']:,} / test {counts['test']:,} images, split by patient "
          f"({data.source}); {len(data.skipped)} skipped; {len(data.passed_over)} folders not searched; "
          f"{sum(len(g) - 1 for g in data.duplicates or [])} duplicate images; loaded in {time.time() - t0:.1f} s"
          f"{' from cache' if data.from_cache else ''}", flush=True)
    for path, reason in data.skipped[:5]:
        print(f"  skipped {path}: {reason}")
    if len(data.skipped) > 5:
        print(f"  ... and {len(data.skipped) - 5} more (python dataset.py summary {root} lists them all)")
    return data


# === Model ===


def model_config(args, num_classes, channels):
    import keras

    from perceiver.modules import PerceiverConfig, default_attention_kernel

    size = (args.image_size, args.image_size, channels)
    kernel = default_attention_kernel(keras.backend.backend())  # chosen here, once: the layers never ask the backend
    try:
        return PerceiverConfig.preset(args.preset, **{"input_shape": size, "num_classes": num_classes,
                                                       "attention_kernel": kernel, **args.model_overrides})
    except (TypeError, ValueError) as e:
        raise UsageError(f"model settings: {e}") from None


# === Run folder ===


def prepare_run_folder(args):
    if args.out is None:
        if args.resume:
            raise UsageError("--resume needs --out, the run folder to continue.")
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = str(PROJECT / "runs" / f"{args.preset}-{stamp}")
    run_dir = pathlib.Path(args.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file; pass a folder for the run.")
    if args.resume:
        if not (run_dir / runs.STATE).is_file():
            raise UsageError(f"nothing to resume in {run_dir}: it has no {runs.STATE} (no epoch was completed).")
        if not (run_dir / runs.CONFIG).is_file():
            raise UsageError(f"{run_dir} has a {runs.STATE} but no {runs.CONFIG}, so the settings it was trained with "
                             "are unknown and it cannot be resumed; start a new run with another --out.")
        saved = runs.read_config(run_dir)["train"]
        _check_resume_flags(args, saved, run_dir)
        for key, value in saved.items():
            if key not in _RUN_ONLY or key not in args.given:
                setattr(args, key, value)
        args.resume, args.out = True, str(run_dir)
        return run_dir
    _refuse_a_folder_with_results(run_dir)
    return run_dir


def _refuse_a_folder_with_results(run_dir):
    if run_dir.exists() and any(not fileio.is_leftover(p.name) for p in run_dir.iterdir()):
        raise UsageError(f"run folder {run_dir} already exists and is not empty; choose another --out, or add "
                         "--resume to continue it.")


def _check_resume_flags(args, saved, run_dir):
    """--resume continues a run with the settings it was started with; a flag (or --config value) that asks for
    another value is refused, not silently ignored (except _RUN_ONLY flags, which apply)."""
    differ = [(key, value, saved[key]) for key, value in getattr(args, "given", {}).items()
              if key in saved and key not in _NOT_SETTINGS | _RUN_ONLY | {"out"} and value != saved[key]]
    if differ:
        said = ", ".join(f"--{k.replace('_', '-')} {v} (the run's: {w})" for k, v, w in differ)
        raise UsageError(f"--resume continues {run_dir} with the settings it was started with, and {said} "
                         "differs; drop it, or start a new run with another --out.")


def settings_dict(args):
    skip = _NOT_SETTINGS | {"ratios", "argv", "given"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def data_record(args, data):
    """config.json's "data" section: where the images came from, how they were split and scaled."""
    return {"root": runs.portable_root(data.root), "layout": data.layout, "classes": data.classes,
            "phantom": None if args.data else {"patients": args.phantom_patients, "slices": args.phantom_slices,
                                               "seed": args.seed},
            "image_size": [args.image_size, args.image_size], "channels": args.channels,
            "normalization": "x / 127.5 - 1 (dataset.normalize)",
            "images": {s: len(data.paths[s]) for s in dataset.SPLITS}, "skipped": len(data.skipped),
            "split_source": data.source}


# === Training ===


def compiled_model(args, mconfig, steps, scope):
    """The model, compiled with train.py's recipe, its optimizer built (so a resume state can be loaded into it)."""
    import keras  # lazy, like every Keras import here: setup_devices must run first

    from perceiver import recipe
    from perceiver.modules import build_model

    dtype = {"off": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[args.mixed_precision]
    with scope:
        model = build_model(mconfig, dtype=dtype)
        model.compile(
            optimizer=recipe.make_optimizer(
                optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                warmup_epochs=args.warmup_epochs, epochs=args.epochs, steps_per_epoch=steps,
                clip_norm=args.clip_norm),
            loss=recipe.make_loss(mconfig.num_classes, args.label_smoothing),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=resolve_xla(args),
        )
        model.optimizer.build(model.trainable_variables)
    return model


def epoch_callback(args, run_dir, model, mconfig, progress):
    """A Keras callback that, after every epoch, writes the run folder's record of it: the history row, the best and
    last weights, and the resume state (atomically, in that order, so a kill at any point resumes exactly).

    It also stops the run on a non-finite loss (the row is not kept) and, with `--early-stop N`, when the validation
    loss has not improved for N epochs. Both decisions depend only on the saved history, so a resumed run makes
    them at the same epoch as an uninterrupted one (Keras's EarlyStopping keeps its count in memory, which a resume
    would lose).
    """
    import keras

    from perceiver.modules import build_model

    # Weights files hold the model alone: Keras would add the optimizer's moments (2x the size) to a compiled
    # model's file, and --resume restores those from resume_state.npz instead.
    plain = build_model(mconfig)

    class EpochRecord(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history, self.best_val, self.best_epoch = progress
            self.stopped_by_nan = self.stopped_early = False

        def weights_only(self):
            plain.set_weights(self.model.get_weights())
            return plain

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"epoch": epoch + 1, "seconds": round(time.time() - self.t0, 2),
                   "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                row[key] = float(logs[key]) if key in logs else float("nan")
            if not all(math.isfinite(row[k]) for k in ("loss", "val_loss")):
                self.stop_on_nan(epoch)
                return
            self.history.append(row)
            if row["val_loss"] < self.best_val:
                self.best_val, self.best_epoch = row["val_loss"], epoch + 1
                runs.atomic_save_weights(self.weights_only(), run_dir / runs.BEST_WEIGHTS)
            runs.atomic_save_weights(self.weights_only(), run_dir / runs.LAST_WEIGHTS)
            runs.write_history(run_dir / runs.HISTORY, self.history)
            runs.save_state(run_dir / runs.STATE, self.model, epoch + 1, self.best_val, self.best_epoch)
            if os.environ.get("PERCEIVER_KILL_AFTER_EPOCH") == str(epoch + 1):  # for the resume test: a kill -9
                os.kill(os.getpid(), signal.SIGKILL)
            print(f"epoch {epoch + 1}/{args.epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
                  f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['learning_rate']:.2e}  "
                  f"{row['seconds']:.1f}s{'  *best' if self.best_epoch == epoch + 1 else ''}", flush=True)
            if args.early_stop and epoch + 1 - self.best_epoch >= args.early_stop and epoch + 1 < args.epochs:
                self.stopped_early = True
                self.model.stop_training = True
                print(f"early stop: no better validation loss for {args.early_stop} epochs (best: epoch "
                      f"{self.best_epoch}).", flush=True)

        def stop_on_nan(self, epoch):
            self.stopped_by_nan = True
            self.model.stop_training = True
            kept = (f"the best weights so far (epoch {self.best_epoch}) are kept in {run_dir / runs.BEST_WEIGHTS}"
                    if self.best_epoch > 0 else "no epoch had finished, so no weights were kept")
            print(f"epoch {epoch + 1}: the loss became NaN or infinite, so training stopped; {kept}; try a lower "
                  "--lr or --mixed-precision off.", file=sys.stderr)

    return EpochRecord()


def fit(args, run_dir, model, mconfig, data, steps, start, progress):
    """Trains epochs `start`..`args.epochs` in one `model.fit`; the batches of epoch e depend on (seed, e) only."""
    import keras

    record = epoch_callback(args, run_dir, model, mconfig, progress)
    stopped_early = args.early_stop and record.best_epoch > 0 and start - record.best_epoch >= args.early_stop
    if start >= args.epochs or stopped_early:
        record.stopped_early = bool(stopped_early)
        return record  # a resume of a run that had finished training (killed while it was being evaluated)
    classes = data.classes
    augment = dataset.Augment.from_settings(vars(args))
    train_ds = dataset.make_dataset(data.images["train"], data.labels["train"], batch_size=args.batch_size,
                                    training=True, seed=args.seed, epoch=start, epochs=args.epochs,
                                    augment=augment, class_names=classes)
    val_ds = dataset.make_dataset(data.images["val"], data.labels["val"], batch_size=args.batch_size,
                                  training=False, class_names=classes)
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(run_dir / runs.TENSORBOARD), write_graph=False,
                                              profile_batch=0)
    model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, initial_epoch=start, steps_per_epoch=steps,
              shuffle=False, verbose=0 if args.quiet or not sys.stdout.isatty() else 1,
              callbacks=[keras.callbacks.TerminateOnNaN(), record, tensorboard])
    return record


def evaluate(args, run_dir, mconfig, data, record):
    """Test metrics of the best weights, as driver.py will load them, and the end of the run (finish.finish_run:
    calibration, metrics.json, model.keras, the plots, report.html); returns metrics.json's content."""
    from perceiver.modules import build_model

    model = build_model(mconfig)
    runs.verify_checksum(run_dir / runs.BEST_WEIGHTS)
    model.load_weights(run_dir / runs.BEST_WEIGHTS)

    def logits_of(split):
        ds = dataset.make_dataset(data.images[split], data.labels[split], batch_size=args.batch_size,
                                  training=False, class_names=data.classes)
        return np.asarray(model.predict(ds, verbose=0), dtype=np.float64)

    by_path = {r.path: r for r in data.records}
    test_records = [by_path[p] for p in data.paths["test"]]
    test = (logits_of("test"), data.labels["test"], [r.scan for r in test_records])
    summary = dict(best_epoch=record.best_epoch, best_val_loss=record.best_val, epochs_run=len(record.history),
                   stopped_by_nan=record.stopped_by_nan, stopped_early=record.stopped_early)
    return finish.finish_run(run_dir, model, data.classes, (logits_of("val"), data.labels["val"]), test,
                             trained={"records": test_records, "label_smoothing": args.label_smoothing,
                                      "history": record.history, "summary": summary})


def train(args):
    """Trains a run into its folder, as the one writer of that folder (fileio.only_writer: a second train.py or a
    refit on the same folder is refused at once); returns the exit status."""
    run_dir = prepare_run_folder(args)
    with fileio.only_writer(run_dir, command="train.py --out"):
        if not args.resume:  # again, now that no other command can start writing here
            _refuse_a_folder_with_results(run_dir)
        return _train(args, run_dir)


def _train(args, run_dir):
    check_settings(args)
    setup_devices(args)

    import keras

    manifest = str(run_dir / runs.SPLIT) if args.resume else args.split_manifest
    scope, replicas = distribution_scope(args)
    if args.batch_size % replicas:
        raise UsageError(f"--batch-size {args.batch_size} must be divisible by the {replicas} devices in use.")
    data = prepare(args, manifest)
    mconfig = model_config(args, len(data.classes), args.channels)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = math.ceil(len(data.paths["train"]) / args.batch_size)
    keras.utils.set_random_seed(args.seed)  # here, after data loading, whose code paths may draw random numbers
    model = compiled_model(args, mconfig, steps, scope)
    if not args.resume:
        dataset.write_manifest(run_dir / runs.SPLIT, data.records, data.split, root=data.root)
        runs.write_config(run_dir, runs.run_config(
            train=settings_dict(args), model=mconfig.to_dict(), data=data_record(args, data), seed=args.seed,
            backend=keras.backend.backend(), devices=replicas, command=runs.command_line("train.py", args.argv),
            parameters=int(model.count_params())))

    start, progress = 0, ([], math.inf, -1)
    if args.resume:
        start, best_val, best_epoch = runs.load_state(run_dir / runs.STATE, model)
        progress = (runs.resume_history(run_dir / runs.HISTORY, start), best_val, best_epoch)
        print(f"resuming {run_dir} after epoch {start} (best validation loss {best_val:.4f} at epoch {best_epoch})")
    print(f"model: preset {args.preset}, {model.count_params():,} parameters, backend {keras.backend.backend()}, "
          f"{replicas} device(s); {args.epochs} epochs of {steps} steps, batch {args.batch_size}, "
          f"{args.optimizer} lr {args.lr:g}", flush=True)
    record = fit(args, run_dir, model, mconfig, data, steps, start, progress)
    if record.best_epoch < 0:
        raise UsageError("no epoch finished with a finite loss, so there are no weights to evaluate; lower --lr.")
    metrics = evaluate(args, run_dir, mconfig, data, record)
    print(f"test: accuracy {shown(metrics, 'accuracy')} ({metrics['correct']}/{metrics['images']} images), "
          f"loss {shown(metrics, 'loss')}, ROC-AUC {shown(metrics, 'roc_auc')}, per-patient accuracy "
          f"{shown(metrics['per_patient'], 'accuracy')} ({metrics['per_patient']['correct']}/"
          f"{metrics['per_patient']['total']}); best epoch {record.best_epoch}")
    print(calibration.describe(metrics["calibration"]))
    print(f"run folder: {run_dir}")
    return 1 if record.stopped_by_nan else 0


def main(argv=None):
    start_command(argv)  # TensorFlow's C++ start-up lines stay out of the log (errors.quiet_tensorflow)
    return run_command(lambda: train(parse_settings(argv)),
                       interrupted="interrupted; continue with --resume --out RUN_FOLDER.")
