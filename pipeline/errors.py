"""The one base class of user mistakes, and how every entry point reports them: one line, exit status 2."""
import sys

USAGE_EXIT = 2


class UserError(Exception):
    """A user's mistake (a name, path, key, value or file): the message says what was given and what to do."""


class StorageError(UserError):
    """A file that cannot be written (disk full, read-only) or read back (truncated, not ours)."""


def report_user_error(program: str, error: UserError) -> int:
    """Print `program: error: message` on one line (stderr) and return the usage exit status."""
    message = " ".join(str(error).split("\n"))
    print(f"{program}: error: {message}", file=sys.stderr)
    return USAGE_EXIT
