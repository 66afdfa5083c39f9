"""Benchmark: the attention cores of the `cpu` configuration, forward and forward+backward, kernel by kernel.

    python bench/speed/attention_kernels.py         # TensorFlow with and without XLA; JAX and PyTorch if installed
    python bench/speed/attention_kernels.py --only cross --repeats 20

The two shapes of bench/speed/train_speed.py's `cpu` configuration at batch 32: the cross-attention (128 latent queries
over 4,096 pixel keys, 1 head of width 29) and a latent self-attention (128 x 128, 4 heads of 32). Each variant
takes q, k, v as `(batch, tokens, heads * head_dim)` and returns the attended values; forward+backward is the
gradient of a scalar loss with respect to q, k and v. Variants:

- `keras dot_product_attention`: `keras.ops.dot_product_attention` on `(batch, tokens, heads, head_dim)`, what
  modules.py used before the speed work.
- `batched matmul`: the scale on the queries, heads moved to a batch axis, two `matmul`s and a float32 softmax;
  the 1-head case skips the head axis. What modules.py uses under TensorFlow and JAX.
- `jax jit` `batched matmul`: the same form in plain `jax.numpy`, jitted: XLA's CPU kernels as Keras's JAX backend
  gets them.
- `torch SDPA` and `torch matmul`: `torch.nn.functional.scaled_dot_product_attention` (the fused flash kernel that
  modules.py uses under PyTorch) and the same two-matmul form in eager PyTorch.

Prints the median time of `--repeats` calls after 2 warm-up calls. Expected output (2-core CPU, numbers vary with
load):

    cross  tensorflow XLA     keras dot_product_attention   fwd  43.6 ms  fwd+bwd 169.5 ms
    cross  tensorflow no XLA  batched matmul                fwd  18.1 ms  fwd+bwd  62.9 ms
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver.errors import start_command  # noqa: E402

SHAPES = {"cross": dict(batch=32, heads=1, queries=128, keys=4096, head_dim=29),
          "self": dict(batch=32, heads=4, queries=128, keys=128, head_dim=32)}


def _median_ms(fn, repeats):
    return common.time_steps(fn, 2, repeats).median * 1e3


def _keras_variants():
    from keras import ops

    def keras_dpa(q, k, v, heads):
        batch, d = ops.shape(q)[0], q.shape[-1] // heads
        q, k, v = (ops.reshape(t, (batch, -1, heads, d)) for t in (q, k, v))
        return ops.reshape(ops.dot_product_attention(q, k, v, scale=1 / math.sqrt(d)), (batch, -1, heads * d))

    def batched_matmul(q, k, v, heads):
        batch, d = ops.shape(q)[0], q.shape[-1] // heads
        q = q * (1 / math.sqrt(d))
        if heads == 1:
            weights = ops.softmax(ops.cast(ops.matmul(q, ops.transpose(k, (0, 2, 1))), "float32"), axis=-1)
            return ops.matmul(ops.cast(weights, v.dtype), v)
        q = ops.transpose(ops.reshape(q, (batch, -1, heads, d)), (0, 2, 1, 3))
        k = ops.transpose(ops.reshape(k, (batch, -1, heads, d)), (0, 2, 3, 1))
        v = ops.transpose(ops.reshape(v, (batch, -1, heads, d)), (0, 2, 1, 3))
        weights = ops.softmax(ops.cast(ops.matmul(q, k), "float32"), axis=-1)
        out = ops.matmul(ops.cast(weights, v.dtype), v)
        return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, -1, heads * d))

    return {"keras dot_product_attention": keras_dpa, "batched matmul": batched_matmul}


def run_tensorflow(shape, repeats, rng):
    import tensorflow as tf

    s = SHAPES[shape]
    width = s["heads"] * s["head_dim"]
    q = tf.constant(rng.standard_normal((s["batch"], s["queries"], width), dtype="float32"))
    k = tf.constant(rng.standard_normal((s["batch"], s["keys"], width), dtype="float32"))
    v = tf.constant(rng.standard_normal((s["batch"], s["keys"], width), dtype="float32"))
    rows = []
    for name, fn in _keras_variants().items():
        for xla in (True, False):
            forward = tf.function(lambda q, k, v, fn=fn: fn(q, k, v, s["heads"]), jit_compile=xla)

            @tf.function(jit_compile=xla)
            def both(q, k, v, fn=fn):
                with tf.GradientTape() as tape:
                    tape.watch([q, k, v])
                    out = fn(q, k, v, s["heads"])
                    loss = tf.reduce_sum(out * out)
                return tape.gradient(loss, [q, k, v])

            fwd = _median_ms(lambda: forward(q, k, v).numpy(), repeats)
            fwd_bwd = _median_ms(lambda: [g.numpy() for g in both(q, k, v)], repeats)
            rows.append((shape, f"tensorflow {'XLA' if xla else 'no XLA'}", name, fwd, fwd_bwd))
    return rows


def run_torch(shape, repeats, rng):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    s = SHAPES[shape]
    dims = (s["batch"], s["heads"])
    q = torch.tensor(rng.standard_normal(dims + (s["queries"], s["head_dim"]), dtype="float32"), requires_grad=True)
    k = torch.tensor(rng.standard_normal(dims + (s["keys"], s["head_dim"]), dtype="float32"), requires_grad=True)
    v = torch.tensor(rng.standard_normal(dims + (s["keys"], s["head_dim"]), dtype="float32"), requires_grad=True)

    def matmul_form(q, k, v):
        return torch.softmax((q / math.sqrt(q.shape[-1])) @ k.transpose(-1, -2), dim=-1) @ v

    rows = []
    for name, fn in (("torch SDPA", F.scaled_dot_product_attention), ("torch matmul", matmul_form)):
        def forward(fn=fn):
            with torch.no_grad():
                fn(q, k, v)

        def both(fn=fn):
            out = fn(q, k, v)
            (out * out).sum().backward()

        rows.append((shape, "torch eager", name, _median_ms(forward, repeats), _median_ms(both, repeats)))
    return rows


def run_jax(shape, repeats, rng):
    import jax
    import jax.numpy as jnp

    s = SHAPES[shape]
    heads, d = s["heads"], s["head_dim"]
    q = jnp.asarray(rng.standard_normal((s["batch"], s["queries"], heads * d), dtype="float32"))
    k = jnp.asarray(rng.standard_normal((s["batch"], s["keys"], heads * d), dtype="float32"))
    v = jnp.asarray(rng.standard_normal((s["batch"], s["keys"], heads * d), dtype="float32"))

    def batched_matmul(q, k, v):  # the same form as modules.py's under JAX, in plain jax.numpy
        batch = q.shape[0]
        split = lambda t: jnp.swapaxes(t.reshape(batch, -1, heads, d), 1, 2)  # (batch, heads, tokens, d)
        weights = jax.nn.softmax(split(q / math.sqrt(d)) @ jnp.swapaxes(split(k), 2, 3), axis=-1)
        return jnp.swapaxes(weights @ split(v), 1, 2).reshape(batch, -1, heads * d)

    forward = jax.jit(batched_matmul)
    both = jax.jit(jax.grad(lambda q, k, v: jnp.sum(batched_matmul(q, k, v) ** 2), argnums=(0, 1, 2)))
    return [(shape, "jax jit", "batched matmul", _median_ms(lambda: forward(q, k, v).block_until_ready(), repeats),
             _median_ms(lambda: jax.block_until_ready(both(q, k, v)), repeats))]


def main(argv=None):
    start_command(argv)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    p = argparse.ArgumentParser(description="Attention cores of the cpu configuration, kernel by kernel.")
    p.add_argument("--only", default="cross,self", help="comma-separated shapes: cross, self (default: both)")
    p.add_argument("--repeats", type=int, default=8, help="timed calls per variant (default: 8)")
    args = p.parse_args(argv)
    shapes = [s.strip() for s in args.only.split(",") if s.strip()]
    for shape in shapes:
        if shape not in SHAPES:
            p.error(f"--only {shape!r} is not one of {', '.join(SHAPES)}.")
    if args.repeats < 1:
        p.error("--repeats must be at least 1.")

    import numpy as np

    rng = np.random.default_rng(0)
    have_torch, have_jax = common.installed("torch"), common.installed("jax")
    for shape in shapes:
        s = SHAPES[shape]
        print(f"{shape}: batch {s['batch']}, {s['queries']} queries x {s['keys']} keys, {s['heads']} head(s) of "
              f"{s['head_dim']}")
        rows = run_tensorflow(shape, args.repeats, rng)
        rows += run_jax(shape, args.repeats, rng) if have_jax else []
        rows += run_torch(shape, args.repeats, rng) if have_torch else []
        for shape_, where, name, fwd, fwd_bwd in rows:
            print(f"{shape_:6} {where:18} {name:29} fwd {fwd:6.1f} ms  fwd+bwd {fwd_bwd:6.1f} ms", flush=True)
        for name, have in (("PyTorch", have_torch), ("JAX", have_jax)):
            if not have:
                print(f"({name} not installed: no rows for it; pip install -r bench/requirements.txt)")


if __name__ == "__main__":
    main()
