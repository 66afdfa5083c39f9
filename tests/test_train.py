"""End-to-end tests of train.py, run as a user runs it (a subprocess), on a tiny synthetic knee set."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from perceiver import classifier
from perceiver import finish
from perceiver import phantom
from perceiver import plots
from perceiver import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--image-size", "16", "--batch-size", "16", "--no-xla", "--quiet"]


def run_train(*args, env=None, check=True, timeout=300):
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def knees(tmp_path_factory):
    out = tmp_path_factory.mktemp("knees")
    phantom.generate(out, patients=12, slices=6, height=48, width=56, seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def smoke_run(knees, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    proc = run_train("--data", knees, "--out", out, "--epochs", "3", *TINY)
    return out, proc


def _history(run_dir):
    with open(run_dir / runs.HISTORY) as f:
        return list(csv.DictReader(f))


def test_smoke_run_writes_every_artifact(smoke_run):
    run_dir, proc = smoke_run
    for name in ("config.json", "split.csv", "model.weights.h5", "last.weights.h5", "history.csv", "metrics.json",
                 "calibration.json", "model.keras", "model.keras.sha256", "acc.png", "loss.png", "confusion.png",
                 "roc.png", "reliability.png", "report.html"):
        assert (run_dir / name).is_file(), name
    for split in ("train", "validation"):  # one fit for the whole run: one event file per split, not per epoch
        assert len(list((run_dir / "tensorboard" / split).glob("events.out.tfevents.*"))) == 1, split
    assert not list(run_dir.glob(".tmp-*")), "a temporary file was left behind"
    rows = _history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert "test: accuracy" in proc.stdout


def test_config_records_everything_needed_to_rebuild(smoke_run):
    run_dir, _ = smoke_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["preset"] == "tiny" and config["train"]["epochs"] == 3
    assert config["data"]["classes"] == ["left", "right"]
    assert config["data"]["image_size"] == [16, 16]
    assert config["model"]["input_shape"] == [16, 16, 3]
    assert config["backend"] and config["versions"]["keras"]
    assert config["command"].startswith("python train.py --data ") and "--epochs 3" in config["command"]
    assert sys.executable not in config["command"]  # as a user types it, not this machine's interpreter path
    loaded = runs.load_run(run_dir)
    assert loaded.model.count_params() == config["parameters"]
    import h5py

    for name in ("model.weights.h5", "last.weights.h5"):  # the model's weights alone, no optimizer moments
        sizes = []
        with h5py.File(run_dir / name) as f:
            f.visititems(lambda _, obj: sizes.append(obj.size) if isinstance(obj, h5py.Dataset) else None)
        assert sum(sizes) == config["parameters"], name


def test_metrics_are_consistent(smoke_run):
    run_dir, _ = smoke_run
    m = json.loads((run_dir / "metrics.json").read_text())
    cm = np.array(m["confusion_matrix"]["counts"])
    assert cm.sum() == m["images"] and np.trace(cm) == m["correct"]
    assert m["accuracy"] == pytest.approx(m["correct"] / m["images"])
    with open(run_dir / "split.csv") as f:
        split = list(csv.DictReader(f))
    test_rows = [r for r in split if r["split"] == "test"]
    assert m["images"] == len(test_rows)
    assert m["per_patient"]["total"] == len({(r["patient"], r["label"]) for r in test_rows})
    assert 1 <= m["best_epoch"] <= 3 and m["epochs_run"] == 3
    patients = {s: {r["patient"] for r in split if r["split"] == s} for s in ("train", "val", "test")}
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["val"])


def test_the_run_is_calibrated_on_its_validation_split(smoke_run):
    run_dir, proc = smoke_run
    m = json.loads((run_dir / "metrics.json").read_text())
    saved = json.loads((run_dir / "calibration.json").read_text())
    c = m["calibration"]
    assert saved["temperature"] == c["temperature"] > 0 and saved["min_confidence"] == 0.9
    assert c["validation_nll"]["after"] <= c["validation_nll"]["before"] + 1e-9  # the fit never makes it worse
    for key in ("ece", "brier", "nll"):
        assert math.isfinite(c["test_before"][key]) and math.isfinite(c["test_after"][key])
    slices = c["uncertain_at_min_confidence"]["slices"]
    assert slices["total"] == m["images"] and slices["uncertain"] + slices["classified"] == m["images"]
    assert "temperature" in m["per_scan"]["definition"]
    assert "calibration: temperature" in proc.stdout
    # refitting from the saved run gives the same temperature (the same weights, the same validation images)
    again = finish.refit_run(run_dir)
    assert again["temperature"] == pytest.approx(saved["temperature"], rel=1e-3)
    assert classifier.load(run_dir / "model.keras").temperature == again["temperature"]  # refit reaches model.keras


def test_model_keras_is_the_best_weights_with_their_calibration(smoke_run, knees):
    """model.keras gives the run folder's calibrated probabilities on training-size images, carries its classes and
    threshold, and its checksum verifies."""
    from perceiver import dataset
    import driver

    run_dir, _ = smoke_run
    assert runs.verify_checksum(run_dir / "model.keras")
    model = classifier.load(run_dir / "model.keras")
    loaded = driver.load(run_dir)
    assert model.class_names == loaded.classes and model.min_confidence == loaded.min_confidence
    x = np.stack([dataset.load_image(str(p), (16, 16), 3) for p in sorted(knees.rglob("*.png"))[:8]])
    np.testing.assert_allclose(np.asarray(model.predict(x, verbose=0)), driver.Predictor(loaded).probabilities(x),
                               atol=1e-5)


def test_test_loss_is_the_mean_over_test_examples(smoke_run):
    """metrics.json's loss equals Keras' own evaluate() on the same images with the best weights."""
    import keras

    from perceiver import dataset

    run_dir, _ = smoke_run
    m = json.loads((run_dir / "metrics.json").read_text())
    loaded = runs.load_run(run_dir)
    records, split = dataset.read_manifest(run_dir / "split.csv", root=loaded.config["data"]["root"])
    paths = [r.path for r in records if split[r.path] == "test"]
    images = dataset.load_images(paths, size=loaded.image_size, progress=False, cache=False).images
    labels = dataset.labels_to_indices([r for r in records if split[r.path] == "test"], loaded.classes)
    loaded.model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    # An odd batch size, so a wrong per-batch average would show.
    loss, accuracy = loaded.model.evaluate(dataset.normalize(images), labels, batch_size=7, verbose=0)
    assert m["loss"] == pytest.approx(loss, rel=1e-4)
    assert m["accuracy"] == pytest.approx(accuracy)


def test_plots_are_real_pictures(smoke_run):
    run_dir, _ = smoke_run
    for name in ("acc.png", "loss.png", "confusion.png", "roc.png"):
        with Image.open(run_dir / name) as im:
            assert im.format == "PNG"
            assert im.width >= 400 and im.height >= 300
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 10, f"{name} is blank"
        # Curves and markers are drawn in colour, not only black axes on white.
        saturation = pixels.max(axis=2) - pixels.min(axis=2)
        assert (saturation > 80).mean() > 0.002, f"{name} has no coloured content"


def test_test_star_is_drawn_at_the_best_epoch(tmp_path):
    # five epochs, the best (lowest validation loss) the second: its weights are the ones tested
    history = [{"epoch": e, "accuracy": 0.5 + 0.1 * e, "val_accuracy": 0.6, "loss": 1.0 / e, "val_loss": v}
               for e, v in zip(range(1, 6), (0.9, 0.4, 0.5, 0.6, 0.7))]
    metrics = {"accuracy": 0.8, "loss": 0.45, "images": 10, "best_epoch": 2,
               "confusion_matrix": {"counts": [[4, 1], [1, 4]], "classes": ["left", "right"]}}
    figures = plots.plot_run(tmp_path, history, metrics)
    for name, key in (("acc.png", "accuracy"), ("loss.png", "loss")):
        (star,) = [line for line in figures[name].axes[0].lines if line.get_marker() == "*"]
        assert list(star.get_xdata()) == [2] and list(star.get_ydata()) == [metrics[key]], name
        assert "epoch 2" in star.get_label()
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG"


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(knees, tmp_path):
    common = ["--data", knees, "--epochs", "3", "--seed", "5", *TINY]
    straight = tmp_path / "straight"
    run_train(*common, "--out", straight)

    killed = tmp_path / "killed"
    proc = run_train(*common, "--out", killed, env={"PERCEIVER_KILL_AFTER_EPOCH": "1"}, check=False)
    assert proc.returncode == -9, proc.stderr
    assert len(_history(killed)) == 1 and not (killed / "metrics.json").exists()

    refused = run_train(*common, "--out", killed, check=False)  # without --resume the folder is not touched
    assert refused.returncode == 2 and "already exists" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    resumed = run_train("--resume", "--out", killed, "--quiet")
    assert "resuming" in resumed.stdout
    assert [r["epoch"] for r in _history(killed)] == ["1", "2", "3"]
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
    for ra, rb in zip(_history(straight), _history(killed)):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs 0 must be at least 1"),
        (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        (["--split", "0.6,0.2"], "--split"),
        (["--lr", "-1"], "--lr -1.0 must be positive"),
        (["--aug-shift", "1.5"], "--aug-shift 1.5 must be a number in [0, 1)."),
    ],
)
def test_bad_flags_fail_in_one_sentence(args, message, tmp_path, knees):
    proc = run_train("--data", knees, "--out", tmp_path / "r", *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_folder_without_images_fails_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text("{}")
    proc = run_train("--data", empty, "--out", tmp_path / "new", "--quiet", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no images" in proc.stderr and str(empty) in proc.stderr
    assert not (tmp_path / "new").exists()
    proc = run_train("--data", empty, "--out", earlier, "--quiet", check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (earlier / "metrics.json").read_text() == "{}"


def test_config_file_and_flag_precedence(tmp_path, knees):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochs": 1, "lr": 0.003, "model": {"num_latents": 4}}))
    out = tmp_path / "r"
    run_train("--config", cfg, "--lr", "0.002", "--data", knees, "--out", out, *TINY)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 1  # from the file
    assert config["train"]["lr"] == 0.002  # the flag wins
    assert config["model"]["num_latents"] == 4
    cfg.write_text(json.dumps({"epoch": 1}))
    proc = run_train("--config", cfg, "--data", knees, "--out", tmp_path / "r2", check=False)
    assert proc.returncode == 2 and "unknown setting(s) epoch" in proc.stderr
    cfg.write_text(json.dumps({"xla": 1}))  # xla's default is null (automatic), so only this check guards its type
    proc = run_train("--config", cfg, "--data", knees, "--out", tmp_path / "r3", check=False)
    assert proc.returncode == 2 and "xla must be true, false or null (automatic), got 1" in proc.stderr
    assert not (tmp_path / "r3").exists()


def test_the_readme_reference_command_asks_for_what_goliath_was_trained_with():
    """goliath/ was trained by flags and a model file (its config.json's command); the README gives
    `python train.py --config recipes/goliath.json --out goliath`. Every setting and the model must be the same."""
    import train

    with open(os.path.join(ROOT, "goliath", runs.CONFIG)) as f:
        shipped = json.load(f)
    args = train.parse_settings(["--config", os.path.join(ROOT, "recipes", "goliath.json"), "--out", "goliath"])
    train.check_settings(args)
    train.resolve_xla(args)  # automatic: off on a CPU, as goliath was trained
    settings = train.settings_dict(args)
    assert {k: v for k, v in settings.items() if k != "out"} == {
        k: v for k, v in shipped["train"].items() if k != "out"}
    from perceiver.modules import PerceiverConfig

    # the same model: settings added since (attention_kernel) read from goliath's config.json as their defaults
    assert train.model_config(args, 2, args.channels) == PerceiverConfig.from_dict(shipped["model"])


def test_early_stop_stops_after_n_epochs_without_a_better_validation_loss(knees, tmp_path):
    out = tmp_path / "r"
    # A high learning rate without warm-up makes the validation loss bounce, so patience 1 ends the run early.
    run_train("--data", knees, "--out", out, "--epochs", "8", "--early-stop", "1", "--lr", "0.05",
              "--warmup-epochs", "0", *TINY)
    m = json.loads((out / "metrics.json").read_text())
    val = [float(r["val_loss"]) for r in _history(out)]
    assert m["stopped_early"] and len(val) == m["epochs_run"] < 8
    assert m["best_epoch"] == len(val) - 1 == int(np.argmin(val)) + 1  # stopped one epoch after the best
    assert all(later < earlier for earlier, later in zip(val, val[1:-1]))  # every epoch before had improved


def test_help_shows_real_defaults_and_the_preset_choices(monkeypatch):
    from perceiver import modules
    import train

    assert set(train.PRESET_NAMES) == set(modules.PRESETS)
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps its lines to the terminal's width
    text = train.build_parser().format_help()
    assert "(default: None)" not in text
    assert "{akoa-conv,akoa,paper,tiny}" in text and "(default: akoa-conv)" in text


def test_xla_default_follows_the_device_and_an_explicit_choice_stays():
    import argparse

    import tensorflow as tf

    import train

    args = argparse.Namespace(xla=None)
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert train.resolve_xla(args) is has_gpu and args.xla is has_gpu  # TensorFlow: XLA only on a GPU
    for choice in (True, False):
        assert train.resolve_xla(argparse.Namespace(xla=choice)) is choice


@pytest.fixture(scope="module")
def even_folders(knees, tmp_path_factory):
    """64 slices in left/ and right/ class folders, no patient ids: a 0.5/0.25/0.25 split gives 32/16/16 images, so
    every batch of 16 halves evenly over two devices (uneven replica batches weigh examples differently)."""
    out = tmp_path_factory.mktemp("folders")
    for side in ("left", "right"):
        (out / side).mkdir()
        files = sorted(p for p in knees.glob("*.png") if phantom.FILE_RE.match(p.name)
                       and p.name.upper().split("_WE_")[1].startswith(side.upper()))
        for i, p in enumerate(files[:32]):
            (out / side / f"slice{i:03d}.png").write_bytes(p.read_bytes())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend, engine", [("tensorflow", "mirrored"), ("jax", "data-parallel")])
def test_two_devices_match_one(backend, engine, even_folders, tmp_path):
    """Two logical CPU devices train like one: the same per-epoch losses within float tolerance."""
    pytest.importorskip(backend)
    env = {"KERAS_BACKEND": backend}
    common = ["--data", even_folders, "--split", "0.5,0.25,0.25", "--epochs", "2", "--cpu-devices", "2", *TINY]
    run_train(*common, "--out", tmp_path / "one", env=env)
    run_train(*common, "--out", tmp_path / "two", "--distribute", engine, env=env)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["devices"] == 2 and config["backend"] == backend
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for key in ("loss", "val_loss"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-3), (key, a, b)


def test_distribution_engine_must_fit_the_backend(tmp_path, even_folders):
    proc = run_train("--data", even_folders, "--out", tmp_path / "r", "--distribute", "data-parallel", *TINY,
                     env={"KERAS_BACKEND": "tensorflow"}, check=False)
    assert proc.returncode == 2 and "needs KERAS_BACKEND=jax" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_nan_loss_stops_with_one_clear_message(tmp_path, knees):
    out = tmp_path / "r"
    proc = run_train("--data", knees, "--out", out, "--epochs", "3", "--lr", "1e35", "--warmup-epochs", "0", *TINY,
                     check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "epoch 1: the loss became NaN or infinite, so training stopped" in proc.stderr
    assert not (out / "model.weights.h5").exists() and not (out / "metrics.json").exists()
