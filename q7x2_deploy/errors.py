"""Errors the operator can act on: one line each, never a traceback."""

from q7x2_runtime.errors import UserError


class DeployError(UserError):
    """A host, engine or job failed; the message names the host and what to do.

    `host` and `step`, when given, are fields rather than text, so a caller that already names
    the host (a table row, "sbx-2 (rank 1) failed in ...") shows `reason` alone."""

    exit_code = 1

    def __init__(self, reason: str, *, host: str | None = None, step: str | None = None) -> None:
        self.reason, self.host, self.step = reason, host, step
        where = ": ".join(x for x in (host, step) if x)
        super().__init__(f"{where}: {reason}" if where else reason)


def reason_for(error: BaseException | None, host: str) -> str:
    """What went wrong, said about `host`: without its name when the error is that host's.
    (None: a fan-out outcome's error, typed optional, on a path where the outcome failed.)"""
    if error is None:
        return "failed"
    if isinstance(error, DeployError) and error.host == host and error.step is None:
        return error.reason
    return str(error)
