"""Proof of origin: only the trusted server's verdict on the raw From domain counts."""

from __future__ import annotations

import dkim
import pytest

from tests.certificates import make_dkim_key
from worker.inbound import parse
from worker.origin import judge, verify_dkim

TRUSTED = frozenset({"mx.shop.example"})
AMAZON = "From: Amazon <atoz-guarantee-no-reply@amazon.com>"


def _mail(*headers: str, sender: str = AMAZON) -> bytes:
    lines = [*headers, sender, "To: service@shop.example", "Subject: Claim closed", "", "Closed."]
    return "\r\n".join(lines).encode() + b"\r\n"


def _ar(text: str, authserv: str = "mx.shop.example") -> str:
    return f"Authentication-Results: {authserv}; {text}"


@pytest.mark.parametrize(
    ("raw", "domain"),
    [
        (_mail(_ar("dmarc=pass (p=reject) header.from=amazon.com")), "amazon.com"),
        (_mail(_ar("dkim=pass header.d=amazon.com header.s=a1")), "amazon.com"),
        (_mail(_ar("dkim=pass header.i=@amazon.com")), "amazon.com"),
        (_mail(_ar("spf=pass smtp.mailfrom=bounces.amazon.com")), "amazon.com"),
        (
            _mail(
                _ar("dkim=pass header.d=amazon.com"),
                sender="From: <notice@marketplace.amazon.com>",
            ),
            "marketplace.amazon.com",
        ),
        (_mail(_ar("dmarc=pass header.from=amazon.com", authserv="MX.Shop.Example")), "amazon.com"),
    ],
    ids=["dmarc", "dkim-d", "dkim-i", "spf-aligned", "dkim-parent-domain", "id-case"],
)
def test_an_aligned_pass_from_the_trusted_server_proves_the_from_domain(
    raw: bytes, domain: str
) -> None:
    origin = judge(parse(raw), TRUSTED)
    assert origin.verified_domain == domain
    assert origin.vouches_for(f"x@{domain}")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_mail(), "no Authentication-Results from mx.shop.example"),
        (_mail(_ar("dmarc=fail header.from=amazon.com")), "not authenticated"),
        (_mail(_ar("dmarc=pass header.from=amazon.com", authserv="mx.attacker.example")), "no "),
        (_mail(_ar("spf=pass smtp.mailfrom=attacker.example")), "no aligned pass"),
        (_mail(_ar("dkim=pass header.d=com")), "no aligned pass"),
        (_mail(_ar("dkim=fail header.d=amazon.com")), "no aligned pass"),
        (
            _mail(_ar("dmarc=fail header.from=amazon.com"), _ar("dkim=pass header.d=amazon.com")),
            "not authenticated",
        ),
        (_mail(_ar("garbage ;; == ((")), "no Authentication-Results"),
        (_mail(_ar("dmarc=pass header.from=amazon.com " + "x" * 5000)), "no Authentication"),
        (_mail(_ar("dmarc=pass header.from=amazon.com"), AMAZON), "not exactly one"),
        (
            _mail(
                _ar("dmarc=pass header.from=amazon.com"),
                sender="From: a@amazon.com, b@attacker.example",
            ),
            "not exactly one",
        ),
    ],
    ids=[
        "missing",
        "dmarc-fail",
        "someone-elses-header",
        "spf-unaligned",
        "bare-tld",
        "dkim-fail",
        "dmarc-fail-wins",
        "garbage",
        "oversized",
        "two-from-fields",
        "two-from-addresses",
    ],
)
def test_anything_else_proves_nothing(raw: bytes, why: str) -> None:
    origin = judge(parse(raw), TRUSTED)
    assert origin.verified_domain is None
    assert not origin.vouches_for("atoz-guarantee-no-reply@amazon.com")
    assert why in origin.evidence


def test_an_encoded_word_that_reads_like_a_marketplace_is_not_the_address() -> None:
    forged = _mail(
        _ar("dmarc=pass header.from=attacker.example"),
        sender="From: =?utf-8?q?Amazon_=3Cnotice=40amazon.com=3E?= <eve@attacker.example>",
    )
    origin = judge(parse(forged), TRUSTED)
    assert origin.from_address == "eve@attacker.example"
    assert origin.verified_domain == "attacker.example"
    assert not origin.vouches_for("notice@amazon.com")
    bare = _mail(
        _ar("dmarc=pass header.from=amazon.com"), sender="From: =?utf-8?q?notice=40amazon.com?="
    )
    assert judge(parse(bare), TRUSTED).verified_domain is None


def test_without_a_configured_authserv_id_nothing_is_trusted() -> None:
    origin = judge(parse(_mail(_ar("dmarc=pass header.from=amazon.com"))), frozenset())
    assert origin.verified_domain is None
    assert "authserv_ids" in origin.evidence


# DKIM checked by the worker itself (no trusted header): dkimpy with a key served in-process.


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    return make_dkim_key(tmp_path_factory.mktemp("dkim"))


def _signed(pem: bytes, domain: bytes, raw: bytes) -> bytes:
    signature = dkim.sign(raw, b"sel", domain, pem, include_headers=[b"from", b"subject"])
    return bytes(signature) + raw


def test_a_valid_aligned_dkim_signature_proves_the_domain(key: tuple[bytes, bytes]) -> None:
    pem, record = key
    raw = _signed(pem, b"amazon.com", _mail())

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == b"sel._domainkey.amazon.com." else None

    origin = verify_dkim(raw, "atoz-guarantee-no-reply@amazon.com", dns)
    assert origin.verified_domain == "amazon.com"
    # One changed byte of the body after signing: the signature no longer holds.
    tampered = raw.replace(b"Closed.", b"Closed!")
    assert verify_dkim(tampered, "atoz-guarantee-no-reply@amazon.com", dns).verified_domain is None


def test_a_valid_signature_of_another_domain_proves_nothing(key: tuple[bytes, bytes]) -> None:
    pem, record = key
    raw = _signed(pem, b"attacker.example", _mail())

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == b"sel._domainkey.attacker.example." else None

    origin = verify_dkim(raw, "atoz-guarantee-no-reply@amazon.com", dns)
    assert origin.verified_domain is None
    assert "attacker.example" in origin.evidence


def test_dkim_on_broken_or_unsigned_mail_proves_nothing_and_never_raises() -> None:
    assert "no signature" in verify_dkim(_mail(), "a@amazon.com").evidence
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=amazon.com; b=\r\n\r\n\xff\xfe"
    assert verify_dkim(broken, "a@amazon.com", lambda *_a, **_k: None).verified_domain is None
