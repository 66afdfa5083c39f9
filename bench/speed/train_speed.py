"""Benchmark: training speed of this project's Perceiver under every installed Keras backend, against two public peers.

    python bench/speed/train_speed.py --config cpu                   # all rows at the 2-core CPU setting
    python bench/speed/train_speed.py --config gpu                   # float32 and bfloat16, on one GPU
    python bench/speed/train_speed.py --config cpu --only ours --backends tensorflow,jax
    python bench/speed/train_speed.py --config cpu --json results.json --markdown
    python bench/speed/train_speed.py --config cpu --rounds 2 --precisions float32   # rows alternate; two rounds each

Each row (implementation, backend, precision) runs in its own child process (`--worker`), so Keras backends do not
interfere and peak memory is per row. A row builds the model, runs `--warmup` training steps (compilation included),
then `--steps` timed steps on random in-memory data; images/s is batch size over the median step time. The warm-up
is never timed with the steps; what it took beyond as many ordinary steps is the "compile s" column. With
`--rounds N` every row runs N times, the rows alternating, and images/s is the median of the rounds' medians. Rows:

- `ours`: `modules.build_model` compiled with AdamW and sparse cross-entropy on logits, stepped with
  `model.train_on_batch`, under `tensorflow` (XLA `jit_compile=True`, plus a row with it off), `jax` (always jitted)
  and `torch` (eager: Keras's `jit_compile` for torch is `torch.compile`; `--torch-compile` adds that row).
- `perceiver-pytorch` and `transformers` (Hugging Face's Fourier image Perceiver): built at the same sizes by
  `bench/peers.py` (which documents how each maps onto ours), trained with AdamW and cross-entropy in eager PyTorch
  (with `--torch-compile` each also gets a `torch.compile` row beside its eager one).
  They are optional benchmark requirements (`pip install -r bench/requirements.txt`); when absent their rows say so.

Configurations (64 x 64 x 3 inputs, 2 cross-attends, 2 classes):
- `cpu`: 128 latents x 128, 4 self-attention blocks of 4 heads per cross-attend, 6 bands, batch 32, float32 and
  bfloat16 (fast where the CPU has AVX512-BF16 or AMX; `--precisions float32` to skip it).
- `gpu`: 256 latents x 256, 4 blocks of 8 heads, 64 bands, batch 256, float32 and bfloat16 (`mixed_bfloat16` for ours,
  `torch.autocast` for the peers; float32 matmuls may use TF32, as TensorFlow and JAX do by default on NVIDIA GPUs).

Columns: images/s (batch over the median step), images/s of the fastest step (on a shared machine other jobs slow
some steps several-fold, the fastest step less so), median step time, peak memory (CPU: the child's maximum
resident set; GPU: the framework's peak device memory), parameters, training GFLOPs per image (3x the forward,
counted analytically: `modules.forward_flops` for ours, `bench/peers.py` for the peers), MFU on a GPU (achieved
training FLOP/s over the device's dense peak, see `--peak-tflops`), each row's ratio to the fastest peer at the same
precision, and its ratio to the fastest peer row of any precision. Targets: `cpu` config on the 2-core CPU, ours
>= 1.5x the fastest peer; `gpu` config on one H100/H200 with bfloat16, >= 12,000 images/s.

Expected table on the 2-core dev machine (`--config cpu --rounds 2`, float32 rows; the bfloat16 rows and how much
the figures move with the machine's load are in bench/RESULTS.md):

    implementation     backend     mode    precision  images/s  best step img/s  params  train GFLOP/img  vs best peer
    ours               tensorflow  XLA     float32    52.1      58.0             0.50 M  1.31             0.86x
    ours               tensorflow  no XLA  float32    63.0      72.7             0.50 M  1.31             1.04x
    ours               jax         jit     float32    26.7      30.3             0.50 M  1.31             0.44x
    ours               torch       eager   float32    54.3      63.4             0.50 M  1.31             0.90x
    perceiver-pytorch  torch       eager   float32    28.5      34.7             2.54 M  2.57             0.47x
    transformers       torch       eager   float32    60.6      68.7             0.56 M  1.09             1.00x

On one H100/H200 (`--config gpu`) ours is about 20.3 training GFLOP per image, so the 12,000 images/s target is
about 243 TFLOP/s, 25% MFU at bfloat16.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from bench import peers  # noqa: E402
from bench.common import CONFIGS  # noqa: E402
from perceiver import runs  # noqa: E402
from perceiver.errors import start_command  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
IMPLEMENTATIONS = ("ours", "perceiver-pytorch", "transformers")
_MARK = "TRAIN_SPEED_JSON "

# Dense peak TFLOP/s per device-name fragment: (bfloat16, float32 as run: TF32 tensor cores on NVIDIA since Ampere).
# H100/H200 SXM: 989 bf16, 494 TF32 (67 without tensor cores); H100 PCIe: 756 / 378; A100: 312 / 156.
PEAK_TFLOPS = (("H100 PCIe", 756.0, 378.0), ("H100", 989.0, 494.0), ("H200", 989.0, 494.0), ("A100", 312.0, 156.0))


# === Worker ===
def _device_name_and_memory(backend):
    """(device name, peak device bytes or None) for the framework of `backend`."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
            return name, tf.config.experimental.get_memory_info("GPU:0")["peak"]
    elif backend == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform == "gpu":
            return dev.device_kind, (dev.memory_stats() or {}).get("peak_bytes_in_use")
    else:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), torch.cuda.max_memory_allocated()
    return None, None


