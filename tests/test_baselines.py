"""Tests of bench/experiments/baselines.py on a tiny synthetic knee set: one split and one recipe for every row, the
CNN's size, strict JSON, and one-sentence errors. The scores themselves are not asserted (one epoch on 52 images is
noise)."""

import csv
import json
import math

import pytest

from bench.experiments import baselines
from perceiver import phantom


HEADER = ("| model | per-image accuracy | ROC-AUC | per-knee vote accuracy | parameters | training time (s) |")


@pytest.fixture(scope="module")
def knees(tmp_path_factory):
    out = tmp_path_factory.mktemp("knees")
    phantom.generate(out, patients=10, slices=4, seed=0, height=48, width=52, workers=1, progress=False)
    return out


def _strict_json(path):
    """baselines.json parsed with NaN and infinities refused, as a strict JSON reader would."""
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _table_rows(markdown):
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert lines[0] == HEADER and lines[1] == "|" + "---|" * 6
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _one_sentence_error(err):
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), err
    assert "Traceback" not in err
    return lines[0]


def _conv_bn_params(channels_in, width, convs):
    params = 0
    for _ in range(convs):
        params += 3 * 3 * channels_in * width + 4 * width  # kernel (no bias) + BatchNorm's gamma, beta, mean, variance
        channels_in = width
    return params


def test_cnn_has_the_documented_layers_and_size():
    model = baselines.build_cnn((64, 64, 3), 2)
    expected, channels = 0, 3
    for width, convs in zip((32, 64, 96, 128), (2, 2, 1, 1)):
        expected += _conv_bn_params(channels, width, convs)
        channels = width
    expected += 128 * 2 + 2  # the logits layer
    assert model.count_params() == expected == 233_186
    assert 100_000 <= model.count_params() <= 300_000
    assert not any(layer.name.endswith(("conv1", "conv2")) and layer.use_bias for layer in model.layers)
    assert model.output.shape == (None, 2)
    mixed = baselines.build_cnn((32, 32, 3), 3, dtype="mixed_bfloat16")
    assert mixed.count_params() == baselines.build_cnn((32, 32, 3), 3).count_params()
    assert str(mixed.output.dtype) == "float32"  # logits stay float32 under mixed precision


@pytest.mark.parametrize("make", ["missing", "empty", "bad-config"])
def test_bad_perceiver_run_exits_2_in_one_sentence(make, tmp_path, capsys):
    run_dir = tmp_path / "run"
    if make != "missing":
        run_dir.mkdir()
    if make == "bad-config":
        for name in ("metrics.json", "history.csv", "split.csv"):
            (run_dir / name).write_text("x\n")
        (run_dir / "config.json").write_text("{not json")
    code = baselines.main(["--perceiver-run", str(run_dir), "--out-dir", str(tmp_path / "out")])
    line = _one_sentence_error(capsys.readouterr().err)
    assert code == 2
    assert str(run_dir) in line
    assert not (tmp_path / "out").exists()  # nothing is written before the inputs are known to be usable


def test_cnn_without_a_perceiver_recipe_is_refused(tmp_path, knees, capsys):
    code = baselines.main(["--data", str(knees), "--only", "lr,cnn", "--out-dir", str(tmp_path / "out")])
    assert code == 2
    assert "--perceiver-run" in _one_sentence_error(capsys.readouterr().err)


