"""Tests of the benchmarks' bookkeeping (bench/common.py, bench/speed/, bench/experiments/): which rows run and how
rounds and ratios are reduced.

The timing itself is not tested (tests never assert wall-clock times); these tests feed made-up step times in.
"""

import argparse
import pathlib
import re
import subprocess
import sys

import pytest

from bench import common
from bench.experiments import seeds
from bench.experiments import time_to_accuracy as tta
from bench.speed import ab_step
from bench.speed import profile_step
from bench.speed import step_cost
from bench.speed import train_speed

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _row(impl, precision, round_times, backend="torch", jit=False):
    return dict(impl=impl, backend=backend, precision=precision, jit=jit, round_times=round_times, params=1_000_000,
                forward_flops=1e9, peak_bytes=2**30, peak_kind="host RSS", device=None)


def test_rounds_reduce_to_the_median_of_round_medians_and_ratios_pick_the_right_peer():
    args = argparse.Namespace(config="cpu", peak_tflops=None)
    batch = train_speed.CONFIGS["cpu"]["batch"]
    rows = [
        # Round medians 1.0 s and 0.5 s and 0.8 s: the median of the three is 0.8 s, the fastest step 0.4 s.
        _row("ours", "float32", [[1.0, 1.0, 9.0], [0.5, 0.4, 0.5], [0.8, 0.8, 0.8]], backend="tensorflow", jit=True),
        _row("transformers", "float32", [[2.0, 2.0, 2.0]]),
        _row("transformers", "bfloat16", [[1.6, 1.6, 1.6]]),
        _row("ours", "bfloat16", [[0.4, 0.4, 0.4]], backend="tensorflow", jit=False),
    ]
    train_speed.summarise(rows, args)
    ours32, hf32, hf16, ours16 = rows
    assert ours32["step_s"] == pytest.approx(0.8)
    assert ours32["images_per_s"] == pytest.approx(batch / 0.8)
    assert ours32["best_images_per_s"] == pytest.approx(batch / 0.4)
    assert ours32["round_images_per_s"] == pytest.approx([batch / 1.0, batch / 0.5, batch / 0.8])
    # Same precision: against Hugging Face float32 (2.0 s); any precision: against its bfloat16 row (1.6 s).
    assert ours32["vs_best_peer"] == pytest.approx(2.0 / 0.8)
    assert ours32["vs_fastest_peer"] == pytest.approx(1.6 / 0.8)
    assert ours16["vs_best_peer"] == pytest.approx(1.6 / 0.4) == ours16["vs_fastest_peer"]
    assert hf32["vs_fastest_peer"] == pytest.approx(1.6 / 2.0)
    assert "mfu" not in ours32  # no GPU named: no peak to divide by
    assert "compile_s" not in ours32  # no warm-up recorded: no compile time made up
    text = train_speed.table(rows)
    assert "images/s per round" in text and "32.0 / 64.0 / 40.0" in text


def test_a_failed_or_skipped_row_is_listed_with_its_reason_and_not_ranked():
    args = argparse.Namespace(config="cpu", peak_tflops=None)
    rows = [
        _row("ours", "float32", [[0.5, 0.5]], backend="tensorflow", jit=True),
        dict(impl="transformers", backend="torch", precision="float32", jit=False,
             skip="transformers not installed (pip install -r bench/requirements.txt)"),
        dict(_row("perceiver-pytorch", "float32", [[0.1, 0.1]]), error="exit 1: RuntimeError: out of memory"),
    ]
    train_speed.summarise(rows, args)
    assert "vs_best_peer" not in rows[0]  # the only peer that ran failed: nothing to compare with
    text = train_speed.table(rows)
    assert "transformers not installed" in text and "exit 1: RuntimeError: out of memory" in text


def test_compile_time_is_the_warm_up_beyond_ordinary_steps_and_stays_out_of_the_timed_steps():
    args = argparse.Namespace(config="cpu", peak_tflops=None)
    row = _row("ours", "float32", [[0.5, 0.5, 0.5], [0.6, 0.6, 0.6]], jit=True)
    row["round_warmup_times"] = [[30.5, 4.5, 0.5], [20.6, 2.6, 0.6]]  # compile in step 1, a recompile in step 2
    train_speed.summarise([row], args)
    assert row["step_s"] == pytest.approx(0.55)  # the warm-up's 30 s never reach the step time
    # Round 1: 35.5 - 3 x 0.55 = 33.85; round 2: 23.8 - 1.65 = 22.15; the median of the two.
    assert row["compile_s"] == pytest.approx((33.85 + 22.15) / 2)
    assert "28.0" in train_speed.table([row])
    warmup, calls = [], []
    times = common.time_steps(lambda: calls.append(1), 2, 3, warmup)
    assert (len(warmup), len(times), len(calls)) == (2, 3, 5)


