"""A real PostgreSQL server for the tests, started on a free loopback port and stopped after.

Uses the Debian package's binaries (`apt-get install postgresql`; `make test` does it).
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
The data directory is temporary; authentication is `trust` on loopback only.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest

TABLES = (
    "extended_query_tag_error", "extended_query_tag_value", "extended_query_tag", "operation",
    "audit_event", "change", "request_attribute", "instance", "series", "study",
    "webhook_delivery", "webhook_event", "webhook_cursor", "webhook_stable", "webhook", "workitem", "ups_subscription",
    "ups_event")


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    port: int
    data_dir: str
    user: str

    def url(self, database: str = "dicomserver") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"


def _as_server_user(command: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *command] if user else command


def start_postgres() -> PostgresServer:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    run_as = "postgres" if os.geteuid() == 0 else None
    owner = run_as or pwd.getpwuid(os.geteuid()).pw_name
    base = tempfile.mkdtemp(prefix="dicomserver-pg-")
    data_dir = os.path.join(base, "data")
    if run_as:
        shutil.chown(base, user=run_as)
    port = _free_port()
    subprocess.run(
        _as_server_user([initdb, "-D", data_dir, "-U", owner, "--auth=trust", "-E", "UTF8", "--no-sync"], run_as),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=200"
    subprocess.run(
        _as_server_user([pg_ctl, "-D", data_dir, "-o", options, "-l", os.path.join(base, "log"), "-w", "start"], run_as),
        check=True,
        capture_output=True,
    )
    server = PostgresServer(port, data_dir, owner)
    deadline = time.monotonic() + 20
    while True:
        result = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", owner, "-d", "postgres", "-c", "CREATE DATABASE dicomserver"],
            capture_output=True,
        )
        if result.returncode == 0:
            return server
        if time.monotonic() > deadline:
            stop_postgres(server)
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr.decode(errors='replace')}")
        time.sleep(0.2)


def stop_postgres(server: PostgresServer) -> None:
    run_as = "postgres" if os.geteuid() == 0 else None
    subprocess.run(
        _as_server_user([_bin("pg_ctl") or "pg_ctl", "-D", server.data_dir, "-m", "immediate", "stop"], run_as),
        capture_output=True,
    )
    shutil.rmtree(os.path.dirname(server.data_dir), ignore_errors=True)


def truncate_all(url: str) -> None:
    """Empty the index tables between tests (much faster than a new database)."""
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            present = {row[0] for row in cursor.fetchall()}
            tables = [t for t in TABLES if t in present]
            if tables:
                cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
            if "partition" in present:  # the default partition (key 1) is part of the schema
                cursor.execute('DELETE FROM "partition" WHERE "key" <> 1')
    finally:
        connection.close()


@pytest.fixture(scope="session")
def postgres():
    """The session's PostgreSQL server; skipped where it cannot run, except in CI."""
    try:
        server = start_postgres()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not available: {exc}")
    yield server
    stop_postgres(server)