def _worker_ours(args, size):
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    from perceiver import modules

    if args.backend == "torch":
        import torch

        torch.set_num_threads(os.cpu_count())
    config = common.ours_config(size)
    dtype = "mixed_bfloat16" if args.precision == "bfloat16" else None
    model = modules.build_model(config, dtype=dtype)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=args.jit,
    )
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.random((size["batch"],) + tuple(size["image"]), dtype=np.float32))
    y = keras.ops.convert_to_tensor(rng.integers(0, size["num_classes"], size["batch"]).astype("int32"))
    warmup = []
    times = common.time_steps(lambda: model.train_on_batch(x, y), args.warmup, args.steps, warmup)  # numpy: syncs
    return dict(times=times, warmup_times=warmup, params=model.count_params(),
                forward_flops=modules.forward_flops(config))


def _worker_peer(args, size):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as TensorFlow and JAX do by default
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = peers.BUILDERS[args.impl](size).to(device).train()
    if args.torch_compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand((size["batch"],) + tuple(size["image"]), device=device)
    if args.impl == "transformers":
        x = x.permute(0, 3, 1, 2).contiguous()  # Hugging Face's "pixels" preprocessor takes (batch, C, H, W)
    y = torch.randint(0, size["num_classes"], (size["batch"],), device=device)
    bf16 = args.precision == "bfloat16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x) if args.impl == "perceiver-pytorch" else model(inputs=x).logits
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        return loss.item()  # synchronises

    warmup = []
    times = common.time_steps(step, args.warmup, args.steps, warmup)
    return dict(times=times, warmup_times=warmup, params=sum(p.numel() for p in model.parameters()),
                forward_flops=peers.FLOPS[args.impl](size))


def worker(args):
    """Runs one row and prints its result as one JSON line after `_MARK`."""
    import resource

    size = CONFIGS[args.config]
    result = _worker_ours(args, size) if args.impl == "ours" else _worker_peer(args, size)
    framework = args.backend if args.impl == "ours" else "torch"
    device, peak = _device_name_and_memory(framework)
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    result.update(device=device, peak_bytes=peak, peak_kind="device" if device else "host RSS")
    common.report_to_parent(_MARK, result)


# === Parent ===
def plan_rows(args):
    """The rows to run: dicts with impl, backend, precision, jit and, when it cannot run, `skip` (the reason)."""
    rows = []
    for precision in args.precisions:
        if "ours" in args.only:
            for backend in args.backends:
                skip = None if common.installed(backend) else f"{backend} not installed"
                jits = {"tensorflow": [True, False], "jax": [True], "torch": [False] + ([True] if args.torch_compile
                                                                                         else [])}[backend]
                for jit in jits:
                    rows.append(dict(impl="ours", backend=backend, precision=precision, jit=jit, skip=skip))
        for name in peers.PEERS:
            if name in args.only:  # eager always; with --torch-compile also compiled, so the faster one is the bar
                for jit in [False] + ([True] if args.torch_compile else []):
                    rows.append(dict(impl=name, backend="torch", precision=precision, jit=jit,
                                     skip=peers.missing(name)))
    return rows