def test_torch_compile_gives_each_peer_an_eager_and_a_compiled_row(monkeypatch):
    monkeypatch.setattr(common, "installed", lambda module: True)
    args = argparse.Namespace(precisions=["float32"], only=["ours", "transformers"], backends=["torch"],
                              torch_compile=True)
    rows = [(r["impl"], r["jit"]) for r in train_speed.plan_rows(args)]
    assert rows == [("ours", False), ("ours", True), ("transformers", False), ("transformers", True)]
    cmd = []
    monkeypatch.setattr(common.subprocess, "run", lambda c, **kw: cmd.append(c) or argparse.Namespace(
        returncode=1, stdout="", stderr="stop"))
    run_args = argparse.Namespace(config="cpu", warmup=1, steps=1, row_timeout=5)
    for jit in (False, True):
        train_speed.run_row(dict(impl="transformers", backend="torch", precision="float32", jit=jit), run_args)
    assert ["--torch-compile" in c for c in cmd] == [False, True]


def test_plan_rows_follows_precisions_backends_and_only(monkeypatch):
    monkeypatch.setattr(common, "installed", lambda module: module != "jax")
    args = argparse.Namespace(precisions=["float32", "bfloat16"], only=["ours", "transformers"],
                              backends=["tensorflow", "jax"], torch_compile=False)
    rows = train_speed.plan_rows(args)
    ours = [(r["backend"], r["jit"], r["precision"]) for r in rows if r["impl"] == "ours"]
    assert ours == [("tensorflow", True, "float32"), ("tensorflow", False, "float32"), ("jax", True, "float32"),
                    ("tensorflow", True, "bfloat16"), ("tensorflow", False, "bfloat16"), ("jax", True, "bfloat16")]
    assert all(r["skip"] == "jax not installed" for r in rows if r["backend"] == "jax")
    assert [r["precision"] for r in rows if r["impl"] == "transformers"] == ["float32", "bfloat16"]
    assert not any(r["impl"] == "perceiver-pytorch" for r in rows)


def test_bad_flags_are_refused_with_a_message(capsys):
    for argv, words in ((["--rounds", "0"], "--rounds"), (["--precisions", "float16"], "float16"),
                        (["--only", "ours,nope"], "nope")):
        with pytest.raises(SystemExit):
            train_speed.main(argv)
        assert words in capsys.readouterr().err


def test_profile_sums_ops_by_type_over_threads_and_skips_the_executor_wrapper(tmp_path):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    names = {1: "model/dense/MatMul:_MklMatMul", 2: "gradient_tape/model/dense/MatMul:_MklMatMul",
             3: "ExecutorState::Process", 4: "model/Softmax:_MklSoftmax"}
    for key, name in names.items():
        plane.event_metadata[key].id = key
        plane.event_metadata[key].name = name
    events = {"tf_Compute/1": [(1, 10), (2, 30), (3, 1000)], "tf_Compute/2": [(1, 6), (2, 4)],
              "python": [(4, 500)]}  # a non-executor thread is not counted
    for line_name, items in events.items():
        line = plane.lines.add(name=line_name)
        for key, ms in items:
            line.events.add(metadata_id=key, duration_ps=int(ms * 1e9))
    path = tmp_path / "host.xplane.pb"
    path.write_bytes(space.SerializeToString())
    times = profile_step.op_times(str(path), steps=2)
    assert times == {"_MklMatMul": pytest.approx((8.0, 1.0)), "_MklMatMul (backward)": pytest.approx((17.0, 1.0))}


