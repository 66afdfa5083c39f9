"""Benchmark: driver.py's inference (perceiver/predict.py) with the `akoa` preset (random weights) on AKOA-sized
228 x 260 PNGs.

    python bench/speed/infer_speed.py                      # 2,000 synthetic slices in $TMPDIR (made once), batch 256
    python bench/speed/infer_speed.py --images 500 --batch-size 128 --workers 2
    python bench/speed/infer_speed.py --json results.json

Measures (1) single-image latency: the median over --repeats calls after warm-up, of the model's compiled predict on
one preprocessed image ("forward") and of decode + preprocess + predict of one PNG file ("file"); (2) folder
throughput: `predict.classify` (what driver.py runs) over the whole folder end to end (decoding in threads, batched
prediction, the progress bar on stderr), images per second, plus the time of decoding alone and of prediction alone
on the same images, to show where the time goes. Targets on the 2-core dev CPU: latency <= 10 ms, throughput >= 300
images/s.
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import sys
import tempfile

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver import classifier  # noqa: E402
from perceiver import dataset  # noqa: E402
from perceiver import phantom  # noqa: E402
from perceiver import predict  # noqa: E402
from perceiver import runs  # noqa: E402
from perceiver.errors import start_command  # noqa: E402
from perceiver.inputs import decode, find_inputs  # noqa: E402


def _random_run(data):
    """A run folder of the akoa preset with random weights (seed 0): inference speed does not depend on them."""
    import keras

    from perceiver.modules import PerceiverConfig, build_model

    run_dir = tempfile.mkdtemp(prefix="akoa-infer-run-")
    config = PerceiverConfig.preset("akoa")
    keras.utils.set_random_seed(0)
    runs.write_config(run_dir, {
        "train": {"preset": "akoa"}, "model": config.to_dict(),
        "data": {"root": data, "classes": ["left", "right"], "image_size": [64, 64], "channels": 3}})
    runs.atomic_save_weights(build_model(config), os.path.join(run_dir, runs.BEST_WEIGHTS))
    return run_dir


def _latencies(predictor, inputs, repeats):
    """Median seconds of one forward pass on a decoded image, and of one file decoded and classified."""
    one = dataset.load_image(inputs[0].path, size=(64, 64), channels=3)[None]
    forward = common.time_steps(lambda: predictor.logits(one), 5, repeats).median
    files = itertools.cycle(inputs)
    file_one = common.time_steps(lambda: predictor.logits(decode(next(files), (64, 64), 3)[0]), 0, repeats).median
    return forward, file_one


def _folder(predictor, inputs, batch_size, workers):
    """Seconds to compile the batch shapes, to classify the folder end to end, to decode it alone, to predict it."""
    import numpy as np

    def compile_shapes():  # a one-off cost per batch shape, reported separately
        predictor.logits(np.zeros((batch_size, 64, 64, 3), np.uint8))
        if len(inputs) % batch_size:
            predictor.logits(np.zeros((len(inputs) % batch_size, 64, 64, 3), np.uint8))

    _, compile_s = common.timed(compile_shapes)
    results, folder_s = common.timed(lambda: predict.classify(predictor, inputs, workers=workers, progress=True))
    assert all(r.error is None for r in results)
    images, decode_s = common.timed(lambda: np.concatenate([decode(i, (64, 64), 3)[0] for i in inputs]))
    _, predict_s = common.timed(lambda: predictor.logits(images))
    return compile_s, folder_s, decode_s, predict_s


def main(argv=None):
    start_command(argv)
    p = argparse.ArgumentParser(description="Time driver.py inference (akoa preset, random weights).")
    p.add_argument("--images", type=int, default=2000, help="PNG slices in the folder (default: 2000)")
    p.add_argument("--data", default=None, help="folder of PNGs to time instead (default: synthetic, made once)")
    p.add_argument("--batch-size", type=int, default=256, help="prediction batch (default: 256)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count)")
    p.add_argument("--repeats", type=int, default=50, help="timed single-image calls (default: 50)")
    p.add_argument("--json", default=None, help="also write the results here (default: none)")
    args = p.parse_args(argv)

    import keras

    if args.data is None:
        slices = 40
        patients = max(1, round(args.images / slices / 1.4))
        data = os.path.join(tempfile.gettempdir(), f"akoa-infer-bench-{patients}p")
        phantom.generate(data, patients=patients, slices=slices, seed=0, progress=True)
    else:
        data = args.data
    inputs = find_inputs([data])[0][:args.images]
    run_dir = _random_run(data)
    loaded, load_s = common.timed(lambda: classifier.load_model(run_dir))
    predictor = predict.Predictor(loaded, args.batch_size)
    forward, file_one = _latencies(predictor, inputs, args.repeats)
    compile_s, folder_s, decode_s, predict_s = _folder(predictor, inputs, args.batch_size, args.workers)

    n = len(inputs)
    row = {
        "device": common.cpu_name(), "cpus": len(os.sched_getaffinity(0)),
        "load_average": round(os.getloadavg()[0], 2), "backend": keras.backend.backend(), "batch": args.batch_size,
        "images": n, "latency_forward_ms": round(1000 * forward, 2), "latency_file_ms": round(1000 * file_one, 2),
        "images_per_s": round(n / folder_s, 1), "decode_only_images_per_s": round(n / decode_s, 1),
        "predict_only_images_per_s": round(n / predict_s, 1), "model_load_s": round(load_s, 2),
        "compile_s": round(compile_s, 2),
    }
    print(f"{'device':<10} {'backend':<11} {'batch':>5} {'latency ms':>11} {'file ms':>8} {'images/s':>9} "
          f"{'decode/s':>9} {'predict/s':>10}   (cpus {row['cpus']}, load average {row['load_average']})")
    print(f"{'cpu':<10} {row['backend']:<11} {row['batch']:>5} {row['latency_forward_ms']:>11.2f} "
          f"{row['latency_file_ms']:>8.2f} {row['images_per_s']:>9.1f} {row['decode_only_images_per_s']:>9.1f} "
          f"{row['predict_only_images_per_s']:>10.1f}")
    print(f"targets: latency <= 10 ms, >= 300 images/s; model load {load_s:.2f} s, compiling the batch shapes "
          f"{compile_s:.2f} s (once per run)")
    if args.json:
        runs.atomic_write_json(args.json, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
