"""A throwaway PostgreSQL server on loopback for tests: Debian's server binaries (``make postgres`` installs them),
a fresh cluster in a temporary folder, trust authentication, stopped and deleted afterwards."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_binaries() -> tuple[Path | None, str]:
    """The folder of ``initdb`` and ``pg_ctl``, or None and why there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        return None, "no PostgreSQL server here (Debian's postgresql package: make postgres)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no postgres user to run the server as"
    return Path(found[-1]).parent, ""


@contextmanager
def postgres_database(name: str = "mlflow") -> Iterator[str]:
    """A new database ``name`` on a new server; yields its SQLAlchemy URI."""
    from lightning_asr.client import free_port

    binaries, why = server_binaries()
    if binaries is None:
        raise RuntimeError(why)
    # the server refuses to run as root; its user must reach the folder (pytest's own is private to root)
    as_server = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    if as_server:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*as_server, *command], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr or done.stdout}")

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start")
        try:
            run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name)
            yield f"postgresql://postgres@127.0.0.1:{port}/{name}"
        finally:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
