"""A throwaway PostgreSQL server for the cluster tests, started once per session.

The server itself is ``sandbox_sdk.server.cluster.postgres`` (also what
``sandbox-cluster`` starts): as root it runs as ``nobody``, which PostgreSQL requires.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from sandbox_sdk.server.cluster.postgres import PostgresServer, find_bin_dir


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a running PostgreSQL server's ``postgres`` database (user ``postgres``)."""
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (make install)")
    server = PostgresServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
