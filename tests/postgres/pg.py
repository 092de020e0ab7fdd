"""A real PostgreSQL server for the tests, in a temporary directory: Debian's binaries, initdb + pg_ctl.

As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root). Password
authentication (scram) on 127.0.0.1, so the tests can give a wrong password. ``find_binaries()`` is None
when the server is not installed: the tests are then skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ..helpers import free_port


def find_binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl (or those on PATH)."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if os.access(os.path.join(folder, "initdb"), os.X_OK):
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """One server: ``start()``, ``stop()``, ``url(database)``; ``sql(...)`` runs statements as the superuser."""

    def __init__(self, binaries: Path, *, fsync: bool = False) -> None:
        self.binaries = binaries
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="ipyllm-pg-"))
        self.data = self.root / "data"
        self.password = "pw-" + secrets.token_hex(12)
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self._databases = 0
        (self.root / "password").write_text(self.password + "\n")
        if self.as_root:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.root / "password", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
                  f"--pwfile={self.root / 'password'}", "-E", "UTF8", "--no-sync")  # fmt: skip

    def _run(self, tool: str, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.binaries / tool), *arguments]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        # cwd: the postgres user may not be allowed into the directory the tests run from.
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120, cwd=self.root)

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", password: str | None = "") -> str:
        """A URL for ``database``: with the right password (default), another one, or none (``None``)."""
        secret = self.password if password == "" else password
        credentials = "postgres" if secret is None else f"postgres:{secret}"
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, parameters: Any = (), database: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as connection:
            cursor = connection.execute(statement, parameters)
            return cursor.fetchall() if cursor.description else []

    def new_database(self) -> str:
        """A fresh, empty database (one per test, so tests do not see each other's rows)."""
        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}_{int(time.time() * 1000) % 100000}"
        self.sql(f"CREATE DATABASE {name}")
        return name
