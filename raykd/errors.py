"""The one error type that raykd's command-line tools turn into a single clear line and exit code 2."""


class RaykdError(Exception):
    """A user-facing problem (bad input, bad config, missing file): printed as one line, exit code 2."""

    exit_code = 2
