"""One-click unsubscribe: tokens bound to an order's buyer, the pages, the header, the
settings, and what `worker check` warns about."""

from __future__ import annotations

import base64
import email
import email.policy
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_compose import NOW, ORDER, RENDERED, SEND
from worker.cli import _require_one_click, main, unsubscribe_warnings
from worker.compose import compose
from worker.config import Settings
from worker.errors import ConfigError
from worker.health import Heartbeat, stalls
from worker.metrics import reason_code
from worker.unsubscribe import (
    MAX_TOKEN_CHARS,
    OneClick,
    SecretMissing,
    read_token,
    secret_from,
)
from worker.unsubscribe_page import WORDS, masked, render_page

KEY = OneClick(b"0123456789abcdef0123456789abcdef")
OTHER_KEY = OneClick(b"fedcba9876543210fedcba9876543210")
_ORDER_IDS = st.text(min_size=1, max_size=64).filter(
    lambda s: s.isprintable() and len(s.encode()) <= 256
)
_ADDRESSES = st.emails()


@given(_ORDER_IDS, _ADDRESSES)
def test_a_token_is_valid_for_its_order_and_buyer_only(order_id: str, address: str) -> None:
    token = KEY.token(order_id, address)
    assert read_token(token) is not None and read_token(token)[0] == order_id  # type: ignore[index]
    assert KEY.valid(token, address)
    assert KEY.valid(token, address.upper())  # addresses compare as the store keeps them
    assert not KEY.valid(token, "x" + address)
    assert not OTHER_KEY.valid(token, address)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token) and len(token) <= MAX_TOKEN_CHARS


@given(_ORDER_IDS, _ADDRESSES, st.data())
def test_an_altered_token_is_refused(order_id: str, address: str, data: st.DataObject) -> None:
    token = KEY.token(order_id, address)
    at = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other = data.draw(st.sampled_from(alphabet).filter(lambda c: c != token[at]))
    altered = token[:at] + other + token[at + 1 :]
    assert not KEY.valid(altered, address)


def test_a_token_cannot_be_moved_to_another_buyers_order() -> None:
    """The MAC of one order, put beside another order's id, covers the wrong buyer."""
    ann = KEY.token("SHOP-1", "ann@example.com")
    _, mac = read_token(ann)  # type: ignore[misc]
    moved = base64.urlsafe_b64encode(b"\x01" + mac + b"SHOP-2").rstrip(b"=").decode()
    assert read_token(moved) == ("SHOP-2", mac)
    assert not KEY.valid(moved, "ben@example.com")
    assert not KEY.valid(moved, "ann@example.com")


@given(st.text(max_size=600))
def test_any_text_is_read_or_refused_never_raises(text: str) -> None:
    read = read_token(text)
    assert read is None or (read[0].isprintable() and len(read[1]) == 32)
    assert not KEY.valid(text, "ann@example.com") or text == KEY.token(read[0], "ann@example.com")  # type: ignore[index]


@pytest.mark.parametrize(
    "token", ["", "A" * (MAX_TOKEN_CHARS + 1), "a+b/c=", "AQ", "AgAA" * 12, "../../etc"]
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert read_token(token) is None
    assert not KEY.valid(token, "ann@example.com")


def test_the_key_never_appears_in_an_error_or_a_repr() -> None:
    with pytest.raises(SecretMissing, match="WORKER_UNSUBSCRIBE_SECRET is not set"):
        secret_from({}, "WORKER_UNSUBSCRIBE_SECRET")
    with pytest.raises(SecretMissing) as short:
        secret_from({"K": "hunter2"}, "K")
    assert "hunter2" not in str(short.value) and "fewer than 16 bytes" in str(short.value)
    key = secret_from({"K": "a-long-enough-secret-value"}, "K")
    assert "a-long-enough" not in repr(OneClick(key))


def test_the_secret_env_setting_takes_a_name_not_a_key() -> None:
    assert Settings().unsubscribe.secret_env == "WORKER_UNSUBSCRIBE_SECRET"
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        Settings.model_validate({"unsubscribe": {"secret_env": "s3cr3t-v@lue"}})


def test_http_is_on_and_on_loopback_by_default() -> None:
    http = Settings().http
    assert (http.enabled, http.bind, http.port) == (True, "127.0.0.1", 8787)
    assert http.max_body_bytes <= 4096


# The List-Unsubscribe header ------------------------------------------------------------------


def _composed(token: str | None, **unsubscribe: Any) -> Any:
    config = Settings.model_validate(
        {"from": "Shop <service@shop.example>", "unsubscribe": unsubscribe}
    )
    msg = compose(
        RENDERED, send=SEND, order=ORDER, settings=config, now=NOW, unsubscribe_token=token
    )
    return email.message_from_bytes(bytes(msg), policy=email.policy.default)


def test_the_token_url_goes_into_list_unsubscribe_beside_the_mailto() -> None:
    token = KEY.token(ORDER.order_id, ORDER.buyer_email)
    parsed = _composed(token, url="https://shop.example/unsubscribe/{token}")
    assert parsed["List-Unsubscribe"] == (
        "<mailto:service@shop.example?subject=unsubscribe>, "
        f"<https://shop.example/unsubscribe/{token}>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_without_a_token_the_url_is_left_out_and_the_mailto_stands() -> None:
    parsed = _composed(None, url="https://shop.example/unsubscribe/{token}")
    assert parsed["List-Unsubscribe"] == "<mailto:service@shop.example?subject=unsubscribe>"
    assert parsed["List-Unsubscribe-Post"] is None


# The pages ------------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", sorted(WORDS))
def test_every_language_has_all_three_pages(locale: str) -> None:
    ask = render_page("ask", locale, seller="Kettle & Co", address="ann@example.com")
    assert f'<html lang="{locale}">' in ask and 'method="post"' in ask
    assert 'name="List-Unsubscribe" value="One-Click"' in ask
    assert "Kettle &amp; Co" in ask and "a…@example.com" in ask
    assert "ann@example.com" not in ask
    done = render_page("done", locale, seller="Kettle & Co", address="ann@example.com")
    assert "<form" not in done and "Kettle &amp; Co" in done
    assert "<form" not in render_page("invalid", locale)


def test_a_hostile_seller_name_or_address_is_escaped() -> None:
    page = render_page("ask", "en", seller="<script>x</script>", address='"><img src=x>@a.b')
    assert "<script>" not in page and "<img" not in page


def test_masked_addresses() -> None:
    assert masked("ann@example.com") == "a…@example.com"
    assert masked("nonsense") == "…"


# Metrics labels and health ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("suppressed:unsubscribe", "suppressed"),
        ("previous_step_not_sent:review-request", "previous_step_not_sent"),
        ("Dispute open: since 2026-03-01", "dispute_open"),
        ("", "unknown"),
        ("x" * 500, "x" * 64),
    ],
)
def test_skip_reasons_are_cut_to_their_code(reason: str, code: str) -> None:
    assert reason_code(reason) == code


