"""The real command line in subprocesses, as an operator would use it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADER = "order_id,marketplace,buyer_email,buyer_name,product,locale,country,ordered_at,shipped_at,"
DELIVERED_ORDERS = (
    HEADER
    + "delivered_at\n"
    + "SHOP-1,shop,ann@example.com,Ann Smith,Glass kettle,en,GB,,,2026-03-02T11:00:00Z\n"
    + "SHOP-2,shop,bob@example.com,Bob Jones,Tea strainer,en,GB,,,2026-03-02T11:00:00Z\n"
    + "12-34567-89012,ebay,jonas@example.de,Jonas Müller,Milchaufschäumer,de,DE,,,2026-03-02T09:00Z"
    + "\n"
)
DUE = "2026-03-09T12:00:00Z"  # check-in day for all three, a Monday, inside the window


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workdir:
    """A seller's installation: its own config, database and the shipped campaigns."""

    def __init__(self, path: Path, smtp_port: int) -> None:
        self.path = path
        shutil.copytree(ROOT / "campaigns", path / "campaigns")
        shutil.copytree(ROOT / "templates", path / "templates")
        (path / "config").mkdir()
        (path / "config" / "worker.yaml").write_text(
            'from: "Kettle & Co <service@shop.example>"\n'
            "seller: {name: Kettle & Co, signature: Anna}\n"
            f"smtp: {{host: 127.0.0.1, port: {smtp_port}, tls: none, attempts: 1, "
            "backoff_initial_s: 0, timeout_s: 5}\n"
            "poll_interval_s: 1\nshutdown_timeout_s: 10\nhttp: {port: 0}\n",
            encoding="utf-8",
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
        self.env["WORKER_LOG_FORMAT"] = "json"
        self.smtp_port = smtp_port

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "worker", *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"worker {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            cwd=self.path,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> Workdir:
        self.run("db", "upgrade", check=True)
        (self.path / "orders.csv").write_text(DELIVERED_ORDERS, encoding="utf-8")
        self.run("import", "orders", "orders.csv", check=True)
        return self


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def maildir_count(path: Path) -> int:
    return len(list((path / "new").glob("*"))) if (path / "new").exists() else 0


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    return Workdir(tmp_path, _free_port())


@pytest.fixture
def sink(workdir: Workdir) -> Iterator[subprocess.Popen[str]]:
    process = workdir.start("sink", "--port", str(workdir.smtp_port), "--maildir", "var/sink")
    assert process.stdout is not None
    first = process.stdout.readline()
    assert "sink listening" in first, first + (process.stderr.read() if process.stderr else "")
    yield process
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=10)
    assert process.returncode == 0


def test_run_refuses_an_out_of_date_schema(workdir: Workdir) -> None:
    done = workdir.run("run", "--once")
    assert done.returncode == 1
    assert "run `worker db upgrade`" in done.stderr
    assert "Traceback" not in done.stderr


def test_daemon_sends_due_mail_and_stops_cleanly_on_sigterm(
    workdir: Workdir, sink: subprocess.Popen[str]
) -> None:
    workdir.ready()
    daemon = workdir.start("run", "--now", DUE)
    try:
        wait_until(lambda: maildir_count(workdir.path / "var/sink") == 3, 30, "three check-ins")
    finally:
        daemon.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, events = daemon.communicate(timeout=20)
    assert daemon.returncode == 0
    assert time.monotonic() - started < 15
    assert '"event": "daemon.stopped"' in events and events.count('"event": "send.sent"') == 3
    again = workdir.run("run", "--once", "--now", DUE, check=True)
    assert "nothing due" in again.stdout or "sent" not in again.stdout
    assert maildir_count(workdir.path / "var/sink") == 3


def test_once_exits_non_zero_when_a_send_failed(workdir: Workdir, tmp_path: Path) -> None:
    workdir.ready()
    rejecting = workdir.start(
        "sink",
        "--port",
        str(workdir.smtp_port),
        "--maildir",
        "var/sink",
        "--reject",
        "bob@*=550 5.1.1 User unknown",
    )
    try:
        assert rejecting.stdout is not None and "sink listening" in rejecting.stdout.readline()
        done = workdir.run("run", "--once", "--now", DUE)
    finally:
        rejecting.send_signal(signal.SIGINT)
        rejecting.communicate(timeout=10)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sent 2" in done.stdout and "failed 1" in done.stdout
    sends = workdir.run("sends", "--state", "failed", check=True).stdout
    assert "SHOP-2" in sends and "5.1.1" in sends


