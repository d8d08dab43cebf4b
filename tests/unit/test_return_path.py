"""Signed return paths: only the key's holder can write one that ties a report to a send."""

from __future__ import annotations

import stat
from pathlib import Path

from worker.config import Settings
from worker.return_path import Signer, load_signer, return_path_base

SIGNER = Signer(b"k" * 32)


def test_a_return_path_carries_its_send_and_verifies() -> None:
    path = SIGNER.return_path(1234, "service@shop.example")
    assert path.startswith("service+b1234-") and path.endswith("@shop.example")
    assert SIGNER.sends_in((path,)) == (1234,)
    assert SIGNER.sends_in((path.upper(),)) == (1234,)  # some MTAs upper-case local parts


def test_forged_altered_or_foreign_tokens_tie_nothing() -> None:
    path = SIGNER.return_path(1234, "service@shop.example")
    mac = path.split("-", 1)[1].split("@")[0]
    assert SIGNER.sends_in((path.replace("b1234", "b1235"),)) == ()
    assert SIGNER.sends_in((f"service+b1234-{'a' * len(mac)}@shop.example",)) == ()
    assert Signer(b"x" * 32).sends_in((path,)) == ()
    assert SIGNER.sends_in(("service+b1234@shop.example", "buyer@example.com", "")) == ()


def test_the_base_is_the_bounces_address_else_the_reply_address() -> None:
    plain = Settings.model_validate({"from": "Shop <service@shop.example>"})
    assert return_path_base(plain) == "service@shop.example"
    replies = Settings.model_validate(
        {"from": "service@shop.example", "reply_to": "Help <help@shop.example>"}
    )
    assert return_path_base(replies) == "help@shop.example"
    own = Settings.model_validate({"bounces": {"address": "bounces@mail.shop.example"}})
    assert return_path_base(own) == "bounces@mail.shop.example"


def test_the_key_file_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "worker-secret"
    settings = Settings.model_validate({"bounces": {"secret_file": str(key_file)}})
    first = load_signer(settings)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_signer(settings).key == first.key  # a restart ties reports to earlier sends
    assert "hidden" in repr(first) and first.key.decode() not in repr(first)


def test_the_environment_key_wins_over_the_file(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"bounces": {"secret": "s" * 40, "secret_file": str(tmp_path / "never")}}
    )
    assert load_signer(settings).key == b"s" * 40
    assert not (tmp_path / "never").exists()
