"""The errors every command shares: one `UsageError`, caught by each command's `main` and printed as one sentence.

A `UsageError` is a mistake the user can fix (a missing file, a flag that does not fit the run); its message says what
was wrong, which file, and what to do. Commands print it as `error: MESSAGE` on stderr, with no traceback, and exit
with `EXIT_USAGE`.
"""

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake the user can fix; printed as one sentence on stderr, exit status `EXIT_USAGE` (2)."""