class _Reader:
    """A mailbox reader's state, as health reads it."""

    name = "service@imap.shop.example"
    lease_s = 210.0

    def __init__(self, read: datetime | None) -> None:
        self.last_read_at = read

    def last_read(self) -> datetime | None:
        return self.last_read_at

    def fresh(self, now: datetime) -> bool:
        read = self.last_read_at
        return read is not None and now - read <= timedelta(seconds=self.lease_s)


START = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def test_health_names_the_loop_when_it_is_late() -> None:
    beat = Heartbeat(START, START)
    beat.beat(START, 80)
    assert stalls(START + timedelta(seconds=80), beat, [], START) == []
    [stall] = stalls(START + timedelta(seconds=100), beat, [], START)
    assert stall.startswith("loop: no pass for 100 s (20 s longer than allowed)")


def test_health_forgives_a_mailbox_its_first_lease_then_names_it() -> None:
    beat = Heartbeat(START, START + timedelta(days=1))
    never = _Reader(None)
    assert stalls(START + timedelta(seconds=200), beat, [never], START) == []
    [stall] = stalls(START + timedelta(seconds=211), beat, [never], START)
    assert stall == "mailbox service@imap.shop.example: never read, allowed 210 s"
    read = _Reader(START)
    assert stalls(START + timedelta(seconds=210), beat, [read], START) == []
    assert (
        "last read 2026-03-09T12:00:00+00:00"
        in stalls(START + timedelta(seconds=211), beat, [read], START)[0]
    )


# worker check ---------------------------------------------------------------------------------


def _settings(**data: Any) -> Settings:
    return Settings.model_validate({"from": "Shop <service@shop.example>", **data})


def test_check_warns_when_no_unsubscribe_can_be_received() -> None:
    [warning] = unsubscribe_warnings(_settings())
    assert "no mailbox is read" in warning and "mailto:service@shop.example" in warning
    token_url = {"url": "https://shop.example/unsubscribe/{token}"}
    assert unsubscribe_warnings(_settings(unsubscribe=token_url)) == []
    off = _settings(unsubscribe=token_url, http={"enabled": False})
    assert len(unsubscribe_warnings(off)) == 1
    mailbox = {"host": "imap.shop.example", "username": "service@shop.example"}
    assert unsubscribe_warnings(_settings(imap=mailbox)) == []


def test_check_and_run_refuse_a_token_url_without_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORKER_UNSUBSCRIBE_SECRET", raising=False)
    settings = _settings(unsubscribe={"url": "https://shop.example/unsubscribe/{token}"})
    with pytest.raises(ConfigError, match="WORKER_UNSUBSCRIBE_SECRET is not set"):
        _require_one_click(settings)
    monkeypatch.setenv("WORKER_UNSUBSCRIBE_SECRET", "0123456789abcdef0123")
    _require_one_click(settings)


def test_worker_check_prints_the_warning_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("WORKER_")]:
        monkeypatch.delenv(name)
    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "worker.yaml"
    config.write_text(
        f"database_url: sqlite:///{tmp_path / 'worker.db'}\n"
        f"campaigns_dir: {root / 'campaigns'}\n"
        f"templates_dir: {root / 'templates'}\n"
        f"bounces: {{secret_file: {tmp_path / 'secret'}}}\n"
        "log_format: json\n",
        encoding="utf-8",
    )
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok: ") and out[1].startswith("warning: no one can receive")