def test_torch_profile_marks_what_ran_under_the_autograd_engine_as_backward():

    class Event:  # the three attributes of torch.profiler's FunctionEvent that are read
        def __init__(self, name, self_us, parent=None):
            self.name, self.self_cpu_time_total, self.cpu_parent = name, self_us, parent

    linear = Event("aten::linear", 5)
    engine = Event("autograd::engine::evaluate_function: MmBackward0", 2)
    wrapper = Event("MmBackward0", 1, parent=engine)
    events = [linear, Event("aten::mm", 300, parent=linear), engine, wrapper, Event("aten::mm", 500, parent=wrapper),
              Event("aten::mm", 100, parent=Event("aten::matmul", 0))]
    times = profile_step.torch_op_times(events, steps=2)
    assert times["aten::mm"] == pytest.approx((0.2, 1.0))  # 400 us over 2 steps, forward only
    assert times["aten::mm (backward)"] == pytest.approx((0.25, 0.5))  # two levels under the engine's event
    assert times["MmBackward0 (backward)"] == pytest.approx((0.0005, 0.5))
    assert "aten::mm (backward)" not in {k for k, _ in profile_step.torch_op_times(events[:2], 1).items()}


def test_ab_step_refuses_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ab_step.main([str(tmp_path / "no_such_modules.py")])
    assert "no_such_modules.py is not a file" in capsys.readouterr().err


def test_seeds_table_gives_mean_and_range_of_each_column():
    rows = [dict(seed=s, accuracy=a, correct=c, images=420, roc_auc=r, per_knee=k, lr_accuracy=l, margin=a - l,
                 wall_seconds=w)
            for s, a, c, r, k, l, w in ((0, 0.95, 399, 0.99, 1.0, 0.8, 270.0), (1, 0.97, 407, 0.995, 0.975, 0.85, None),
                                        (2, 0.96, 403, 0.98, 0.95, 0.75, 290.0))]
    table = seeds.markdown(rows).splitlines()
    assert table[2].startswith("| 0 | 0.9500 (399/420) | 0.9900 | 1.0000 | 0.8000 | +15.0 pts | 270 |")
    assert "| n/a |" in table[3]  # a run whose wall time was not measured here
    assert table[-1] == ("| mean (range) | 0.9600 (0.9500 to 0.9700) | 0.9883 (0.9800 to 0.9950) | "
                         "0.9750 (0.9500 to 1.0000) | 0.8000 (0.7500 to 0.8500) | +16.0 pts (+12.0 pts to +21.0 pts) | "
                         "280 (270 to 290) |")


@pytest.mark.parametrize("argv, message", [(["--seeds", "1", "1"], "distinct seeds"),
                                           (["--train-args=--seed=3"], "must not hold --seed"),
                                           (["--train-args=--out x"], "must not hold"),
                                           (["--train-args", "'unclosed"], "cannot be split")])
