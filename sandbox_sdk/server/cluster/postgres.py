"""A throwaway PostgreSQL server: ``initdb`` and ``pg_ctl`` in a temporary directory.

Debian's ``postgresql`` package puts its programs in ``/usr/lib/postgresql/<major>/bin``;
the newest installed major version is used. Nothing is registered with the system
(no ``pg_ctlcluster``, no service): the server lives in its own directory, listens on
127.0.0.1 on a free port, and is gone with that directory after :meth:`stop`.

PostgreSQL refuses to run as root, so as root the server runs as ``nobody`` in a
directory that user owns.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "nobody"
_START_SECONDS = 60


def find_bin_dir() -> Path | None:
    """The ``bin`` directory of the newest PostgreSQL under /usr/lib/postgresql, if any."""
    found = [
        path.parent
        for path in DEBIAN_ROOT.glob("*/bin/initdb")
        if re.fullmatch(r"\d+", path.parent.parent.name)
    ]
    if not found:
        return None
    return max(found, key=lambda bin_dir: int(bin_dir.parent.name))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", SERVER_USER, "--", *argv]


class PostgresNotInstalled(RuntimeError):
    """No PostgreSQL programs were found."""


class PostgresServer:
    """A PostgreSQL server of its own in a temporary directory; user ``postgres``, no password.

    ``parent`` is where the temporary directory is made (the system's temp dir by
    default); as root it must be one ``nobody`` can enter.
    """

    def __init__(self, parent: Path | None = None, bin_dir: Path | None = None) -> None:
        self._parent = parent
        self._bin_dir = bin_dir
        self.root: Path | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` database (user ``postgres``)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def log_path(self) -> Path | None:
        """The server's log file, once started."""
        return None if self.root is None else self.root / "log"

    @staticmethod
    def _pg_ctl(root: Path, bin_dir: Path) -> list[str]:
        data = root / "data"
        return [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]

    def start(self) -> None:
        """Runs initdb and starts the server; waits until it accepts connections.

        Raises :class:`PostgresNotInstalled` without the programs, and
        ``subprocess.CalledProcessError`` (its output attached) when initdb or pg_ctl fail.
        """
        bin_dir = self._bin_dir = self._bin_dir or find_bin_dir()
        if bin_dir is None or not (bin_dir / "initdb").exists():
            raise PostgresNotInstalled(
                f"PostgreSQL is not installed (no {DEBIAN_ROOT}/<version>/bin/initdb);"
                " apt-get install postgresql, or make install"
            )
        root = self.root = Path(tempfile.mkdtemp(prefix="sandbox-pg-", dir=self._parent))
        try:
            if os.geteuid() == 0:
                shutil.chown(root, SERVER_USER)
            root.chmod(0o700)
            self.port = free_port()
            initdb = [str(bin_dir / "initdb"), "-D", str(root / "data")]
            initdb += ["-U", "postgres", "-A", "trust", "--no-sync"]
            subprocess.run(_as_server_user(initdb), check=True, capture_output=True)
            options = f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
            start = [
                *self._pg_ctl(root, bin_dir),
                "-t",
                str(_START_SECONDS),
                "-o",
                options,
                "start",
            ]
            subprocess.run(_as_server_user(start), check=True, capture_output=True)
        except BaseException:
            self.stop()
            raise

    def create_database(self, name: str) -> str:
        """Creates database ``name``; returns its URL."""
        import psycopg  # the [server] extra; imported here so the module loads without it

        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def stop(self) -> None:
        """Stops the server at once (``-m immediate``) and removes its directory."""
        root, bin_dir = self.root, self._bin_dir
        if root is None:
            return
        if bin_dir is not None and (root / "data" / "postmaster.pid").exists():
            subprocess.run(
                _as_server_user([*self._pg_ctl(root, bin_dir), "-m", "immediate", "stop"]),
                check=False,
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)
        self.root = None
