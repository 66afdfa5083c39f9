"""What every command shares: one `UsageError`, caught by each command's `main` and printed as one sentence; console
set-up (`console_safe`, `quiet_tensorflow`); `--version` (`add_version`).

A `UsageError` is a mistake the user can fix (a missing file, a flag that does not fit the run); its message says what
was wrong, which file, and what to do. Commands print it as `error: MESSAGE` on stderr, with no traceback, and exit
with `EXIT_USAGE`.

File names are data: a name with a byte that is not UTF-8 reaches Python as a surrogate escape (`\udcff`), and a
strict UTF-8 terminal cannot print it. `console_safe`, called first by each command, makes stdout and stderr show such
characters as a visible backslash escape instead of failing; files written by the project keep the original bytes
(CSV, `split.csv`: UTF-8 with surrogate escapes) or a JSON escape that decodes back to the same name.
"""

import contextlib
import errno
import importlib.abc
import importlib.util
import os
import sys

EXIT_USAGE = 2
VERSION = "0.3.0"  # the project's version: `--version` of every command, CITATION.cff, MODEL_CARD.md


class UserError(Exception):
    """The base of every error whose message is for the user: one sentence that says what was wrong, which file and
    what to do. Under it: `UsageError` (a command's mistake), records.DataError (a data folder or manifest),
    runs.RunError (a run folder), and the per-input reasons inputs.InputError and volumes.VolumeError. A command
    turns any of them into `error: MESSAGE` and exit status 2 (`run_command`); per-input reasons are caught earlier,
    at each input's boundary, and never end a batch."""


class VolumeError(UserError):
    """A DICOM or NIfTI file that cannot be read; the message is the reason, one phrase without the file's path (a
    series' message names its SeriesInstanceUID, and the file name where one file is at fault)."""


class UsageError(UserError):
    """A mistake the user can fix; printed as one sentence on stderr, exit status `EXIT_USAGE` (2)."""


def first_line(error):
    """An exception's message, first line only (a library's message can run over many); its type when empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full device, a quota, a file-size limit
EXIT_FAILED = 1  # the command could not finish its work (a full disk, standard output lost)


def run_command(body, *, interrupted="interrupted."):
    """Runs a command's `body()` and returns its exit status; the one place that turns a `UserError` into
    `error: MESSAGE` on stderr and exit status 2, Ctrl-C into `error: <interrupted>` and 130, and a device that ran
    out of space (`OUT_OF_SPACE`), for a file or for standard output, into one sentence saying so and exit status 1.

    What was written before is whole (every file is written atomically, `fileio`) and no temporary file is left;
    standard output is flushed here, so that an error writing it is reported here too, not as a traceback at exit."""
    try:
        status = body()
        if sys.stdout is not None:
            sys.stdout.flush()
        return status
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in OUT_OF_SPACE:
            raise
        drop_stdout()  # what could not be printed is dropped: the flush at exit must not fail again
        print(f"error: could not write {e.filename or 'the output'}: {e.strerror} (the device is full, or a quota "
              "or file-size limit was reached); free some space and run the command again (the files written before "
              "are whole, and no partial file was left).", file=sys.stderr)
        return EXIT_FAILED


def drop_stdout():
    """Points standard output at /dev/null (a reader that has gone, a full device): Python flushes stdout again at
    exit, and that flush must stay quiet; text still buffered is discarded, not written."""
    if sys.stdout is None:
        return
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()


def stdout_or_devnull():
    """sys.stdout, or, when the command was started with standard output closed (`cmd >&-`, where Python makes it
    None), /dev/null after a one-line warning: results go to the files the command writes."""
    if sys.stdout is None:
        print("warning: standard output is closed, so what this command prints is dropped; the files it writes are "
              "written as usual.", file=sys.stderr)
        sys.stdout = open(os.devnull, "w")
    return sys.stdout


def console_safe():
    """Lets stdout and stderr print any text: a character the encoding lacks (a file name's undecodable byte) is
    printed as a backslash escape instead of raising UnicodeEncodeError in the middle of a table. A closed stdout
    becomes /dev/null, with a warning (`stdout_or_devnull`)."""
    stdout_or_devnull()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a text stream that can be reconfigured
            pass


def start_command(argv=None):
    """What every command's `main` does first: `console_safe`, then `quiet_tensorflow` unless `--verbose` is given."""
    console_safe()
    quiet_tensorflow(wants_verbose(argv))


def add_common_flags(parser, *, verbose=True):
    """Adds `--version` (the command, the project's version, the Python in use) and, for a command that loads
    TensorFlow, `--verbose` (see `quiet_tensorflow`) to an argparse parser."""
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {VERSION} (akoa-perceiver; Python {sys.version.split()[0]})")
    if verbose:
        parser.add_argument("--verbose", action="store_true",
                            help="show TensorFlow's start-up log lines on stderr (default: hidden; a "
                                 "TF_CPP_MIN_LOG_LEVEL of 0 or 1 shows them too)")


def wants_verbose(argv=None):
    """True when `--verbose` is among the command-line arguments (checked before argparse, which runs later)."""
    return "--verbose" in (sys.argv[1:] if argv is None else argv)


def quiet_tensorflow(verbose=False):
    """Keeps TensorFlow's C++ start-up lines (`WARNING: All log messages before absl::InitializeLog() ...`,
    `I0000 ... oneDNN custom operations are on ...`) off the terminal, so that a command's stderr holds its own
    messages only. Called first by every command's `main`.

    TensorFlow 2.18 and later print those lines while its libraries load, and `TF_CPP_MIN_LOG_LEVEL` does not always
    stop them (they are written before TensorFlow's logging reads it). So, unless asked to show them (`verbose`, or
    the user's own `TF_CPP_MIN_LOG_LEVEL` of 0 or 1), the first import of TensorFlow, wherever it happens, runs with
    file descriptor 2 pointed at /dev/null, and `TF_CPP_MIN_LOG_LEVEL` is set to 2 for what follows. A Python
    exception raised by that import still reaches the caller (it is raised after stderr is restored).
    """
    own = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if verbose or (own is not None and own.strip() in ("0", "1")):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _SilentImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SilentImport("tensorflow"))


class _SilentImport(importlib.abc.MetaPathFinder):
    """Finds module `name` as usual, once, and executes it with file descriptor 2 silenced (`quiet_tensorflow`)."""

    def __init__(self, name):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once: the module's own imports, and later ones, go the usual way
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            with _silenced_stderr():
                run(module)

        spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def _silenced_stderr():
    """File descriptor 2 on /dev/null for the duration (what C++ libraries write there is dropped)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
