"""The errors every command shares: one `UsageError`, caught by each command's `main` and printed as one sentence.

A `UsageError` is a mistake the user can fix (a missing file, a flag that does not fit the run); its message says what
was wrong, which file, and what to do. Commands print it as `error: MESSAGE` on stderr, with no traceback, and exit
with `EXIT_USAGE`.

File names are data: a name with a byte that is not UTF-8 reaches Python as a surrogate escape (`\udcff`), and a
strict UTF-8 terminal cannot print it. `console_safe`, called first by each command, makes stdout and stderr show such
characters as a visible backslash escape instead of failing; files written by the project keep the original bytes
(CSV, `split.csv`: UTF-8 with surrogate escapes) or a JSON escape that decodes back to the same name.
"""

import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake the user can fix; printed as one sentence on stderr, exit status `EXIT_USAGE` (2)."""


def console_safe():
    """Lets stdout and stderr print any text: a character the encoding lacks (a file name's undecodable byte) is
    printed as a backslash escape instead of raising UnicodeEncodeError in the middle of a table."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a text stream that can be reconfigured
            pass
