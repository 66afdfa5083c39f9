"""Benchmark: A/B of two versions of modules.py, stepping alternately in one process.

    python bench/speed/ab_step.py OLD_modules.py                  # against this checkout's modules.py
    python bench/speed/ab_step.py OLD_modules.py NEW_modules.py --xla --precision bfloat16
    git show HEAD~1:modules.py > /tmp/old.py && python bench/speed/ab_step.py /tmp/old.py

On a shared machine the speed of one process drifts by 1.5x within minutes, so two rows timed one after the other
(bench/speed/train_speed.py) cannot resolve a 5% change. Here both models are built in one process at the `cpu`
configuration of bench/common.py's CONFIGS, warmed up, and then stepped A, B, A, B, ... with `train_on_batch`, so a
slow spell hits both alike (common.time_alternating); the ratio of the median steps is the result. Expected output
(numbers vary):

    A 533 ms  B 519 ms  B/A 0.973  (fastest step: A 486 ms, B 458 ms); tensorflow, A no XLA, B no XLA, float32,
    cpu configuration, batch 32
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from bench.common import CONFIGS  # noqa: E402
from perceiver.errors import start_command  # noqa: E402


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise SystemExit(f"error: cannot load {path}: not a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return sys.modules[name]  # a front door (the top-level modules.py) puts the package module there


def main(argv=None):
    start_command(argv)
    p = argparse.ArgumentParser(
        description="Training step time of two modules.py versions, alternating in one process.")
    p.add_argument("a", help="modules.py version A (e.g. the old one)")
    p.add_argument("b", nargs="?", default=str(common.REPO / "perceiver" / "modules.py"),
                   help="version B (default: this checkout's)")
    p.add_argument("--config", default="cpu", choices=("cpu", "gpu", "akoa"),
                   help="sizes: the cpu or gpu configuration (bench/common.py), or the akoa preset (default: cpu)")
    p.add_argument("--xla", action="store_true", help="compile both steps with XLA (default: off)")
    p.add_argument("--xla-a", action="store_true", help="compile only A's step with XLA (an old default against a new)")
    p.add_argument("--xla-b", action="store_true", help="compile only B's step with XLA")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"), help="(default: float32)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model (default: 3)")
    p.add_argument("--steps", type=int, default=15, help="timed steps per model (default: 15)")
    args = p.parse_args(argv)
    for path in (args.a, args.b):
        if not os.path.isfile(path):
            p.error(f"{path} is not a file.")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0.")

    import keras
    import numpy as np

    size = CONFIGS["cpu" if args.config == "akoa" else args.config]
    xla = (args.xla or args.xla_a, args.xla or args.xla_b)
    models = []
    for i, path in enumerate((args.a, args.b)):
        m = _load(path, f"modules_{'ab'[i]}")
        config = m.PerceiverConfig.preset("akoa") if args.config == "akoa" else common.ours_config(size, m)
        keras.utils.set_random_seed(0)
        model = m.build_model(config, dtype="mixed_bfloat16" if args.precision == "bfloat16" else None)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=xla[i])
        models.append(model)
    rng = np.random.default_rng(0)
    x = rng.random((size["batch"],) + tuple(models[0].config.input_shape), dtype=np.float32)
    y = rng.integers(0, models[0].config.num_classes, size["batch"]).astype("int32")
    steps = [lambda model=model: model.train_on_batch(x, y) for model in models]  # returns NumPy: synchronises
    times = common.time_alternating(steps, args.warmup, args.steps)
    a, b = (t.median * 1e3 for t in times)
    print(f"A {a:.0f} ms  B {b:.0f} ms  B/A {b / a:.3f}  (fastest step: A {times[0].fastest * 1e3:.0f} ms, "
          f"B {times[1].fastest * 1e3:.0f} ms); {keras.backend.backend()}, A {'XLA' if xla[0] else 'no XLA'}, "
          f"B {'XLA' if xla[1] else 'no XLA'}, {args.precision}, {args.config} configuration, batch {size['batch']}")


if __name__ == "__main__":
    main()