def test_seeds_refuses_bad_flags_in_one_sentence(argv, message, tmp_path, capsys):
    assert seeds.main(argv + ["--runs-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before anything was made


def test_time_to_accuracy_counts_training_seconds_to_the_first_epoch_at_the_target():
    row = dict(impl="ours", params=364_246, lr=2e-3, epochs=[dict(epoch=1, seconds=30.0, test_accuracy=0.80),
                                                    dict(epoch=2, seconds=20.0, test_accuracy=0.951),
                                                    dict(epoch=3, seconds=20.0, test_accuracy=0.94),
                                                    dict(epoch=4, seconds=20.0, test_accuracy=0.97)])
    tta.summarise(row, 0.95)
    assert (row["epochs_to_target"], row["seconds_to_target"]) == (2, 50.0)  # the first, not the best, epoch
    assert row["best"] == {"epoch": 4, "test_accuracy": 0.97} and row["seconds_per_epoch"] == 22.5
    slow = tta.summarise(dict(impl="transformers", params=1, lr=5e-4, epochs=[dict(epoch=1, seconds=9.0, test_accuracy=0.9)]),
                         0.95)
    assert slow["seconds_to_target"] is None
    table = tta.markdown([row, slow, dict(impl="transformers", skip="not installed (torch)")], 0.95, 4).splitlines()
    assert table[2] == "| ours | 0.002 | 2 | 50 | 22.5 | 0.9700 | 0.9700 (4) | 364,246 |"
    assert table[3].startswith("| transformers | 0.0005 | not in 1 | - | 9.0 | 0.9000 |")
    assert "not installed (torch)" in table[4]


def test_time_to_accuracy_gives_the_peer_the_learning_rate_schedule_keras_gives_ours():
    from perceiver import recipe

    steps, epochs = 10, 3
    opt = recipe.make_optimizer(optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_epochs=1.0, epochs=epochs,
                                steps_per_epoch=steps)
    schedule = opt._learning_rate  # the CosineDecay object; opt.learning_rate is its value at the current step
    for step in (0, 1, 5, 9, 10, 11, 20, 29):
        keras_lr = float(schedule(step))
        assert tta.lr_at(step, lr=2e-3, warmup=10, total=30) == pytest.approx(keras_lr, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("argv, words", [(["--only", "ours,nope"], "nope"), (["--target", "1.5"], "--target"),
                                         (["--epochs", "0"], "--epochs"), (["--peer-lr", "0"], "--peer-lr")])
def test_time_to_accuracy_refuses_bad_flags(argv, words, capsys):
    with pytest.raises(SystemExit):
        tta.main(argv)
    assert words in capsys.readouterr().err


def test_step_cost_reads_named_json_variants_and_refuses_others(capsys):
    assert step_cost._variant('wide={"latent_dim": 256}') == ("wide", {"latent_dim": 256})
    for bad in ('wide={"latent_dim": 256', "wide=[1]", '={"latent_dim": 256}'):
        with pytest.raises(SystemExit):
            step_cost.main(["--variant", bad])
        assert "--variant" in capsys.readouterr().err


# === bench/common.py and the layout ===
SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for folder in ("speed", "experiments")
                 for p in (ROOT / "bench" / folder).glob("*.py") if p.name != "__init__.py")


def test_time_alternating_warms_each_up_then_steps_them_in_turn():
    calls = []
    warmup = []
    a, b = common.time_alternating([lambda: calls.append("a"), lambda: calls.append("b")], 1, 3, warmup)
    assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"] and len(warmup) == 2
    assert len(a) == len(b) == 3
    times = common.StepTimes([0.3, 0.1, 0.2, 0.9])
    assert (times.median, times.fastest, times.slowest) == (pytest.approx(0.25), 0.1, 0.9)


def test_results_record_paths_and_commands_relative_to_the_repository(tmp_path):
    assert common.portable(ROOT / "bench" / "results" / "x.json") == "bench/results/x.json"
    assert common.portable(tmp_path) == str(tmp_path.resolve())  # outside the repository: as it is
    script = ROOT / "bench" / "experiments" / "baselines.py"
    assert common.command(script, ["--out-dir", str(ROOT / "bench" / "results"), "--seed", "3"]) == [
        "python", "bench/experiments/baselines.py", "--out-dir", "bench/results", "--seed", "3"]


def test_a_worker_reports_one_json_line_and_a_failed_one_its_last_words():
    ok = [sys.executable, "-c", "print('noise'); print('MARK {\"x\": 1}')"]
    assert common.run_worker(ok, "MARK ") == ({"x": 1}, None)
    bad = [sys.executable, "-c", "import sys; sys.exit('it broke')"]
    assert common.run_worker(bad, "MARK ") == (None, "exit 1: it broke")


def test_no_bench_script_imports_another_script_or_a_command_line():
    """Scripts share bench/common.py and bench/peers.py only, and import the package, never train.py or driver.py."""
    imports = re.compile(r"^\s*(?:import|from)\s+([\w.]+)", re.M)
    scripts = {pathlib.Path(s).stem for s in SCRIPTS}
    for script in SCRIPTS:
        found = imports.findall((ROOT / script).read_text())
        names = {n if n.startswith("bench.") else n.split(".")[0] for n in found}
        assert not names & scripts, script
        assert "driver" not in names, script
        assert "train" not in names, script
        assert not {n for n in names if n.startswith("bench.")} - {"bench.common", "bench.peers"}, script


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_runs_as_a_file_from_any_folder(script, tmp_path):
    """`python bench/<folder>/<script>.py --help` finds `perceiver` and `bench` wherever it is started."""
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


def test_the_results_name_no_folder_of_the_machine_that_made_them():
    """bench/results is committed: its paths are relative to the repository (common.portable), its commands start
    with `python` (not the virtual environment that ran them)."""
    machine = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|Users|var|opt|usr)/")
    for path in sorted((ROOT / "bench" / "results").rglob("*")):
        if path.suffix in (".json", ".md"):
            hits = [line for line in path.read_text().splitlines() if machine.search(line)]
            assert not hits, f"{path.relative_to(ROOT)}: {hits[0].strip()}"
