"""Benchmark: where a training step of our Perceiver spends its time, summed by op type.

    python bench/speed/profile_step.py                            # TensorFlow, cpu configuration, no XLA, float32
    python bench/speed/profile_step.py --precision bfloat16 --top 40
    python bench/speed/profile_step.py --xla                      # one opaque XLA cluster per step: little to read
    python bench/speed/profile_step.py --backend torch            # Keras's PyTorch backend, eager (torch.profiler)

Builds the model at the `cpu` configuration of bench/speed/train_speed.py, warms up, records `--steps` `train_on_batch`
steps with the TensorFlow profiler, and sums the time of every op event over all threads by op type, separating the
backward pass (ops under `gradient_tape/`). Times are thread time per step: oneDNN kernels run on both cores and
independent ops overlap, so the column adds up to more than the wall time of a step.

With `--backend torch` the step is Keras's own `train_on_batch` under its PyTorch backend, recorded by
`torch.profiler`; each ATen op's self CPU time is summed by op name, the backward's ops (run by the autograd engine's
thread) marked "(backward)", and the step's wall time not spent inside any op is printed as "outside ATen ops"
(Python: Keras's layers, the optimizer's loop over variables, autograd's bookkeeping). Expected output (TensorFlow,
first lines):

    wall time per step (median of 3): 560 ms; op time summed over threads: 715 ms/step
      ms/step  calls/step  op type
        171.9          40  _MklBatchMatMulV2 (backward)
        146.2          86  _MklMatMul (backward)
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import pathlib
import sys
import tempfile

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from bench.common import CONFIGS  # noqa: E402
from perceiver.errors import start_command  # noqa: E402


def op_times(xplane_path, steps):
    """{op type: (ms per step, calls per step)} from a TensorFlow profiler XSpace file."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    total, calls = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor threads; their ops are "name:OpType"
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" not in name or "::" in name:  # "ExecutorState::Process" wraps the ops: not an op itself
                    continue
                scope, op = name.rsplit(":", 1)
                key = op + (" (backward)" if scope.startswith("gradient_tape") else "")
                total[key] += event.duration_ps
                calls[key] += 1
    return {k: (t / steps / 1e9, calls[k] / steps) for k, t in total.items()}


def torch_op_times(events, steps):
    """{op name: (ms per step, calls per step)} from torch.profiler's events: self CPU time, by name, with the ops
    that ran under the autograd engine (the backward) marked "(backward)"."""
    total, calls = collections.Counter(), collections.Counter()
    for event in events:
        parent, backward = event.cpu_parent, False
        while parent is not None and not backward:
            backward = parent.name.startswith("autograd::engine::evaluate_function")
            parent = parent.cpu_parent
        key = event.name + (" (backward)" if backward else "")
        total[key] += event.self_cpu_time_total  # microseconds
        calls[key] += 1
    return {k: (t / steps / 1e3, calls[k] / steps) for k, t in total.items()}


def _profile_torch(model, x, y, steps):
    """Wall seconds of each profiled step and {op: (ms, calls) per step} under torch.profiler."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        walls = common.time_steps(lambda: model.train_on_batch(x, y), 0, steps)
    return walls, torch_op_times(prof.events(), steps)


def _profile_tensorflow(model, x, y, steps):
    """Wall seconds of each profiled step and {op type: (ms, calls) per step} under the TensorFlow profiler."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        walls = common.time_steps(lambda: model.train_on_batch(x, y), 0, steps)
        tf.profiler.experimental.stop()
        files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not files:
            raise SystemExit("error: the TensorFlow profiler wrote no .xplane.pb trace, so there is nothing to "
                             "sum; check that this TensorFlow build includes the profiler.")
        return walls, op_times(files[0], steps)


def main(argv=None):
    start_command(argv)
    p = argparse.ArgumentParser(description="Op-type profile of one training step of our Perceiver.")
    p.add_argument("--backend", default="tensorflow", choices=("tensorflow", "torch"),
                   help="Keras backend: TensorFlow's profiler or torch.profiler (default: tensorflow)")
    p.add_argument("--xla", action="store_true", help="compile the step with XLA (default: off)")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"), help="(default: float32)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (default: 3)")
    p.add_argument("--top", type=int, default=25, help="op types to list (default: 25)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.top < 1:
        p.error("--steps and --top must be at least 1.")
    os.environ["KERAS_BACKEND"] = args.backend

    import keras
    import numpy as np

    from perceiver import modules

    size = CONFIGS["cpu"]
    dtype = "mixed_bfloat16" if args.precision == "bfloat16" else None
    model = modules.build_model(common.ours_config(size), dtype=dtype)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=args.xla)
    rng = np.random.default_rng(0)
    x = rng.random((size["batch"],) + tuple(size["image"]), dtype=np.float32)
    y = rng.integers(0, size["num_classes"], size["batch"]).astype("int32")
    common.time_steps(lambda: model.train_on_batch(x, y), 3, 0)  # warm-up, outside the profile
    profile = _profile_torch if args.backend == "torch" else _profile_tensorflow
    walls, times = profile(model, x, y, args.steps)
    inside = sum(t for t, _ in times.values())
    wall = walls.median * 1e3
    print(f"wall time per step (median of {args.steps}, profiler on): {wall:.0f} ms; "
          f"op time summed over threads: {inside:.0f} ms/step "
          f"({args.backend}, {'XLA' if args.xla else 'no XLA'}, {args.precision}, batch {size['batch']})")
    if args.backend == "torch":  # one thread records the ops (kernels' own threads are inside them)
        print(f"outside ATen ops (Python, Keras, autograd bookkeeping): {sum(walls) / args.steps * 1e3 - inside:.0f}"
              " ms/step")
    print(f"{'ms/step':>9}  {'calls/step':>10}  op type")
    for key, (ms, n) in sorted(times.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{ms:9.1f}  {n:10.0f}  {key}")


if __name__ == "__main__":
    main()
