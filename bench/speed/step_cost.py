"""Benchmark: what a model setting costs per training step, before a 25-minute run is spent on it.

    python bench/speed/step_cost.py                                            # the variants tried for goliath
    python bench/speed/step_cost.py --variant wide='{"latent_dim": 256}' --optimizer adamw --lr 2e-3

Each variant is the `akoa-conv` preset (64 x 64 x 3, train.py's default) with the given `PerceiverConfig` settings
over it, compiled as train.py compiles it (`recipe.make_optimizer`, `recipe.make_loss`, no XLA on a CPU) and stepped
with `train_on_batch` on one random batch of 32: 3 untimed steps, then the median of `--steps` timed ones. All variants
run in one process, one after the other, so compare them within one output, not across hours (this machine's speed
drifts). A reference run's time is about steps x (124 steps an epoch x 20 epochs) plus a minute of evaluation.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver.errors import start_command  # noqa: E402

DEFAULT_VARIANTS = {
    "akoa-conv": {},
    "conv stem 128": {"conv_channels": 128},
    "32 bands": {"num_bands": 32},
    "conv stem 128, 32 bands (goliath)": {"conv_channels": 128, "num_bands": 32},
    "4 cross-attends": {"num_cross_attends": 4},
    "latents 64 x 256": {"latent_dim": 256},
    "latents 128 x 256, 32 bands (best published AKOA)": {"num_latents": 128, "latent_dim": 256, "num_bands": 32},
}


def _variant(text):
    name, _, settings = text.partition("=")
    try:
        value = json.loads(settings)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: the settings after = must be a JSON object ({e})") from None
    if not name or not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME='{{\"setting\": value}}'")
    return name, value


def main(argv=None):
    start_command(argv)
    p = argparse.ArgumentParser(prog="bench/speed/step_cost.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", type=_variant, default=None,
                   help="NAME='{JSON settings}' over the akoa-conv preset; repeat for more (default: the goliath set)")
    p.add_argument("--optimizer", default="lamb", choices=("lamb", "adamw"), help="default: lamb (goliath's)")
    p.add_argument("--lr", type=float, default=4e-3, help="default: 4e-3 (goliath's)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant (default: 8)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps {args.steps} must be at least 1")
    import keras
    import numpy as np

    from perceiver import modules
    from perceiver import recipe

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 64, 64, 3)).astype("float32")
    y = rng.integers(0, 2, 32).astype("int32")
    print(f"{'variant':52} {'step ms':>8} {'parameters':>11}")
    for name, settings in (args.variant or DEFAULT_VARIANTS.items()):
        keras.utils.set_random_seed(0)
        try:
            config = modules.PerceiverConfig.preset("akoa-conv", **settings)
        except (TypeError, ValueError) as e:
            print(f"{name:52} skipped: {e}")
            continue
        model = modules.build_model(config)
        model.compile(optimizer=recipe.make_optimizer(optimizer=args.optimizer, lr=args.lr, weight_decay=0.1,
                                                      warmup_epochs=1, epochs=20, steps_per_epoch=124),
                      loss=recipe.make_loss(2, 0.1), jit_compile=False)
        times = common.time_steps(lambda: model.train_on_batch(x, y), 3, args.steps)  # returns NumPy: synchronises
        print(f"{name:52} {times.median * 1e3:8.0f} {model.count_params():11,}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
