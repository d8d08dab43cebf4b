"""A throwaway PostgreSQL on 127.0.0.1 for the tests: a real server, no mocks.

Each instance owns a temporary directory: the cluster that ``initdb`` makes there, the unix
socket and the server's log. It listens on 127.0.0.1 only, on a free port, and gives up
durability for speed (``fsync``, ``synchronous_commit`` and ``full_page_writes`` off): nothing
in it outlives the test run. The Debian package's own cluster and service are never used.

``initdb`` and ``postgres`` refuse to run as root, so under root (CI, this machine) the
cluster belongs to the package's ``postgres`` account and its binaries run as that user.

Two roles: the superuser ``postgres``, trusted on the socket and on loopback, creates and
drops the databases; :data:`ROLE` owns them and must give :data:`PASSWORD` (scram-sha-256),
so the URLs the tests hand to the worker carry a real password.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import URL

from tests.dovecot import free_port

START_DEADLINE_S = 60
COMMAND_DEADLINE_S = 120
ADMIN = "postgres"
ROLE = "worker"
PASSWORD = "pg-s3cret/p@ss%"
"""The owner role's password; characters that must be quoted in a URL, on purpose."""

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed or would not start; the message says why."""


def _is_server_bindir(path: Path) -> bool:
    """A folder holding the real programs (not Debian's pg_wrapper script, nor a client)."""
    initdb = path / "initdb"
    if not all((path / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
        return False
    with initdb.open("rb") as head:
        return head.read(4) == b"\x7fELF"


def _version_key(path: Path) -> tuple[int, ...]:
    digits = re.findall(r"\d+", path.parent.name)
    return tuple(int(d) for d in digits)


def find_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: ``pg_config --bindir``, the newest Debian
    version folder, or ``initdb`` on PATH when it is (a link to) the real program."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(done.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    return next((path for path in candidates if _is_server_bindir(path)), None)


@dataclass(frozen=True)
class _Identity:
    """Who runs the server: ourselves, or under root the package's ``postgres`` account."""

    uid: int
    gid: int
    switch: bool

    @classmethod
    def current(cls) -> _Identity:
        if os.geteuid() != 0:
            return cls(os.geteuid(), os.getegid(), switch=False)
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "initdb refuses root and there is no postgres user to run it as "
                "(apt-get install postgresql creates one)"
            ) from None
        return cls(account.pw_uid, account.pw_gid, switch=True)

    def as_process(self) -> dict[str, Any]:
        """subprocess arguments that run a program as this identity."""
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


class Postgres:
    """One PostgreSQL cluster; :meth:`create_database` and :meth:`drop_database` per test."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(
                "PostgreSQL's server programs (initdb, pg_ctl, postgres) are not installed "
                "(apt-get install postgresql)"
            )
        self.bindir = bindir
        self.identity = _Identity.current()
        self.root = Path(tempfile.mkdtemp(prefix="postgres-"))
        os.chown(self.root, self.identity.uid, self.identity.gid)
        self.root.chmod(0o700)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._started = False
        self._numbers = itertools.count(1)

    # -- life cycle --------------------------------------------------------------------------

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if self.identity.switch:
            env.update(HOME=str(self.root), USER="postgres", LOGNAME="postgres")
        done = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_DEADLINE_S,
            **self.identity.as_process(),
        )
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"{program} {' '.join(args)} exited with {done.returncode}\n"
                f"{done.stdout}{done.stderr}{self._log_tail()}"
            )
        return done

    def _log_tail(self) -> str:
        if not self.log.exists():
            return ""
        return f"--- {self.log} ---\n{self.log.read_text(errors='replace')[-4000:]}"

    def start(self) -> None:
        """initdb (once), then ``pg_ctl start -w``; the owner role is made on the first start."""
        if self._started:
            return
        first = not self.data.exists()
        if first:
            self._initdb()
        self._run(
            "pg_ctl", "start", "-w", "-t", str(START_DEADLINE_S), "-s",
            "-D", str(self.data), "-l", str(self.log),
        )  # fmt: skip
        self._started = True
        if first:
            with self.admin() as admin:
                admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD {_literal(PASSWORD)}")

    def _initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", ADMIN, "--auth=trust", "--encoding=UTF8",
            "--no-locale", "--no-sync", "--no-instructions",
        )  # fmt: skip
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": _literal(str(self.root)),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "max_connections": "200",
            "shared_buffers": "'64MB'",
            "log_min_messages": "warning",
            "log_min_error_statement": "panic",
        }
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# tests/postgres.py: a throwaway cluster\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        (self.data / "pg_hba.conf").write_text(
            "# TYPE  DATABASE  USER      ADDRESS        METHOD\n"
            f"local   all       {ADMIN:<9} trust\n"
            f"host    all       {ADMIN:<9} 127.0.0.1/32   trust\n"
            f"host    all       all       127.0.0.1/32   scram-sha-256\n",
            encoding="utf-8",
        )

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._run("pg_ctl", "stop", "-w", "-s", "-m", "fast", "-D", str(self.data))

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._started

    # -- databases ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def admin(self) -> Iterator[Any]:
        """An autocommit psycopg connection as the superuser, over the unix socket."""
        import psycopg

        with psycopg.connect(
            host=str(self.root), port=self.port, user=ADMIN, dbname="postgres", autocommit=True
        ) as connection:
            yield connection

    def url(self, database: str, user: str = ROLE, password: str | None = PASSWORD) -> str:
        """A ``postgresql+psycopg://`` URL over TCP on 127.0.0.1, password quoted."""
        return URL.create(
            "postgresql+psycopg",
            username=user,
            password=password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        ).render_as_string(hide_password=False)

    def create_database(self, template: str = "template0", name: str | None = None) -> str:
        """A new database owned by :data:`ROLE`, a copy of ``template``; returns its name."""
        name = name or f"test_{next(self._numbers)}"
        _check_names(name, template)
        with self.admin() as admin:
            admin.execute(f"CREATE DATABASE {name} OWNER {ROLE} TEMPLATE {template}")
        return name

    def freeze_template(self, name: str) -> None:
        """No one may connect to ``name`` any more: CREATE DATABASE ... TEMPLATE needs that."""
        _check_names(name)
        with self.admin() as admin:
            admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true")

    def drop_database(self, name: str) -> None:
        """Dropped even while a connection someone forgot is still open."""
        _check_names(name)
        with self.admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _check_names(*names: str) -> None:
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a usable database name: {name!r}")
