"""Benchmark: driver.py inference with the `akoa` preset (random weights) on AKOA-sized 228 x 260 PNGs.

    python bench/speed/infer_speed.py                      # 2,000 synthetic slices in $TMPDIR (made once), batch 256
    python bench/speed/infer_speed.py --images 500 --batch-size 128 --workers 2
    python bench/speed/infer_speed.py --json results.json

Measures (1) single-image latency: the median over --repeats calls after warm-up, of the model's compiled predict on
one preprocessed image ("forward") and of decode + preprocess + predict of one PNG file ("file"); (2) folder
throughput: `driver.classify` over the whole folder end to end (decoding in threads, batched prediction, the
progress bar on stderr), images per second, plus the time of decoding alone and of prediction alone on the same
images, to show where the time goes. Targets on the 2-core dev CPU: latency <= 10 ms, throughput >= 300 images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def _median_seconds(fn, repeats):
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _random_run(data):
    """A run folder of the akoa preset with random weights (seed 0): inference speed does not depend on them."""
    import keras

    from perceiver import runs
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
    from perceiver import dataset
    from perceiver.inputs import decode

    one = dataset.load_image(inputs[0].path, size=(64, 64), channels=3)[None]
    for _ in range(5):
        predictor.logits(one)
    forward = _median_seconds(lambda i: predictor.logits(one), repeats)
    file_one = _median_seconds(lambda i: predictor.logits(decode(inputs[i % len(inputs)], (64, 64), 3)[0]), repeats)
    return forward, file_one


def _folder(predictor, inputs, batch_size, workers):
    """Seconds to compile the batch shapes, to classify the folder end to end, to decode it alone, to predict it."""
    import numpy as np

    import driver
    from perceiver.inputs import decode

    t = time.perf_counter()  # compilation is a one-off cost per batch shape, reported separately
    predictor.logits(np.zeros((batch_size, 64, 64, 3), np.uint8))
    if len(inputs) % batch_size:
        predictor.logits(np.zeros((len(inputs) % batch_size, 64, 64, 3), np.uint8))
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    results = driver.classify(predictor, inputs, workers=workers, progress=True)
    folder_s = time.perf_counter() - t
    assert all(r.error is None for r in results)
    t = time.perf_counter()
    images = np.concatenate([decode(i, (64, 64), 3)[0] for i in inputs])
    decode_s = time.perf_counter() - t
    t = time.perf_counter()
    predictor.logits(images)
    return compile_s, folder_s, decode_s, time.perf_counter() - t


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = argparse.ArgumentParser(description="Time driver.py inference (akoa preset, random weights).")
    p.add_argument("--images", type=int, default=2000, help="PNG slices in the folder (default: 2000)")
    p.add_argument("--data", default=None, help="folder of PNGs to time instead (default: synthetic, made once)")
    p.add_argument("--batch-size", type=int, default=256, help="prediction batch (default: 256)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count)")
    p.add_argument("--repeats", type=int, default=50, help="timed single-image calls (default: 50)")
    p.add_argument("--json", default=None, help="also write the results here (default: none)")
    args = p.parse_args(argv)

    import keras  # after TF_CPP_MIN_LOG_LEVEL is set

    import driver
    from perceiver import phantom
    from perceiver.inputs import find_inputs

    if args.data is None:
        slices = 40
        patients = max(1, round(args.images / slices / 1.4))
        data = os.path.join(tempfile.gettempdir(), f"akoa-infer-bench-{patients}p")
        phantom.generate(data, patients=patients, slices=slices, seed=0, progress=True)
    else:
        data = args.data
    inputs = find_inputs([data])[0][:args.images]
    t = time.perf_counter()
    loaded = driver.load(_random_run(data))
    load_s = time.perf_counter() - t
    predictor = driver.Predictor(loaded, args.batch_size)
    forward, file_one = _latencies(predictor, inputs, args.repeats)
    compile_s, folder_s, decode_s, predict_s = _folder(predictor, inputs, args.batch_size, args.workers)

    n = len(inputs)
    row = {
        "device": platform.processor() or platform.machine(), "cpus": len(os.sched_getaffinity(0)),
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
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