def run_row(row, args):
    """Runs one row in a child process; fills in its measurements or `error`."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--impl", row["impl"], "--backend", row["backend"],
           "--config", args.config, "--precision", row["precision"], "--warmup", str(args.warmup),
           "--steps", str(args.steps)]
    cmd += ["--jit"] if row["jit"] else ["--no-jit"]
    if row["impl"] != "ours" and row["jit"]:
        cmd.append("--torch-compile")
    env = dict(os.environ, KERAS_BACKEND=row["backend"])
    (result, error), seconds = common.timed(lambda: common.run_worker(cmd, _MARK, env=env, timeout=args.row_timeout))
    if error:
        row["error"] = error
        return row
    row["wall_s"] = seconds
    row.setdefault("round_times", []).append(result.pop("times"))
    row.setdefault("round_warmup_times", []).append(result.pop("warmup_times"))
    row["peak_bytes"] = max(result.pop("peak_bytes"), row.get("peak_bytes", 0))
    row.update(result)
    return row


def _peak_tflops(device, precision, override):
    if override:
        return override
    for fragment, bf16, fp32 in PEAK_TFLOPS:
        if device and fragment in device:
            return bf16 if precision == "bfloat16" else fp32
    return None


def summarise(rows, args):
    """Adds median step, images/s, GFLOPs, MFU and the ratio to the fastest peer at the same precision."""
    batch = CONFIGS[args.config]["batch"]
    for row in rows:
        if "round_times" not in row or row.get("error"):
            continue
        row["round_images_per_s"] = [batch / statistics.median(times) for times in row["round_times"]]
        row["step_s"] = statistics.median(statistics.median(times) for times in row["round_times"])
        row["images_per_s"] = batch / row["step_s"]
        # the fastest step: less hit by a busy shared machine
        row["best_images_per_s"] = batch / min(min(times) for times in row["round_times"])
        # compilation: what the warm-up steps took beyond as many timed steps (tracing, XLA, torch.compile's
        # Inductor, including a recompile on the second step), the median over rounds
        extra = [sum(w) - len(w) * row["step_s"] for w in row.get("round_warmup_times", []) if w]
        if extra:
            row["compile_s"] = max(0.0, statistics.median(extra))
        row["train_gflops_per_image"] = 3 * row["forward_flops"] / 1e9
        peak = _peak_tflops(row.get("device"), row["precision"], args.peak_tflops)
        if row.get("device") and peak:
            row["mfu"] = row["images_per_s"] * row["train_gflops_per_image"] * 1e9 / (peak * 1e12)
    for precision in {r["precision"] for r in rows}:
        best = max((r["images_per_s"] for r in rows if r["precision"] == precision and r["impl"] != "ours"
                    and "images_per_s" in r), default=None)
        for r in rows:
            if r["precision"] == precision and best and "images_per_s" in r:
                r["vs_best_peer"] = r["images_per_s"] / best
    fastest = max((r["images_per_s"] for r in rows if r["impl"] != "ours" and "images_per_s" in r), default=None)
    for r in rows:
        if fastest and "images_per_s" in r:
            r["vs_fastest_peer"] = r["images_per_s"] / fastest  # the target: any precision the peer runs at
    return rows


def _label(row):
    if row["impl"] != "ours":
        return "torch.compile" if row["jit"] else "eager"
    return {"tensorflow": "XLA" if row["jit"] else "no XLA", "jax": "jit",
            "torch": "torch.compile" if row["jit"] else "eager"}[row["backend"]]


def table(rows, markdown=False):
    rounds = max((len(r.get("round_images_per_s", [])) for r in rows), default=0)
    head = ["implementation", "backend", "mode", "precision", "images/s", "best step img/s", "step ms",
            "compile s", "peak MiB", "params", "train GFLOP/img", "MFU", "vs best peer, same precision",
            "vs fastest peer"]
    if rounds > 1:
        head.insert(5, "images/s per round")
    body = []
    for r in rows:
        if "images_per_s" not in r:
            body.append([r["impl"], r["backend"], _label(r), r["precision"], r.get("skip") or r.get("error", "?")]
                        + [""] * (len(head) - 5))
            continue
        mem = f"{r['peak_bytes'] / 2**20:,.0f}" + ("" if r["peak_kind"] == "device" else " (RSS)")
        cells = [
            r["impl"], r["backend"], _label(r), r["precision"], f"{r['images_per_s']:,.1f}",
            f"{r['best_images_per_s']:,.1f}",
            f"{r['step_s'] * 1e3:,.1f}", f"{r['compile_s']:,.1f}" if "compile_s" in r else "-", mem,
            f"{r['params'] / 1e6:.2f} M", f"{r['train_gflops_per_image']:.2f}",
            f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-",
            f"{r['vs_best_peer']:.2f}x" if "vs_best_peer" in r else "-",
            f"{r['vs_fastest_peer']:.2f}x" if "vs_fastest_peer" in r else "-",
        ]
        if rounds > 1:
            cells.insert(5, " / ".join(f"{v:,.1f}" for v in r["round_images_per_s"]))
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body if len(b[4]) < 40 or i != 4)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    for b in body:
        if len(b[4]) >= 40:  # a skipped or failed row: the reason runs across the table
            out.append("  ".join(c.ljust(w) for c, w in zip(b[:4], widths)) + "  " + b[4])
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip(b, widths)))
    return "\n".join(out)


def _versions():
    import importlib.metadata as md

    out = {}
    for pkg in ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "perceiver-pytorch", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def parent(args):
    size = CONFIGS[args.config]
    rows = plan_rows(args)
    t0 = time.perf_counter()
    for round_ in range(args.rounds):  # rows alternate, so a slow spell of a shared machine hits every row alike
        for row in rows:
            if row.get("skip") or row.get("error"):
                continue
            print(f"round {round_ + 1}/{args.rounds}: {row['impl']} / {row['backend']} / {_label(row)} / "
                  f"{row['precision']} ...", file=sys.stderr, flush=True)
            run_row(row, args)
    summarise(rows, args)
    devices = sorted({r["device"] for r in rows if r.get("device")}) or [f"CPU: {common.cpu_name()}"]
    header = (f"config {args.config}: {size['image'][0]}x{size['image'][1]}x{size['image'][2]}, "
              f"{size['num_latents']} latents x {size['latent_dim']}, {size['num_cross_attends']} cross-attends x "
              f"{size['num_self_attends_per_block']} blocks of {size['num_self_attend_heads']} heads, "
              f"{size['num_bands']} bands, batch {size['batch']}; warm-up {args.warmup}, timed steps {args.steps} "
              f"(median)\ndevice {', '.join(devices)}; {os.cpu_count()} CPUs; load average before/after "
              f"{args.load_before:.1f}/{os.getloadavg()[0]:.1f}; {time.perf_counter() - t0:.0f} s in all")
    print(header)
    print(table(rows, markdown=args.markdown))
    if args.json:
        runs.atomic_write_json(args.json, dict(config=args.config, size=size, devices=devices, cpus=os.cpu_count(),
                                               versions=_versions(), rows=rows))


def main(argv=None):
    start_command(argv)
    parser = argparse.ArgumentParser(description="Training images/s of our Perceiver and its peers, one table.")
    g = parser.add_argument_group("what to run")
    g.add_argument("--config", default="cpu", choices=sorted(CONFIGS), help="sizes and batch (default: cpu)")
    g.add_argument("--only", default=",".join(IMPLEMENTATIONS),
                   help=f"comma-separated implementations (default: {','.join(IMPLEMENTATIONS)})")
    g.add_argument("--backends", default=",".join(BACKENDS),
                   help=f"Keras backends for ours (default: {','.join(BACKENDS)})")
    g.add_argument("--torch-compile", action="store_true",
                   help="add torch.compile rows: ours under Keras's torch backend with jit_compile=True, and each "
                        "peer compiled beside its eager row (default: off)")
    g = parser.add_argument_group("timing")
    g.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 cpu, 5 gpu)")
    g.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 cpu, 30 gpu)")
    g.add_argument("--rounds", type=int, default=1,
                   help="run every row this many times, alternating rows; images/s is the median of the rounds' "
                        "medians (default: 1)")
    g.add_argument("--precisions", default=None,
                   help="comma-separated float32,bfloat16 (default: both; bfloat16 on a CPU wants AVX512-BF16 or AMX)")
    g.add_argument("--row-timeout", type=int, default=900, help="seconds before a row is abandoned (default: 900)")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak TFLOP/s for MFU (default: from the GPU name: H100/H200 989 bf16, 494 TF32)")
    g = parser.add_argument_group("output")
    g.add_argument("--json", default=None, help="also write every row here as JSON (default: none)")
    g.add_argument("--markdown", action="store_true", help="print the table as Markdown (default: plain text)")
    g = parser.add_argument_group("internal")
    g.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--impl", default="ours", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    g.add_argument("--backend", default="tensorflow", choices=BACKENDS, help=argparse.SUPPRESS)
    g.add_argument("--precision", default="float32", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)
    g.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    size = CONFIGS[args.config]
    args.warmup = size["warmup"] if args.warmup is None else args.warmup
    args.steps = size["steps"] if args.steps is None else args.steps
    if args.warmup < 0 or args.steps < 1 or args.rounds < 1:
        parser.error(f"--warmup must be >= 0, --steps and --rounds >= 1, got {args.warmup}, {args.steps} and "
                     f"{args.rounds}.")
    args.precisions = [s.strip() for s in (args.precisions or ",".join(size["precisions"])).split(",") if s.strip()]
    for name in args.precisions:
        if name not in ("float32", "bfloat16"):
            parser.error(f"--precisions {name!r} is not one of float32, bfloat16.")
    if args.worker:
        return worker(args)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.backends = [s.strip() for s in args.backends.split(",") if s.strip()]
    for name in args.only:
        if name not in IMPLEMENTATIONS:
            parser.error(f"--only {name!r} is not one of {', '.join(IMPLEMENTATIONS)}.")
    for name in args.backends:
        if name not in BACKENDS:
            parser.error(f"--backends {name!r} is not one of {', '.join(BACKENDS)}.")
    args.load_before = os.getloadavg()[0]
    parent(args)


if __name__ == "__main__":
    main()
