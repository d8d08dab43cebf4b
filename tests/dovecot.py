"""A throwaway Dovecot on 127.0.0.1 for the integration tests: real IMAP, no mocks.

Each instance owns a temporary directory with its own dovecot.conf, passwd-file, a
self-signed certificate made with the openssl command, the mail of its users and its log.
It runs in the foreground as a child process (``dovecot -F``), so stopping the test run
stops it too; the Debian package's own service is never used.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from imapclient import IMAPClient

from tests.certificates import make_self_signed
from worker.config import ImapSettings, TlsMode

START_DEADLINE_S = 15.0
STOP_DEADLINE_S = 10.0


class DovecotUnavailable(RuntimeError):
    """Dovecot is not installed or would not start; the message says why."""


def find_dovecot() -> str | None:
    """The dovecot binary: on PATH, or in /usr/sbin which a plain user's PATH often lacks."""
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class User:
    name: str
    password: str


@dataclass(frozen=True)
class _Identity:
    """Who owns the mail and who Dovecot's own processes run as.

    Dovecot refuses to touch mail as root, so under root (CI, this machine) mail belongs to
    the package's ``dovecot`` account and the login processes run as ``dovenull``.
    """

    uid: int
    gid: int
    internal_user: str
    login_user: str

    @classmethod
    def current(cls) -> _Identity:
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid()).pw_name
            return cls(os.geteuid(), os.getegid(), me, me)
        try:
            internal = pwd.getpwnam("dovecot")
            login = pwd.getpwnam("dovenull")
        except KeyError as error:
            raise DovecotUnavailable(f"running as root needs the dovecot users: {error}") from None
        return cls(internal.pw_uid, internal.pw_gid, internal.pw_name, login.pw_name)


