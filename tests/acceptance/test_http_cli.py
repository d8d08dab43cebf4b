"""`worker run` serves /healthz, /metrics and one-click unsubscribe from a real process, with
the key taken from the environment; `worker run` and `worker check` refuse a token URL
without its key."""

from __future__ import annotations

import email
import email.policy
import json
import re
import signal
import sqlite3
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_cli import DUE, Workdir, _free_port, maildir_count, wait_until

SECRET = "an operator's key, long enough for HMAC"
URL = "https://shop.example/unsubscribe/{token}"


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    work = Workdir(tmp_path, _free_port())
    work.env["WORKER_UNSUBSCRIBE_URL"] = URL
    work.env["WORKER_UNSUBSCRIBE_SECRET"] = SECRET
    return work


@pytest.fixture
def sink(workdir: Workdir) -> Iterator[subprocess.Popen[str]]:
    process = workdir.start("sink", "--port", str(workdir.smtp_port), "--maildir", "var/sink")
    assert process.stdout is not None and "sink listening" in process.stdout.readline()
    yield process
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=10)


class _Events:
    """The daemon's JSON log lines, read as they come (stderr must not fill up)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[dict[str, object]] = []
        assert process.stderr is not None
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"event": "text", "line": line})

    def done(self) -> None:
        self._thread.join(timeout=10)

    def first(self, event: str) -> dict[str, object] | None:
        return next((e for e in self.lines if e.get("event") == event), None)


def _request(url: str, data: bytes | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_the_running_daemon_unsubscribes_on_post_with_the_key_from_the_environment(
    workdir: Workdir, sink: subprocess.Popen[str]
) -> None:
    workdir.ready()
    daemon = workdir.start("run", "--now", DUE)
    events = _Events(daemon)
    try:
        wait_until(lambda: events.first("http.listening") is not None, 30, "the HTTP server")
        wait_until(lambda: maildir_count(workdir.path / "var/sink") == 3, 30, "three check-ins")
        listening = events.first("http.listening")
        assert listening is not None and listening["bind"] == "127.0.0.1"
        base = f"http://127.0.0.1:{listening['port']}"
        assert _request(f"{base}/healthz") == (200, "ok\n")
        wait_until(lambda: "worker_sends_total{" in _request(f"{base}/metrics")[1], 10, "a send")

        ann = next(
            m
            for m in (
                email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in (workdir.path / "var/sink" / "new").iterdir()
            )
            if "ann@example.com" in str(m["To"])
        )
        found = re.search(r"<https://shop\.example/unsubscribe/([\w-]+)>", ann["List-Unsubscribe"])
        assert found is not None and ann["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        here = f"{base}/unsubscribe/{found.group(1)}"
        status, page = _request(here)
        assert status == 200 and 'method="post"' in page
        assert _suppressed(workdir) == []
        assert _request(here, b"List-Unsubscribe=One-Click")[0] == 200
        assert _suppressed(workdir) == [("ann@example.com", "unsubscribe")]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
        events.done()
        for pipe in (daemon.stdout, daemon.stderr):
            if pipe is not None:
                pipe.close()
    assert daemon.returncode == 0
    assert SECRET not in "".join(json.dumps(e) for e in events.lines)


def _suppressed(workdir: Workdir) -> list[tuple[str, str]]:
    with sqlite3.connect(workdir.path / "var" / "worker.db") as db:
        return list(db.execute("SELECT email, reason FROM suppression"))


@pytest.mark.parametrize("command", [("check",), ("run", "--once")])
def test_a_token_url_without_its_key_is_refused_naming_the_variable(
    workdir: Workdir, command: tuple[str, ...]
) -> None:
    workdir.ready()
    del workdir.env["WORKER_UNSUBSCRIBE_SECRET"]
    done = workdir.run(*command)
    assert done.returncode == 2
    assert "WORKER_UNSUBSCRIBE_SECRET is not set" in done.stderr
    assert "Traceback" not in done.stderr
