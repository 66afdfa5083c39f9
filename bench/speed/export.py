"""Benchmark: exporting a run's model (classifier.py) to every format: time, size, agreement with Keras, latency.

    python bench/speed/export.py                      # goliath/
    python bench/speed/export.py --run runs/x --images 64

For each format (keras, savedmodel, onnx, litert): seconds to export, size on disk, the largest difference of its
probabilities from Keras' on the same uint8 images (228 x 260 grey slices as AKOA's, 64 x 64 for LiteRT, which takes
the trained size only), and the milliseconds per image of its own runtime (TensorFlow, onnxruntime, the TF Lite
interpreter; batched except LiteRT). Prints a Markdown table; bench/RESULTS.md quotes a measured one. ONNX needs
tf2onnx, onnx and onnxruntime (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import warnings

import numpy as np

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver import classifier  # noqa: E402
from perceiver.errors import UsageError, run_command, start_command  # noqa: E402

OUT_NAMES = {"keras": "m.keras", "savedmodel": "m_savedmodel", "onnx": "m.onnx", "litert": "m.tflite"}


def _size(path):
    path = pathlib.Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _runner(fmt, path):
    """A function uint8 images -> probabilities in the format's own runtime."""
    if fmt == "keras":
        model = classifier.load(path)
        return lambda x: np.asarray(model.predict_on_batch(x))
    if fmt == "savedmodel":
        import tensorflow as tf

        served = tf.saved_model.load(str(path))
        return lambda x: served.serve(tf.constant(x)).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(x):
        out = []
        for image in x:  # LiteRT takes one image at a time (static shapes)
            interpreter.set_tensor(given["index"], image[None])
            interpreter.invoke()
            out.append(interpreter.get_tensor(taken["index"])[0].copy())
        return np.stack(out)
    return run


def measure(run, n_images, repeats=3):
    model = classifier.load(run)
    h, w, c = model.perceiver.config.input_shape
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (n_images, 228, 260, 1), dtype=np.uint8)
    small = rng.integers(0, 256, (n_images, h, w, c), dtype=np.uint8)
    want = {"raw": np.asarray(model.predict(raw, verbose=0)), "small": np.asarray(model.predict(small, verbose=0))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, name in OUT_NAMES.items():
            out = pathlib.Path(tmp) / name
            _, seconds = common.timed(lambda: classifier.export(model, out, fmt))
            predict = _runner(fmt, out)
            key = "small" if fmt == "litert" else "raw"
            x = small if key == "small" else raw
            diff = float(np.abs(predict(x) - want[key]).max())
            times = common.time_steps(lambda: predict(x), 0, repeats)
            rows.append({"format": fmt, "export_s": seconds, "size_mb": _size(out) / 1e6, "max_diff": diff,
                         "input": f"{x.shape[1]} x {x.shape[2]} x {x.shape[3]}",
                         "ms_per_image": 1000 * times.fastest / len(x)})
    return rows


def table(rows):
    lines = ["| format | export (s) | size (MB) | input | max difference from Keras | ms per image |",
             "|---|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['format']} | {r['export_s']:.1f} | {r['size_mb']:.2f} | {r['input']} | "
                     f"{r['max_diff']:.1e} | {r['ms_per_image']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    start_command(argv)
    p = argparse.ArgumentParser(description="Export a run's model to every format and measure each.")
    p.add_argument("--run", default=str(common.REPO / "goliath"), help="run folder or .keras file (default: goliath)")
    p.add_argument("--images", type=int, default=32, help="images per format (default: 32)")
    args = p.parse_args(argv)

    def body():
        if args.images < 1:
            raise UsageError(f"--images {args.images} must be at least 1.")
        print(table(measure(args.run, args.images)))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