def test_plan_is_a_dry_run_with_reasons(workdir: Workdir) -> None:
    workdir.ready()
    workdir.run(
        "dispute",
        "open",
        "SHOP-2",
        "--kind",
        "not_received",
        "--at",
        "2026-03-05T00:00:00Z",
        check=True,
    )
    out = workdir.run("plan", "--at", DUE, check=True).stdout
    lines = {line.split()[1] + " " + line.split()[2]: line for line in out.splitlines()[2:-1]}
    assert lines["SHOP-1 review-follow-up/check-in"].startswith("due")
    assert "dispute_open" in lines["SHOP-2 review-follow-up/check-in"]
    assert workdir.run("sends", check=True).stdout.count("\n") == 1, "a dry run records nothing"


def test_bad_campaign_yaml_names_file_line_and_field(workdir: Workdir) -> None:
    workdir.ready()
    campaign = workdir.path / "campaigns" / "review-follow-up.yaml"
    campaign.write_text(
        campaign.read_text().replace("delay: 10d..15d", "delay: 15d..10d"), encoding="utf-8"
    )
    done = workdir.run("run", "--once")
    assert done.returncode == 1
    line = next(
        n for n, text in enumerate(campaign.read_text().splitlines(), 1) if "15d..10d" in text
    )
    assert f"review-follow-up.yaml:{line}" in done.stderr and "delay" in done.stderr
    assert "Traceback" not in done.stderr


def test_template_error_stops_start_up_naming_file_and_line(workdir: Workdir) -> None:
    workdir.ready()
    template = workdir.path / "templates" / "check_in" / "fr.jinja"
    lines = template.read_text(encoding="utf-8").splitlines()
    lines.insert(3, "{{ order.nubmer }}")
    template.write_text("\n".join(lines), encoding="utf-8")
    done = workdir.run("check")
    assert done.returncode == 1
    assert "check_in/fr.jinja:4" in done.stderr and "nubmer" in done.stderr


def test_secrets_are_refused_in_the_config_file(workdir: Workdir) -> None:
    config = workdir.path / "config" / "worker.yaml"
    config.write_text(config.read_text() + "smtp_password_in_file: x\n", encoding="utf-8")
    config.write_text(
        config.read_text().replace("tls: none,", "tls: none, password: hunter2,"), encoding="utf-8"
    )
    done = workdir.run("check")
    assert done.returncode == 2
    assert "WORKER_SMTP_PASSWORD" in done.stderr


def test_environment_overrides_the_config_file(workdir: Workdir) -> None:
    workdir.env["WORKER_SMTP_TLS"] = "sometimes"
    done = workdir.run("check")
    assert done.returncode == 2 and "smtp.tls" in done.stderr


def test_import_reports_bad_rows_and_keeps_the_good_ones(workdir: Workdir) -> None:
    workdir.run("db", "upgrade", check=True)
    bad = DELIVERED_ORDERS + "SHOP-3,shop,not-an-address,Eve,Mug,en,GB,,,2026-03-02\n"
    bad += "SHOP-4,shop,dan@example.com,Dan,Mug,en,GB,,,yesterday\n"
    (workdir.path / "orders.csv").write_text(bad, encoding="utf-8")
    done = workdir.run("import", "orders", "orders.csv")
    assert done.returncode == 1
    assert "orders.csv:5" in done.stderr and "orders.csv:6" in done.stderr
    assert "3 new, 0 updated, 2 rejected" in done.stdout
    rejects = (workdir.path / "orders.rejects.csv").read_text(encoding="utf-8").splitlines()
    assert len(rejects) == 3 and rejects[1].startswith("SHOP-3")
    again = workdir.run("import", "orders", "orders.csv")
    assert "0 new, 3 updated" in again.stdout, "re-importing is an upsert"


def test_a_file_that_is_not_utf8_is_refused_whole_naming_its_line(workdir: Workdir) -> None:
    workdir.run("db", "upgrade", check=True)
    rows = [f"O-{n},shop,o{n}@example.com,Buyer {n},Mug,en,GB,,,2026-03-02" for n in range(2000)]
    latin = "O-x,shop,j@example.com,Jürgen,Mug,de,DE,,,2026-03-02".encode("latin-1")
    data = (HEADER + "delivered_at\n" + "\n".join(rows) + "\n").encode() + latin + b"\n"
    (workdir.path / "orders.csv").write_bytes(data)
    done = workdir.run("import", "orders", "orders.csv")
    assert done.returncode == 2
    assert f"orders.csv:{len(rows) + 2}: not UTF-8 text: byte 0xFC at byte offset" in done.stderr
    assert "nothing was imported" in done.stderr and "Traceback" not in done.stderr
    (workdir.path / "orders.csv").write_bytes(data.replace(latin, b""))
    assert f"{len(rows)} new, 0 updated" in workdir.run("import", "orders", "orders.csv").stdout


