"""Benchmark: the quick run (`python train.py`) over several seeds, beside logistic regression on each seed's split.

    python bench/experiments/seeds.py                        # seeds 0, 1, 2: trains what is missing under runs/seeds/
    python bench/experiments/seeds.py --seeds 0 1 2 3 4      # more seeds
    python bench/experiments/seeds.py --train-args "--epochs 16"

For each seed, `python train.py --seed S --out RUNS/seed-S` (the seed sets the synthetic set, the patient split, the
initial weights and the batches; the synthetic set of seed S is drawn anew, so every seed is a new population), unless
that run folder is already finished; then
`python bench/experiments/baselines.py --perceiver-run RUNS/seed-S --only lr,perceiver` scores logistic regression on
the same split. The table gives each seed's row and the mean and range (min to max) of the Perceiver's per-image
accuracy, ROC-AUC, per-knee vote accuracy, its margin over logistic regression and the wall time of `python train.py`
(the whole command, data step included). RUNS/seeds.json and RUNS/seeds.md keep it.
The figures depend on the machine; bench/RESULTS.md and the README quote a measured table with its date.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import statistics
import sys

if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench import common  # noqa: E402
from perceiver import runs  # noqa: E402
from perceiver.errors import UsageError, start_command  # noqa: E402


def one_seed(seed, runs_dir, train_args):
    """Trains (if needed) and scores one seed; returns its row."""
    run_dir = runs_dir / f"seed-{seed}"
    wall = None
    if not (run_dir / runs.METRICS).is_file():
        if run_dir.exists():
            raise UsageError(f"{run_dir} holds an unfinished run; finish it with `python train.py --out {run_dir} "
                             "--resume` or delete it.")
        _, wall = common.timed(lambda: common.run_child(
            [sys.executable, "train.py", "--seed", str(seed), "--out", str(run_dir), "--quiet", *train_args], "seeds"))
        (run_dir / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
    elif (run_dir / "wall_seconds.txt").is_file():
        wall = float((run_dir / "wall_seconds.txt").read_text())
    scores_dir = run_dir / "baselines"
    common.run_child([sys.executable, "bench/experiments/baselines.py", "--perceiver-run", str(run_dir), "--only",
                      "lr,perceiver", "--out-dir", str(scores_dir)], "seeds")
    table = json.loads((scores_dir / "baselines.json").read_text())
    rows = {r["key"]: r for r in table["rows"]}
    p, lr = rows["perceiver"], rows["lr"]
    return dict(seed=seed, run=common.portable(run_dir), accuracy=p["accuracy"], correct=p["correct"],
                images=p["images"],
                roc_auc=p["roc_auc"], per_knee=p["per_knee"]["accuracy"], lr_accuracy=lr["accuracy"],
                margin=p["accuracy"] - lr["accuracy"], wall_seconds=wall)


def _summary(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{fmt(statistics.mean(values))} ({fmt(min(values))} to {fmt(max(values))})"


def markdown(rows):
    acc = lambda v: f"{v:.4f}"  # noqa: E731
    pts = lambda v: f"{100 * v:+.1f} pts"  # noqa: E731
    sec = lambda v: f"{v:.0f}"  # noqa: E731
    lines = ["| seed | per-image accuracy | ROC-AUC | per-knee vote | logistic regression | margin | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = "n/a" if r["wall_seconds"] is None else sec(r["wall_seconds"])
        lines.append(f"| {r['seed']} | {acc(r['accuracy'])} ({r['correct']}/{r['images']}) | {acc(r['roc_auc'])} | "
                     f"{acc(r['per_knee'])} | {acc(r['lr_accuracy'])} | {pts(r['margin'])} | {wall} |")
    lines.append(
        f"| mean (range) | {_summary([r['accuracy'] for r in rows], acc)} | {_summary([r['roc_auc'] for r in rows], acc)}"
        f" | {_summary([r['per_knee'] for r in rows], acc)} | {_summary([r['lr_accuracy'] for r in rows], acc)} | "
        f"{_summary([r['margin'] for r in rows], pts)} | {_summary([r['wall_seconds'] for r in rows], sec)} |")
    return "\n".join(lines)


def main(argv=None):
    start_command(argv)
    parser = argparse.ArgumentParser(prog="bench/experiments/seeds.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--runs-dir", type=pathlib.Path, default=common.REPO / "runs" / "seeds",
                        help="where the run folders go (default: runs/seeds/)")
    parser.add_argument("--train-args", default="", help="more train.py flags, in one string (default: none)")
    args = parser.parse_args(argv)
    return common.run_script(lambda: seeds(args))


def seeds(args):
    if any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds {args.seeds}: give distinct seeds of zero or more.")
    try:
        train_args = shlex.split(args.train_args)
    except ValueError as e:
        raise UsageError(f"--train-args {args.train_args!r} cannot be split into flags ({e}).") from None
    if any(t.split("=")[0] in ("--seed", "--out", "--resume") for t in train_args):
        raise UsageError("--train-args must not hold --seed, --out or --resume; bench/experiments/seeds.py sets them.")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    rows = [one_seed(s, args.runs_dir.resolve(), train_args) for s in args.seeds]
    text = markdown(rows)
    runs.atomic_write_json(args.runs_dir / "seeds.json", dict(rows=rows, train_args=train_args))
    runs.atomic_write_text(args.runs_dir / "seeds.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
