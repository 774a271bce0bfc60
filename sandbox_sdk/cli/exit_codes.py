"""The CLI's exit codes: one per kind of error, so scripts can tell failures apart.

====  ==========================================================
Code  Meaning
====  ==========================================================
0     success
1     any other SDK error
2     bad command line (unknown option, missing argument)
3     ConfigError: invalid configuration, missing key file
4     AuthenticationError: no, bad, revoked or expired API key
5     PermissionDeniedError: the key lacks the scope
6     NotFoundError: environment, experiment, model, file, key
7     InvalidArgumentError: the request was rejected
8     FailedPreconditionError: e.g. the environment is not running
9     AlreadyExistsError
10    ResourceExhaustedError (capacity, quota, rate limit)
11    SandboxTimeoutError: a deadline or wait ran out
12    UnavailableError: the gateway or orchestrator is unreachable
13    ExperimentFailedError: FAILED, TIMED_OUT or CANCELLED
14    InternalError: a server bug; quote the request id
15    CancelledError
16    CommandFailedError (``env exec --check``)
17    a local file could not be read or written (``env cp``)
18    TemplateBuildFailedError: a template build FAILED (``template build``)
125   ``env exec`` only: sandbox-sdk itself failed (any of the above)
130   interrupted (Ctrl-C)
====  ==========================================================

``env exec`` passes the command's own exit status through (128 + N when a signal N
killed it, 124 when its timeout did). So that no failure of the CLI can pass for the
command's status, every failure of ``env exec`` itself (a bad command line, an SDK
error) exits 125, as ``docker run`` does, with the reason on stderr; with ``--check``
a failed command exits 16.
"""

from __future__ import annotations

from sandbox_sdk.errors import (
    AlreadyExistsError,
    AuthenticationError,
    CancelledError,
    ConfigError,
    ExperimentFailedError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SandboxError,
    SandboxTimeoutError,
    TemplateBuildFailedError,
    UnavailableError,
)
from sandbox_sdk.models.execution import CommandFailedError

GENERIC_ERROR = 1
USAGE_ERROR = 2
COMMAND_FAILED = 16
LOCAL_FILE_ERROR = 17
TEMPLATE_BUILD_FAILED = 18
COMMAND_NOT_RUN = 125
INTERRUPTED = 130

EXIT_CODES: tuple[tuple[type[SandboxError], int], ...] = (
    (ConfigError, 3),
    (AuthenticationError, 4),
    (PermissionDeniedError, 5),
    (NotFoundError, 6),
    (InvalidArgumentError, 7),
    (FailedPreconditionError, 8),
    (AlreadyExistsError, 9),
    (ResourceExhaustedError, 10),
    (SandboxTimeoutError, 11),
    (UnavailableError, 12),
    (ExperimentFailedError, 13),
    (InternalError, 14),
    (CancelledError, 15),
    (CommandFailedError, 16),
    (TemplateBuildFailedError, TEMPLATE_BUILD_FAILED),
)


def exit_code_for(error: SandboxError) -> int:
    """The exit code for an SDK error."""
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return GENERIC_ERROR
