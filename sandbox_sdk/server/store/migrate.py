"""Applies the Alembic migrations in ``sandbox_sdk/server/migrations`` to a database.

No ``alembic.ini`` is needed: the configuration is built here. A SQLite file
made before the migrations moved to Alembic already has the API key table;
it is stamped at the first revision and then upgraded, keeping its keys.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy.pool import NullPool

from sandbox_sdk.server import migrations
from sandbox_sdk.server.store.backends import is_postgres_url

HEAD = "head"
# The revision whose schema the pre-Alembic SQLite files already have.
_LEGACY_REVISION = "0001"


def sqlalchemy_url(database_url: str) -> str:
    """The SQLAlchemy form of a ``postgresql://`` or ``sqlite:///`` URL (psycopg 3 driver)."""
    if is_postgres_url(database_url):
        return "postgresql+psycopg://" + database_url.split("://", 1)[1]
    return database_url


def _config(connection: sqlalchemy.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def upgrade(database_url: str, revision: str = HEAD) -> None:
    """Brings the database's schema up to ``revision`` (default: the newest)."""
    engine = sqlalchemy.create_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
            config = _config(connection)
            if "gw_api_keys" in tables and "alembic_version" not in tables:
                command.stamp(config, _LEGACY_REVISION)
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or ``None`` before any migration."""
    engine = sqlalchemy.create_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if "alembic_version" not in sqlalchemy.inspect(connection).get_table_names():
                return None
            return connection.execute(
                sqlalchemy.text("SELECT version_num FROM alembic_version")
            ).scalar_one_or_none()
    finally:
        engine.dispose()