class Dovecot:
    """One Dovecot server; ports and mail survive :meth:`restart`."""

    def __init__(self, root: Path | None = None) -> None:
        binary = find_dovecot()
        if binary is None:
            raise DovecotUnavailable("dovecot is not installed (apt-get install dovecot-imapd)")
        if shutil.which("openssl") is None:
            raise DovecotUnavailable("the openssl command makes the test certificate")
        self.binary = binary
        self.identity = _Identity.current()
        self.root = root or Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.root.chmod(0o755)  # the mail owner is not root when we are
        self.port = free_port()
        self.tls_port = free_port()
        self.cert = self.root / "cert.pem"
        self.key = self.root / "key.pem"
        self.log = self.root / "dovecot.log"
        self.passwd = self.root / "passwd.d"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_files()

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    def _write_files(self) -> None:
        for name in ("run", "state", "home"):
            (self.root / name).mkdir(exist_ok=True)
        os.chown(self.root / "home", self.identity.uid, self.identity.gid)
        self.passwd.mkdir(exist_ok=True)
        make_self_signed(self.cert, self.key)
        self.conf.write_text(self._config(), encoding="utf-8")

    def _config(self) -> str:
        ident = self.identity
        return f"""\
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.log}
info_log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = {min(ident.uid, 1)}
first_valid_gid = {min(ident.gid, 1)}
default_internal_user = {ident.internal_user}
default_login_user = {ident.login_user}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
}}
imap_idle_notify_interval = 1 mins
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd}/%u
}}
userdb {{
  driver = static
  args = uid={ident.uid} gid={ident.gid} home={self.root}/home/%u
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
"""

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start in the foreground and wait for the greeting, or fail showing the log."""
        if self._process is not None:
            return
        self._process = subprocess.Popen(
            [self.binary, "-F", "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_for_greeting()
        except DovecotUnavailable:
            self.stop()
            raise

    def _wait_for_greeting(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        last = "no attempt"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                last = f"dovecot exited with {self._process.returncode}"
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    greeting = sock.recv(200)
                if greeting.startswith(b"* OK"):
                    return
                last = f"unexpected greeting {greeting!r}"
            except OSError as error:
                last = str(error)
            time.sleep(0.05)
        raise DovecotUnavailable(
            f"dovecot did not greet on port {self.port}: {last}\n{self._output()}"
        )

    def _output(self) -> str:
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        out = b""
        if self._process is not None and self._process.poll() is not None and self._process.stdout:
            out = self._process.stdout.read()
        return f"--- {self.log} ---\n{log[-4000:]}\n--- output ---\n{out.decode(errors='replace')}"

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after a deadline, wait until gone.

        The whole group, because Dovecot's master leaves running imap processes (and with
        them open client connections) behind when it alone is stopped.
        """
        process, self._process = self._process, None
        if process is None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _signal_group(process.pid, signal.SIGKILL)
        if process.stdout:
            process.stdout.close()

    def restart(self) -> None:
        """Same ports, same users, same mail."""
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- users and mail ----------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> User:
        """A user with a fresh empty mailbox, known at once without a restart.

        Each user has a passwd-file of its own: Dovecot looks at a known file's mtime at most
        once a second, but opens a file it has not seen on the first login.
        """
        if "/" in name or ":" in name:
            raise ValueError(f"not a usable test user name: {name!r}")
        shutil.rmtree(self.root / "home" / name, ignore_errors=True)
        staged = self.passwd / f".{name}.new"
        staged.write_text(f"{name}:{{PLAIN}}{password}\n", encoding="utf-8")
        staged.replace(self.passwd / name)
        return User(name, password)

    def client(self, user: User) -> IMAPClient:
        """A logged-in IMAPClient on the plain port, for arranging a test."""
        client = IMAPClient("127.0.0.1", self.port, ssl=False, timeout=10)
        client.login(user.name, user.password)
        return client

    def append(
        self,
        user: User,
        folder: str,
        raw: bytes,
        flags: Iterable[str] = (),
        when: datetime | None = None,
    ) -> int:
        """Append as another client would; returns the new UID."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            response = client.append(folder, raw, tuple(flags), msg_time=when)
        return _appended_uid(response)

    def change_uidvalidity(self, user: User, folder: str) -> None:
        """Make ``folder`` report a new UIDVALIDITY, same messages and flags, new UIDs.

        Dovecot cannot rename INBOX, so the server is stopped, the folder's UID list and
        indexes are removed, and it starts again: it renumbers the messages it finds.
        """
        before = self.uidvalidity(user, folder)
        maildir = self.root / "home" / user.name / "Maildir"
        folder_dir = maildir if folder.upper() == "INBOX" else maildir / f".{folder}"
        self.stop()
        for stale in [*folder_dir.glob("dovecot-uidlist"), *folder_dir.glob("dovecot.index*"),
                      *maildir.glob("dovecot.list.index*")]:  # fmt: skip
            stale.unlink()
        self.start()
        after = self.uidvalidity(user, folder)
        if after == before:
            raise AssertionError(f"UIDVALIDITY of {folder} stayed {before}")

    def uidvalidity(self, user: User, folder: str) -> int:
        with self.client(user) as client:
            status = client.folder_status(folder, [b"UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])

    # -- how to reach it ---------------------------------------------------------------------

    def imap_settings(
        self, user: User, tls: TlsMode = TlsMode.NONE, **changes: object
    ) -> ImapSettings:
        """Settings for worker.mailbox; implicit TLS uses the second listener."""
        port = self.tls_port if tls is TlsMode.IMPLICIT else self.port
        data: dict[str, object] = {
            "host": "127.0.0.1",
            "port": port,
            "tls": tls,
            "username": user.name,
            "password": user.password,
            "ca_file": self.cert,
            "timeout_s": 5,
            **changes,
        }
        return ImapSettings.model_validate(data)


def _signal_group(leader: int, signum: signal.Signals) -> None:
    try:
        os.killpg(leader, signum)
    except ProcessLookupError:
        return


def _appended_uid(response: bytes) -> int:
    """The UID from ``[APPENDUID validity uid]`` (UIDPLUS, which Dovecot always offers)."""
    text = response.decode("ascii", "replace")
    start = text.index("[APPENDUID ") + len("[APPENDUID ")
    return int(text[start:].split("]", 1)[0].split()[1])
