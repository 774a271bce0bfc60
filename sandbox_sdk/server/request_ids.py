"""Request ids, which make a retried create return what the first attempt made."""

from __future__ import annotations

import sqlite3


class DuplicateRequestError(Exception):
    """Another record of the tenant was created with the same request id.

    The store's unique index refused the insert: the caller answers with the
    record the first attempt created instead of making a second one.
    """


def is_duplicate_request(error: sqlite3.IntegrityError, request_id: str) -> bool:
    """Whether ``error`` is the unique index on request ids refusing ``request_id``."""
    return bool(request_id) and "request_id" in str(error)
