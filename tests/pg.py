"""A throwaway PostgreSQL cluster for the test suite, started from the machine's binaries."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = ("PostgreSQL server binaries not found. Install them (Debian: apt-get install -y "
                "postgresql-15) or set PG_BIN to the folder holding initdb and pg_ctl.")


def find_pg_bin() -> Path:
    """Return the folder holding initdb and pg_ctl, or fail with how to install them."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    initdb = shutil.which("initdb")
    candidates.append(str(Path(initdb).parent) if initdb else "")
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise RuntimeError(INSTALL_HINT)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temp dir; as root it runs as the unprivileged `postgres` user."""

    def __init__(self):
        self.settings: dict[str, str] = {}  # more server settings for start() (-c name=value)
        self.bin = find_pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="sms-status-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.run_as = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """Return the SQLAlchemy URL of the `postgres` database as superuser `test`."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        """Return the SQLAlchemy URL of database `name`."""
        return f"postgresql+psycopg2://test@127.0.0.1:{self.port}/{name}"

    def start(self) -> "ThrowawayPostgres":
        """Create and start the cluster, tuned for speed (no fsync: the data is disposable)."""
        if self.run_as:
            shutil.chown(self.root, self.run_as)
        self._run("initdb", "-D", str(self.data), "-U", "test", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self

    def own_file(self, name: str, content: bytes) -> Path:
        """Write a file in the cluster's folder that only the server's user may read (keys, certificates)."""
        path = self.root / name
        path.write_bytes(content)
        path.chmod(0o600)
        if self.run_as:
            shutil.chown(path, self.run_as)
        return path

    def stop(self) -> None:
        """Stop the cluster and delete its files."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")
