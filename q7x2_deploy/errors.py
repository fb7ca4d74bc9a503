"""Errors the operator can act on: one line each, never a traceback."""

from q7x2_runtime.errors import UserError


class DeployError(UserError):
    """A host, engine or job failed; the message names the host and what to do."""

    exit_code = 1
