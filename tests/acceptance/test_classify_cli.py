"""`worker classify` as an operator runs it: the real CLI in a subprocess, no database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.acceptance.test_cli import Workdir, _free_port
from tests.conftest import ROOT

OURS = "<w7.c0ffee01@shop.example>"
DSN = (
    "From: MAILER-DAEMON@mx.shop.example (Mail Delivery System)\nTo: service@shop.example\n"
    "Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
    "--B\nContent-Type: text/plain\n\n<Kim.Lee@buyer.example>: host mx.buyer.example said: "
    "550 5.1.1 No such user (in reply to RCPT TO command)\n\n"
    "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.shop.example\n\n"
    "Final-Recipient: rfc822; Kim.Lee@buyer.example\nAction: failed\nStatus: 5.1.1\n"
    "Diagnostic-Code: smtp; 550 5.1.1 No such user\n\n"
    f"--B\nContent-Type: text/rfc822-headers\n\nMessage-ID: {OURS}\nSubject: Your kettle\n\n"
    "--B--\n"
)
ARF = (
    "From: feedback@fbl.mail.example\nTo: abuse@shop.example\nSubject: Abuse report\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/report; report-type=feedback-report; boundary="R"\n\n'
    "--R\nContent-Type: text/plain\n\nA recipient marked this message as spam.\n\n"
    "--R\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
    "User-Agent: SomeFBL/1.0\nVersion: 1\nOriginal-Rcpt-To: ann@buyer.example\n\n"
    "--R\nContent-Type: message/rfc822\n\nFrom: service@shop.example\nTo: ann@buyer.example\n"
    f"Message-ID: {OURS}\nSubject: Your kettle\n\nHello Ann\n\n--R--\n"
)
REPLY = (
    "From: Ben <ben@buyer.example>\nTo: service@shop.example\n"
    "Subject: Danke\nContent-Type: text/plain; charset=utf-8\n\n"
    "Thanks, the kettle works fine.\n"
)
DELIVERED = (
    "From: UPS <mcinfo@ups.com>\nTo: service@shop.example\n"
    "Subject: UPS Update: Package Delivered\nContent-Type: text/plain; charset=utf-8\n\n"
    "Your package 1Z 999 AA1 01 2345 6784 has been delivered.\n"
)
BROKEN = (
    'From: =?x-unknown?B?!!!?= <>\nContent-Type: multipart/mixed; boundary="never"\n'
    "Content-Transfer-Encoding: base64\n\n\xff\xfe not base64 at all\n"
)


def _classify(work: Workdir, *args: str, stdin: bytes | None = None) -> tuple[int, list[Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "classify", *args],
        cwd=work.path,
        env=work.env,
        input=stdin,
        capture_output=True,
        timeout=60,
    )
    lines = done.stdout.decode("ascii").splitlines()
    return done.returncode, [json.loads(line) for line in lines]


def _workdir(tmp_path: Path) -> Workdir:
    work = Workdir(tmp_path, _free_port())
    work.env["WORKER_INBOX_RULES_FILE"] = str(ROOT / "config" / "mail-rules.yaml")
    return work


def test_classify_prints_one_json_line_per_message_in_order(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    for name, text in (("dsn", DSN), ("arf", ARF), ("reply", REPLY), ("broken", BROKEN)):
        (tmp_path / f"{name}.eml").write_bytes(text.encode("utf-8", "surrogateescape"))
    files = ["dsn.eml", "arf.eml", "missing.eml", "reply.eml", "broken.eml"]

    code, lines = _classify(work, *files)

    assert code == 1  # one file could not be read; the others were
    assert [line["file"] for line in lines] == files
    dsn, arf, missing, reply, broken = lines
    assert (dsn["kind"], dsn["suppress"], dsn["reason"]) == (
        "bounce_hard",
        "kim.lee@buyer.example",
        "hard_bounce",
    )
    assert dsn["evidence"].startswith("dsn_status=5.1.1")
    assert dsn["needs"] == "our return-path token or Message-ID"
    assert dsn["authentication"]["verified_domain"] is None
    assert (arf["kind"], arf["suppress"], arf["reason"]) == (
        "spam_complaint",
        "ann@buyer.example",
        "spam_complaint",
    )
    assert arf["evidence"] == "arf feedback-type=abuse recipient from Original-Rcpt-To"
    assert set(missing) == {"file", "error"}
    assert (reply["kind"], reply["suppress"], reply["reason"]) == ("reply", None, None)
    assert "needs" not in reply
    assert broken["defects"]
    assert broken["suppress"] is None


def test_classify_reads_standard_input_and_escapes_what_mail_says(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    code, lines = _classify(work, stdin=REPLY.encode())
    assert code == 0
    assert [line["file"] for line in lines] == ["-"]
    # A stranger's words reach the evidence: a terminal escape in them comes out escaped.
    hostile = DSN.replace("Status: 5.1.1", "Status: 5.0.0").replace(
        "smtp; 550 5.1.1 No such user", "smtp; 550 No such user \x1b[2J\u202e here"
    )
    raw = subprocess.run(
        [sys.executable, "-m", "worker", "classify"],
        cwd=work.path,
        env=work.env,
        input=hostile.encode(),
        capture_output=True,
        timeout=60,
    ).stdout
    assert raw.isascii() and b"\x1b" not in raw
    assert json.loads(raw)["evidence"].startswith("dsn_status=5.0.0 text=550 No such user \x1b[2J")


def test_classify_names_a_carriers_delivery_and_what_it_needs(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    code, [line] = _classify(work, stdin=DELIVERED.encode())
    assert code == 0
    assert (line["kind"], line["carrier"]) == ("delivered", "ups")
    assert line["tracking_numbers"] == ["1Z999AA10123456784"]
    assert (
        line["evidence"] == "carrier=ups phrase=en:has been delivered tracking=1Z999AA10123456784"
    )
    assert line["needs"].startswith("the carrier's authenticated From domain")
    assert line["suppress"] is None