@pytest.mark.parametrize("extra, flag", [("--preset tiny --seed 3", "--seed"), ("--ou elsewhere", "--out")])
def test_perceiver_args_may_not_override_what_baselines_sets(extra, flag, tmp_path, knees, capsys):
    code = baselines.main(["--data", str(knees), "--perceiver-args", extra, "--out-dir", str(tmp_path / "out")])
    assert code == 2
    assert f"sets {flag} for train.py itself" in _one_sentence_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_logistic_regression_alone_is_deterministic(tmp_path, knees, capsys):
    results = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        code = baselines.main(["--data", str(knees), "--only", "lr", "--image-size", "16", "--out-dir", str(out)])
        assert code == 0
        report = _strict_json(out / "baselines.json")
        assert [r["key"] for r in report["rows"]] == ["lr"]
        results.append(report["rows"][0])
        assert len(_table_rows((out / "baselines.md").read_text())) == 1
    first, second = results
    assert first["parameters"] == 16 * 16 + 1  # one grey pixel a coefficient, plus the intercept
    assert first["details"]["converged"]
    assert 0 <= first["accuracy"] <= 1 and first["correct"] <= first["images"]
    assert first["images"] == report["data"]["images"]["test"] > 0
    for key in ("accuracy", "correct", "roc_auc", "per_knee", "per_scan", "loss"):
        assert first[key] == second[key], key


def test_a_failing_train_py_exits_1_with_its_code_and_stderr(tmp_path, knees, capsys):
    code = baselines.main(["--data", str(knees), "--perceiver-args", "--preset huge", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "train.py exited with code 2" in err
    assert "argument --preset: invalid choice: 'huge'" in err  # the end of the child's stderr is shown
    assert not (tmp_path / "baselines.json").exists()


@pytest.mark.slow
def test_three_rows_on_the_perceivers_split(tmp_path, knees, capsys):
    out = tmp_path / "out"
    code = baselines.main(["--data", str(knees), "--image-size", "16", "--epochs", "1", "--perceiver-args",
                           "--preset tiny --aug-rotation 3", "--out-dir", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = _strict_json(out / "baselines.json")
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ["lr", "cnn", "perceiver"]

    run_dir = out / "perceiver"
    config = json.loads((run_dir / "config.json").read_text())
    with open(run_dir / "split.csv", newline="") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    knees_in_test = {(r["patient"], r["label"]) for r in test}
    for key, row in rows.items():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["per_knee"]["accuracy"] <= 1, key
        assert row["images"] == len(test) > 0, key  # every row scored on the Perceiver's test split
        assert row["per_knee"]["total"] == len(knees_in_test), key
        # a time is recorded, not asserted: logistic regression on 16 x 16 images can fit in under 5 ms, which
        # rounds to 0.0 (CI failed on it once)
        assert row["parameters"] > 0 and math.isfinite(row["train_seconds"]) and row["train_seconds"] >= 0, key
    assert rows["lr"]["parameters"] == 16 * 16 + 1
    assert rows["cnn"]["parameters"] == baselines.build_cnn((16, 16, 3), 2).count_params()
    assert rows["perceiver"]["parameters"] == config["parameters"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert rows["perceiver"]["correct"] == metrics["correct"]

    # The CNN was trained with the Perceiver's recipe, read from its config.json.
    settings = config["train"]
    assert settings["epochs"] == 1 and settings["preset"] == "tiny"
    for key in ("optimizer", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "epochs", "batch_size"):
        assert report["recipe"][key] == settings[key], key
    assert report["recipe"]["cnn_lr"] == settings["lr"] and rows["cnn"]["details"]["epochs_run"] == 1
    assert settings["aug_rotation"] == report["recipe"]["aug_rotation"] == 3  # the augmentation's strengths too
    assert report["recipe"]["aug_shift"] == settings["aug_shift"] > 0
    assert report["data"]["split_source"] == str((run_dir / "split.csv").resolve())  # outside the repository
    assert report["data"]["images"]["test"] == len(test)
    assert report["versions"]["sklearn"] and report["command"][1:3] == ["bench/experiments/baselines.py", "--data"]

    markdown = (out / "baselines.md").read_text()
    table = _table_rows(markdown)
    assert [r[0] for r in table] == [rows[k]["model"] for k in ("lr", "cnn", "perceiver")]
    assert table[1][4] == f"{rows['cnn']['parameters']:,}"
    assert "augmentation on (rotation +-3 deg, shift +-0.08," in markdown
    assert HEADER in captured.out  # the table is printed too