PASSWORD = "s3cr3t-p4ss"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://shop:{PASSWORD}@127.0.0.1:1/worker",
        f"postgresql://shop:{PASSWORD}@127.0.0.1:1/worker",
        f"postgresql+psycopg2://shop:{PASSWORD}@127.0.0.1:1/worker",
        f"postgresql//shop:{PASSWORD}@127.0.0.1:1/worker",
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ("db", "status"),
        ("-v", "db", "upgrade"),
        ("import", "orders", "orders.csv"),
        ("run", "--once"),
    ],
)
def test_the_database_password_never_reaches_the_terminal(
    workdir: Workdir, url: str, command: tuple[str, ...]
) -> None:
    """No driver installed here: a clear error naming the package; with one, a refused port."""
    (workdir.path / "orders.csv").write_text(DELIVERED_ORDERS, encoding="utf-8")
    workdir.env["WORKER_DATABASE_URL"] = url
    done = workdir.run(*command)
    assert done.returncode == 1
    assert PASSWORD not in done.stdout + done.stderr
    assert "shop:***@127.0.0.1" in done.stderr
    said = ("pip install", "the database failed", "cannot use this database URL")
    assert any(words in done.stderr.splitlines()[-1] for words in said)
    assert ("Traceback" in done.stderr) == ("-v" in command)


def test_disputes_and_reviews_by_hand_and_from_files(workdir: Workdir) -> None:
    workdir.ready()
    (workdir.path / "disputes.csv").write_text(
        "order_id,kind,opened_at,closed_at\nSHOP-1,damaged,2026-03-03,2026-03-04\nNOPE-9,damaged,2026-03-03,\n",
        encoding="utf-8",
    )
    done = workdir.run("import", "disputes", "disputes.csv")
    assert done.returncode == 1 and "disputes.csv:3" in done.stderr and "NOPE-9" in done.stderr
    assert "1 new" in done.stdout
    workdir.run(
        "review", "add", "SHOP-2", "--rating", "5", "--at", "2026-03-06T00:00:00Z", check=True
    )
    closed = workdir.run("dispute", "close", "SHOP-1", "--at", "2026-03-05T00:00:00Z")
    assert closed.returncode == 1, "already closed by the file: nothing to close"
    out = workdir.run(
        "plan", "--at", "2026-03-06T12:00:00Z", "--order", "SHOP-1", check=True
    ).stdout
    assert "dispute_cooldown" in out
    bad = workdir.run("review", "add", "SHOP-2", "--rating", "9")
    assert bad.returncode == 2 and "rating" in bad.stderr


def test_in_doubt_sends_are_settled_by_an_operator_never_by_the_worker(
    workdir: Workdir,
) -> None:
    """The relay drops the connection after Bob's data: his send is in_doubt, shown with its
    id and Message-ID; the operator records what the relay's log says, or sends it again."""
    workdir.ready()
    dropping = workdir.start(
        "sink", "--port", str(workdir.smtp_port), "--maildir", "var/sink",
        "--drop-after-data", "bob@*",
    )  # fmt: skip
    try:
        assert dropping.stdout is not None and "sink listening" in dropping.stdout.readline()
        done = workdir.run("run", "--once", "--now", DUE)
    finally:
        dropping.send_signal(signal.SIGINT)
        dropping.communicate(timeout=10)
    assert done.returncode == 1 and "in_doubt 1" in done.stdout, done.stdout + done.stderr
    listed = workdir.run("sends", "--state", "in_doubt", check=True).stdout.splitlines()[1:]
    [line] = listed
    send_id, message_id = line.split()[0], line.split()[-1]
    assert "SHOP-2" in line and message_id.startswith("<w")

    refused = workdir.run("sends", "requeue", "99999")
    assert refused.returncode == 1 and "not in_doubt (no such send)" in refused.stderr

    settled = workdir.run("sends", "resolve", send_id, "--not-sent", check=True)
    assert "is now failed" in settled.stdout and '"event": "send.resolved"' in settled.stderr
    again = workdir.run("sends", "requeue", send_id)
    assert again.returncode == 1 and "it is failed" in again.stderr


def test_a_second_worker_on_one_sqlite_file_refuses_to_start(
    workdir: Workdir, sink: subprocess.Popen[str]
) -> None:
    workdir.ready()
    lock = workdir.path / "var" / "worker.db.lock"
    daemon = workdir.start("run", "--now", DUE)
    try:
        wait_until(lambda: lock.exists() and lock.read_text().strip() == str(daemon.pid), 30,
                   "the first worker to hold the file")  # fmt: skip
        second = workdir.run("run", "--once", "--now", DUE)
        reading = workdir.run("sends", check=True)  # other commands still read the file
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=20)
    assert second.returncode == 1
    assert f"another worker (pid {daemon.pid}) is running" in second.stderr
    assert "Traceback" not in second.stderr and "state" in reading.stdout
    after = workdir.run("run", "--once", "--now", DUE)  # the lock went with the process
    assert after.returncode == 0, after.stderr
