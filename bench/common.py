"""What the scripts of bench/ share: the timed-step loop, the benchmark configurations, child processes that report
one JSON line, and paths and commands written relative to the repository.

A script run as a file (`python bench/speed/train_speed.py`) has only its own folder on `sys.path`; each one starts
with the same two lines, which put the repository root there (for `perceiver` and `bench`) and are skipped when the
script is imported as a module (`from bench.speed import train_speed`, as the tests do):

    if not __package__:  # run as a file: the repository root, for `perceiver` and `bench`
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

Scripts import this module and `bench.peers`, never each other.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time

from perceiver import runs
from perceiver.errors import EXIT_FAILED, run_command

REPO = runs.PROJECT  # the checkout: bench/ is one folder below it

# === Benchmark configurations ===
# 64 x 64 x 3 inputs, 2 cross-attends, 2 classes; bench/speed/train_speed.py's docstring says what each is for.
CONFIGS = {
    "cpu": dict(
        image=(64, 64, 3), num_latents=128, latent_dim=128, num_cross_attends=2, num_self_attends_per_block=4,
        num_self_attend_heads=4, num_bands=6, num_classes=2, batch=32, precisions=("float32", "bfloat16"), warmup=3,
        steps=10,
    ),
    "gpu": dict(
        image=(64, 64, 3), num_latents=256, latent_dim=256, num_cross_attends=2, num_self_attends_per_block=4,
        num_self_attend_heads=8, num_bands=64, num_classes=2, batch=256, precisions=("float32", "bfloat16"),
        warmup=5, steps=30,
    ),
}


def ours_config(size, modules=None):
    """Our PerceiverConfig at `size` (a dict of CONFIGS); `modules`: another version of modules.py to build it with
    (bench/speed/ab_step.py)."""
    if modules is None:
        from perceiver import modules  # imports Keras: only when a model is built

    return modules.PerceiverConfig.preset(
        "akoa",
        input_shape=tuple(size["image"]),
        num_classes=size["num_classes"],
        num_latents=size["num_latents"],
        latent_dim=size["latent_dim"],
        num_cross_attends=size["num_cross_attends"],
        num_self_attends_per_block=size["num_self_attends_per_block"],
        num_self_attend_heads=size["num_self_attend_heads"],
        num_bands=size["num_bands"],
    )


# === Timing ===
class StepTimes(list):
    """Seconds of each timed step, in order, with the figures the tables give."""

    @property
    def median(self):
        return statistics.median(self)

    @property
    def fastest(self):
        return min(self)

    @property
    def slowest(self):
        return max(self)


def time_steps(step, warmup, steps, warmup_times=None):
    """Seconds of each of `steps` timed calls of `step()`, after `warmup` untimed ones; a StepTimes.

    `step()` must block until its results exist on the host (a NumPy value, `.item()`, `block_until_ready`). The
    warm-up calls (tracing and compilation happen in the first) are never timed with the rest; their seconds are
    appended to `warmup_times` when a list is given.
    """
    return time_alternating([step], warmup, steps, warmup_times)[0]


def time_alternating(step_fns, warmup, steps, warmup_times=None):
    """One StepTimes per function of `step_fns`: each warmed up `warmup` times, then all stepped in turn, A, B, A,
    B, ..., `steps` times each, so that a slow spell of a shared machine hits every one alike."""
    for step in step_fns:
        for _ in range(warmup):
            _, seconds = timed(step)
            if warmup_times is not None:
                warmup_times.append(seconds)
    times = [StepTimes() for _ in step_fns]
    for _ in range(steps):
        for step, record in zip(step_fns, times):
            record.append(timed(step)[1])
    return times


def timed(fn):
    """(fn(), the seconds it took)."""
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


# === The machine ===
def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def installed(module):
    return importlib.util.find_spec(module) is not None


# === Child processes ===
class ChildError(Exception):
    """A command that a benchmark ran failed; the message holds its exit status and the end of its stderr. Not a
    UserError: a script catches it and exits with status 1 (`EXIT_FAILED`), its work not done."""


def run_script(body):
    """`errors.run_command(body)` for a script that runs other commands: a ChildError is `error: MESSAGE` and exit
    status 1 (EXIT_FAILED), a UserError `error: MESSAGE` and 2, as in every command of the project."""
    try:
        return run_command(body)
    except ChildError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


def log(message):
    print(message, file=sys.stderr, flush=True)


def run_child(cmd, what=None):
    """Runs `cmd` in the repository folder, its stdout shown on our stderr (progress), its stderr kept for the
    error: ChildError with the last 15 lines when it fails."""
    log(f"{what or 'running'}: {shlex.join(map(str, cmd))}")
    proc = subprocess.run(cmd, cwd=REPO, stdout=_fileno(sys.stderr), stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:]) or "(no output on stderr)"
        name = pathlib.Path(str(cmd[1])).name if len(cmd) > 1 else str(cmd[0])
        raise ChildError(f"{name} exited with code {proc.returncode}; the end of its stderr:\n{tail}")


def _fileno(stream):
    """The stream's file descriptor, or None (pytest's captured stderr has none: the child's output is then ours)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def report_to_parent(mark, result):
    """A worker's result: one line of JSON after `mark` on stdout (read by `run_worker`)."""
    print(mark + json.dumps(result), flush=True)


def run_worker(cmd, mark, *, env=None, timeout=None):
    """Runs a worker child (`cmd`) and returns (its result, None) or (None, why it gave none): the last stdout line
    that starts with `mark`, as `report_to_parent` wrote it."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(mark)]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"exit {proc.returncode}: {tail[0][:160]}"
    return json.loads(lines[-1][len(mark):]), None


# === What the results record ===
def portable(path):
    """A path as a result file records it: relative to the repository when inside it (runs.portable_root), so that
    bench/results holds no machine's folders."""
    return runs.portable_root(path)


def command(script, argv):
    """The command as a user would type it in the repository folder, as a list of words (`shlex.join` prints it):
    `["python", "bench/speed/x.py", "--json", "out.json"]`; an absolute path inside the repository among the
    arguments is written relative to it."""
    return ["python", portable(script), *(portable(a) if pathlib.Path(a).is_absolute() else a for a in map(str, argv))]
