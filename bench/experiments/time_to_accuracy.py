"""Benchmark: minutes to a good model. Training time until the held-out test accuracy first reaches a target, for
this project's Perceiver (train.py's recipe) and Hugging Face's Perceiver, on the same data, split, batches and budget.

    python bench/experiments/time_to_accuracy.py        # default synthetic set and split, target 0.95, 12 epochs
    python bench/experiments/time_to_accuracy.py --only ours --target 0.9
    python bench/experiments/time_to_accuracy.py --only transformers --peer-lr 5e-4   # the peer at its own peak lr
    python bench/experiments/time_to_accuracy.py --json bench/results/time_to_accuracy.json

Images per second (bench/speed/train_speed.py) is not what a user waits for: a model that steps faster but needs more
epochs is not faster to a usable classifier. Each implementation here trains in its own child process, one after
the other (so they never share the two cores), and after every epoch its accuracy on the test split (the held-out
patients of train.py's split) is measured with the clock stopped. The result is the training time, summed over the
epochs, until the first epoch whose test accuracy reaches `--target`; the data are loaded before the clock starts.

- `ours`: exactly `python train.py --seed S --epochs E`: the same data (train.py's `prepare`), model and compiled
  optimizer (`train.model_config`, `train.compiled_model`: the `akoa-conv` preset, AdamW 2e-3, weight decay 1e-4,
  one epoch of linear warm-up, then cosine decay to 0), the same tf.data batches and augmentation, under TensorFlow
  as train.py runs it. Only train.py's per-epoch validation pass is left out (neither side runs one).
- `transformers`: Hugging Face's `PerceiverModel` built by `bench/peers.py` at the same sizes (64 latents x 128,
  4 self-attends, 4 heads, 6 bands) with its own Perceiver IO conv stem, as the `akoa-conv` preset has; it has one
  cross-attend where ours has two (its design). Trained in eager PyTorch on the very same batches (`dataset
  .make_dataset`'s numpy path, whose order and augmentation for each (seed, epoch) equal the tf.data path's), the
  next batch prepared on a thread while a step runs, with torch's AdamW at the same learning rate, schedule, epsilon
  (Keras's 1e-7) and weight decay (biases, norms and latents excluded, as `recipe.NO_WEIGHT_DECAY` does for ours),
  and the same cross-entropy and label smoothing. train.py's learning rate was tuned for ours, so `--peer-lr` gives
  the peer its own (bench/RESULTS.md lists the ones tried).

Needs the benchmark requirements for the peer (`pip install -r bench/requirements.txt`); without them its row says
so. Timings depend on the machine and its load: the load average before and after is printed with the table.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import shlex
import sys
import time

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from bench import peers  # noqa: E402
from perceiver import phantom  # noqa: E402
from perceiver import runs  # noqa: E402
from perceiver.errors import start_command  # noqa: E402

IMPLEMENTATIONS = ("ours", "transformers")
_MARK = "TIME_TO_ACCURACY_JSON "


# === Worker ===
def _train_args(args):
    """train.py's settings for this run: its defaults, with the seed, epochs and synthetic set given here. Its
    settings, data step and compiled model are perceiver.training's (train.py's machinery; a `python train.py` child
    cannot report the test accuracy after every epoch)."""
    from perceiver import training as train

    settings = train.parse_settings(["--quiet", "--seed", str(args.seed), "--epochs", str(args.epochs),
                                     "--phantom-patients", str(args.phantom_patients),
                                     "--phantom-slices", str(args.phantom_slices)])
    train.check_settings(settings)
    train.setup_devices(settings)
    return train, settings


def _accuracy(probs_or_logits, labels):
    import numpy as np

    return float(np.mean(np.argmax(probs_or_logits, axis=-1) == labels))


def _worker_ours(args):
    import contextlib

    train, settings = _train_args(args)
    import keras

    from perceiver import dataset

    data = train.prepare(settings, None)
    mconfig = train.model_config(settings, len(data.classes), settings.channels)
    steps = math.ceil(len(data.paths["train"]) / settings.batch_size)
    keras.utils.set_random_seed(settings.seed)
    model = train.compiled_model(settings, mconfig, steps, contextlib.nullcontext())
    augment = dataset.Augment(flip_swap=settings.flip_swap) if settings.augment else None
    train_ds = dataset.make_dataset(data.images["train"], data.labels["train"], batch_size=settings.batch_size,
                                    training=True, seed=settings.seed, epoch=0, epochs=settings.epochs,
                                    augment=augment, class_names=data.classes)
    test_x, test_y = dataset.normalize(data.images["test"]), data.labels["test"]
    epochs = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.t0  # before the test pass: it is not training time
            logits = self.model.predict(test_x, batch_size=256, verbose=0)
            epochs.append(dict(epoch=epoch + 1, seconds=seconds, test_accuracy=_accuracy(logits, test_y)))

    model.fit(train_ds, epochs=settings.epochs, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[Clock()])
    return dict(epochs=epochs, params=int(model.count_params()), lr=settings.lr, train_images=len(data.paths["train"]),
                test_images=len(test_y), framework=f"keras {keras.__version__} / {keras.backend.backend()}")


def _peer_size(mconfig):
    return dict(image=tuple(mconfig.input_shape), num_latents=mconfig.num_latents, latent_dim=mconfig.latent_dim,
                num_cross_attends=mconfig.num_cross_attends,
                num_self_attends_per_block=mconfig.num_self_attends_per_block,
                num_self_attend_heads=mconfig.num_self_attend_heads, num_bands=mconfig.num_bands,
                num_classes=mconfig.num_classes, preprocessor=mconfig.preprocessor,
                conv_channels=mconfig.conv_channels)


def lr_at(step, *, lr, warmup, total):
    """Keras's CosineDecay with warm-up as recipe.make_optimizer builds it: linear 0 -> lr over `warmup` steps, then
    cosine decay to 0 over the remaining steps."""
    if warmup and step < warmup:
        return lr * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _worker_transformers(args):
    from concurrent.futures import ThreadPoolExecutor

    train, settings = _train_args(args)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from perceiver import dataset

    torch.set_num_threads(os.cpu_count())
    data = train.prepare(settings, None)
    mconfig = train.model_config(settings, len(data.classes), settings.channels)
    steps = math.ceil(len(data.paths["train"]) / settings.batch_size)
    torch.manual_seed(settings.seed)
    model = peers.build_transformers(_peer_size(mconfig)).train()
    if settings.optimizer != "adamw":
        raise SystemExit(f"error: the peer is trained with AdamW only, not {settings.optimizer}.")
    decay, keep = [], []
    for name, p in model.named_parameters():  # recipe.NO_WEIGHT_DECAY in torch's names (Keras's gamma, beta: norm)
        plain = p.ndim < 2 or any(word in name for word in ("bias", "norm", "latents"))
        (keep if plain else decay).append(p)
    # the learning rate is set before every step from the schedule; eps as Keras's AdamW
    lr = args.peer_lr or settings.lr
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=settings.weight_decay),
                             dict(params=keep, weight_decay=0.0)], lr=lr, eps=1e-7)
    total, warmup = settings.epochs * steps, min(settings.epochs * steps - 1,
                                                 int(round(settings.warmup_epochs * steps)))
    augment = dataset.Augment(flip_swap=settings.flip_swap) if settings.augment else None
    batches = dataset.make_dataset(data.images["train"], data.labels["train"], batch_size=settings.batch_size,
                                   training=True, seed=settings.seed, epoch=0, augment=augment,
                                   class_names=data.classes, backend="numpy")
    test_x = torch.from_numpy(dataset.normalize(data.images["test"])).permute(0, 3, 1, 2).contiguous()
    test_y = data.labels["test"]
    epochs, step = [], 0
    with ThreadPoolExecutor(1) as pool:
        for epoch in range(settings.epochs):
            t0 = time.perf_counter()
            model.train()
            pending = pool.submit(batches.__getitem__, 0)
            for i in range(len(batches)):
                x, y = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(batches.__getitem__, i + 1)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, lr=lr, warmup=warmup, total=total)
                opt.zero_grad(set_to_none=True)
                logits = model(inputs=torch.from_numpy(x).permute(0, 3, 1, 2)).logits
                loss = F.cross_entropy(logits, torch.from_numpy(np.asarray(y, np.int64)),
                                       label_smoothing=settings.label_smoothing)
                loss.backward()
                opt.step()
                step += 1
            batches.on_epoch_end()
            seconds = time.perf_counter() - t0
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(inputs=test_x[i:i + 256]).logits for i in range(0, len(test_x), 256)])
            epochs.append(dict(epoch=epoch + 1, seconds=seconds, test_accuracy=_accuracy(logits.numpy(), test_y)))
    return dict(epochs=epochs, params=sum(p.numel() for p in model.parameters()), lr=lr,
                train_images=len(data.paths["train"]), test_images=len(test_y), framework=f"torch {torch.__version__}")


def worker(args):
    result = _worker_ours(args) if args.impl == "ours" else _worker_transformers(args)
    common.report_to_parent(_MARK, result)


# === Parent ===
def summarise(row, target):
    """Adds cumulative training seconds, the first epoch at or above `target` and the time to it (None: not reached)."""
    elapsed = 0.0
    row["epochs_to_target"] = row["seconds_to_target"] = None
    for e in row["epochs"]:
        elapsed += e["seconds"]
        e["elapsed"] = elapsed
        if row["epochs_to_target"] is None and e["test_accuracy"] >= target:
            row["epochs_to_target"], row["seconds_to_target"] = e["epoch"], elapsed
    row["seconds_per_epoch"] = elapsed / len(row["epochs"]) if row["epochs"] else None
    best = max(row["epochs"], key=lambda e: e["test_accuracy"], default=None)
    row["best"] = best and {"epoch": best["epoch"], "test_accuracy": best["test_accuracy"]}
    return row


def markdown(rows, target, epochs):
    lines = [f"| implementation | peak lr | epochs to {target:g} | training time to {target:g} (s) | s per epoch | test "
             f"accuracy after epoch {epochs} | best test accuracy (epoch) | parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error") or r.get("skip"):
            lines.append(f"| {r['impl']} | | {r.get('skip') or r['error']} | | | | | |")
            continue
        reached = r["epochs_to_target"] is not None
        to_target = (f"{r['epochs_to_target']} | {r['seconds_to_target']:.0f}" if reached
                     else f"not in {len(r['epochs'])} | -")
        lines.append(f"| {r['impl']} | {r['lr']:g} | {to_target} | {r['seconds_per_epoch']:.1f} | "
                     f"{r['epochs'][-1]['test_accuracy']:.4f} | {r['best']['test_accuracy']:.4f} "
                     f"({r['best']['epoch']}) | {r['params']:,} |")
    return "\n".join(lines)


def run_row(impl, args):
    row = dict(impl=impl)
    if impl != "ours":
        row["skip"] = peers.missing(impl)
        if row["skip"]:
            return row
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--impl", impl, "--seed", str(args.seed),
           "--epochs", str(args.epochs), "--phantom-patients", str(args.phantom_patients),
           "--phantom-slices", str(args.phantom_slices)] + (["--peer-lr", str(args.peer_lr)] if args.peer_lr else [])
    env = dict(os.environ, KERAS_BACKEND="tensorflow" if impl == "ours" else "torch")
    common.log(f"{impl}: training {args.epochs} epochs ...")
    result, error = common.run_worker(cmd, _MARK, env=env)
    if error:
        row["error"] = error
        return row
    row.update(result)
    return summarise(row, args.target)


def main(argv=None):
    start_command(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="bench/experiments/time_to_accuracy.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(IMPLEMENTATIONS), help="comma-separated: ours, transformers")
    p.add_argument("--target", type=float, default=0.95, help="test accuracy to reach (default: 0.95)")
    p.add_argument("--epochs", type=int, default=12, help="the budget, as train.py's default (default: 12)")
    p.add_argument("--seed", type=int, default=0, help="train.py's --seed: split, weights, batches (default: 0)")
    p.add_argument("--phantom-patients", type=int, default=None, help="train.py's default set unless given")
    p.add_argument("--phantom-slices", type=int, default=None, help="train.py's default set unless given")
    p.add_argument("--peer-lr", type=float, default=None,
                   help="the peer's own peak learning rate (default: train.py's, which was tuned for ours)")
    p.add_argument("--json", default=None, help="also write the rows, per-epoch accuracies included, here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="ours", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    bad = [s for s in only if s not in IMPLEMENTATIONS]
    if bad or not only:
        p.error(f"--only {args.only!r}: choose from {', '.join(IMPLEMENTATIONS)}")
    if not 0 < args.target <= 1:
        p.error(f"--target {args.target} must be in (0, 1]")
    if args.epochs < 1:
        p.error(f"--epochs {args.epochs} must be at least 1")
    if args.peer_lr is not None and not args.peer_lr > 0:
        p.error(f"--peer-lr {args.peer_lr} must be positive")
    args.phantom_patients = args.phantom_patients or phantom.DEFAULT_PATIENTS
    args.phantom_slices = args.phantom_slices or phantom.DEFAULT_SLICES
    if args.worker:
        worker(args)
        return 0
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = [run_row(impl, args) for impl in only]
    print(f"synthetic set of {args.phantom_patients} patients x {args.phantom_slices} slices, seed {args.seed}, "
          f"{args.epochs} epochs, batch 32; training time excludes data loading and the per-epoch test pass; "
          f"{os.cpu_count()} CPUs, load average before/after {load:.1f}/{os.getloadavg()[0]:.1f}; "
          f"{time.perf_counter() - t0:.0f} s in all")
    print(markdown(rows, args.target, args.epochs))
    for r in rows:
        if r.get("epochs"):
            print(f"{r['impl']} test accuracy by epoch: "
                  + ", ".join(f"{e['test_accuracy']:.3f}" for e in r["epochs"]))
    if args.json:
        runs.atomic_write_json(args.json, dict(
            target=args.target, epochs=args.epochs, seed=args.seed,
            phantom=dict(patients=args.phantom_patients, slices=args.phantom_slices),
            command=shlex.join(common.command(__file__, argv)), rows=rows))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
