"""SDK error messages in the CLI's words: hints that name a Python argument or method are
rephrased for the flag or command that does the same thing at the command line."""

from __future__ import annotations

import re

_REPHRASINGS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (
            r"pass a larger timeout= or set SANDBOX_TIMEOUT",
            "pass a larger --timeout or set SANDBOX_TIMEOUT",
        ),
        (r"raise run_experiment\(timeout=\.\.\.\)", "raise `run --experiment-timeout`"),
        (
            r"get_results\(raise_on_failure=False\) returns the partial results",
            "`sandbox-sdk results ID --partial` shows the partial results",
        ),
        (
            r"wait again with a larger timeout \(or set SANDBOX_WAIT_TIMEOUT\), or cancel\(\) it",
            "wait again with a larger --wait (or set SANDBOX_WAIT_TIMEOUT), or cancel it with"
            " `sandbox-sdk experiments cancel ID`",
        ),
        (r"wait for it with get_environment", "wait for it with `sandbox-sdk env get ID`"),
        (
            r"wait again with a larger timeout \(or set SANDBOX_WAIT_TIMEOUT\), or delete\(\) it",
            "follow it with `sandbox-sdk template logs ID -f`, or delete it with"
            " `sandbox-sdk template rm ID`",
        ),
        (r"template\.logs\(\), ", ""),
        (r"target / SANDBOX_TARGET", "--target / SANDBOX_TARGET"),
        (
            r"inspect \.result\.stdout/\.result\.stderr or raise the limits",
            "its output is above; raise the limits",
        ),
    )
)


def for_the_command_line(message: str) -> str:
    """``message`` with its Python-API hints rephrased for CLI flags and commands."""
    for pattern, replacement in _REPHRASINGS:
        message = pattern.sub(replacement, message)
    return message
