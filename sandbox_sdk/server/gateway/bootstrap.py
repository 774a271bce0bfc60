"""The local operator's key of a gateway, kept in a private file so local tools can find it.

It has the ``operator`` scope: it administers every tenant's keys, so the
CLI on the server's machine can create keys for any tenant.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sandbox_sdk.server.gateway.api_keys import ApiKeyStore, Scope
from sandbox_sdk.server.gateway.authentication import Authenticator
from sandbox_sdk.server.status import ServiceError
from sandbox_sdk.server.tenancy import DEFAULT_TENANT

log = logging.getLogger(__name__)

ADMIN_SCOPES = (Scope.READ, Scope.WRITE, Scope.ADMIN, Scope.OPERATOR)


def _read_key(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by the owner only, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, text.encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(partial, path)


def ensure_admin_key(authenticator: Authenticator, keys: ApiKeyStore, path: Path) -> str:
    """The operator key in ``path``; creates one (tenant ``default``) if it is missing or dead.

    A key already in the file is reused as long as it still verifies and has
    the operator scope, so restarting a server does not mint a new key. A
    working key without that scope (written before scopes were split) is
    revoked and replaced.
    """
    existing = _read_key(path)
    if existing:
        try:
            record = authenticator.verify_key(existing)
        except ServiceError as error:
            log.warning(
                "the key in %s no longer works (%s); creating a new one", path, error.reason
            )
        else:
            if record.is_operator:
                return existing
            keys.revoke(record.id)
            log.warning("the key in %s lacks the operator scope; replacing it", path)
    created = keys.create(DEFAULT_TENANT, ADMIN_SCOPES, display_name=f"bootstrap operator ({path})")
    _write_private(path, created.secret + "\n")
    log.info("created operator key %s for tenant %s in %s", created.record.id, DEFAULT_TENANT, path)
    return created.secret
