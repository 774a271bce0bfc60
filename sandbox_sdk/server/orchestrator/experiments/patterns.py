"""Regular expressions from users, compiled with RE2: matching time is linear, always.

Python's ``re`` backtracks, so a pattern such as ``^(a+)+$`` takes time
exponential in the subject's length and holds the GIL the whole time: one
scorer could freeze the server. RE2 (``google-re2``) guarantees time linear
in the subject and releases the GIL while it matches. It does not support
backreferences or lookaround; patterns that need them are refused when the
experiment is created, with a message saying so.
"""

from __future__ import annotations

from typing import Protocol

import re2

RE2_SYNTAX_URL = "https://github.com/google/re2/wiki/Syntax"
# RE2's memory budget for one compiled pattern; patterns that need more are refused.
MAX_PROGRAM_BYTES = 8 << 20


class CompiledPattern(Protocol):
    """What the scorers use of a compiled RE2 pattern."""

    def search(self, text: str) -> object | None:
        """A match anywhere in ``text``, or None."""


class PatternError(ValueError):
    """A pattern RE2 cannot compile; the message says why and what to do."""


def compile_pattern(pattern: str) -> CompiledPattern:
    """``pattern`` compiled by RE2; PatternError when RE2 cannot compile it."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_PROGRAM_BYTES
    try:
        compiled: CompiledPattern = re2.compile(pattern, options)
    except re2.error as error:
        raise PatternError(
            f"is not valid RE2 syntax ({_reason(error)}); regex scorers use RE2, which has no"
            f" backreferences or lookaround (see {RE2_SYNTAX_URL})"
        ) from error
    return compiled


def _reason(error: Exception) -> str:
    detail = error.args[0] if error.args else error
    text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
    return text[:160]
