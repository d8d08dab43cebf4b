"""Who provably sent a message: the From domain that passed DMARC-aligned authentication.

Anyone can write ``From: Amazon <notice@amazon.com>``. A message may only relax a
protection (close a dispute, record a review) when the seller's own receiving server vouches
for its From domain: an ``Authentication-Results`` header stamped with one of the configured
authserv-ids (RFC 8601 section 5: headers from anyone else are ignored) that reports DMARC
pass for that domain, or an aligned DKIM or SPF pass. Where the server adds no such header,
:func:`verify_dkim` checks the DKIM signatures itself (an I/O step: it asks DNS for keys).

The address judged is the addr-spec of the raw ``From`` field, never a decoded display name:
RFC 2047 encoded words may only stand in display names, so whatever they decode to is not
an address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import authres
import dkim

from worker.inbound import InboundMessage, address_pairs

MAX_HEADER_CHARS = 4096
"""An Authentication-Results header longer than this is not read (authres uses Python re)."""
MAX_SIGNATURES = 5
"""DKIM signatures checked per message; each one costs a DNS query."""

DnsLookup = Callable[..., bytes | None]
"""dkimpy's ``dnsfunc``: a TXT record name (bytes) to the record's text, or None."""


@dataclass(frozen=True, slots=True)
class Origin:
    """The verdict: ``verified_domain`` is set only when the From domain is proven."""

    from_address: str
    """The raw From field's one addr-spec, lower-cased; empty when there is not exactly one."""
    verified_domain: str | None
    evidence: str
    """Why, for an agent: ``mx.shop.example: dmarc=pass header.from=amazon.com``."""

    def vouches_for(self, address: str) -> bool:
        """True when ``address`` is the proven From address's domain."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        return self.verified_domain is not None and domain == self.verified_domain

    @property
    def verified(self) -> bool:
        return self.verified_domain is not None


def from_address(message: InboundMessage) -> str:
    """The one addr-spec of the raw From field, or empty when it has none or several."""
    fields = [str(v) for v in message.tree.get_all("From", [])]
    if len(fields) != 1:
        return ""
    found = [addr for _, addr in address_pairs(fields[0]) if addr]
    if len(found) != 1 or found[0].count("@") != 1:
        return ""
    return found[0].strip().lower()


def judge(message: InboundMessage, trusted_authserv_ids: Iterable[str]) -> Origin:
    """Read the trusted server's Authentication-Results; pure."""
    address = from_address(message)
    if not address:
        return Origin("", None, "not exactly one address in From")
    trusted = {i.lower() for i in trusted_authserv_ids}
    if not trusted:
        return Origin(address, None, "no authserv-id configured (authentication.authserv_ids)")
    domain = _domain(address)
    results = [r for header in _trusted_headers(message, trusted) for r in header.results]
    if not results:
        return Origin(address, None, f"no Authentication-Results from {_names(trusted)}")
    said = "; ".join(_said(r) for r in results)[:300]
    if any(r.method == "dmarc" and r.result != "pass" for r in results):
        return Origin(address, None, f"not authenticated: {said}")
    for result in results:
        if result.result == "pass" and _aligned(_identity(result), domain):
            return Origin(address, domain, f"{_said(result)}")
    return Origin(address, None, f"no aligned pass for {domain}: {said}")


def verify_dkim(raw: bytes, address: str, dnsfunc: DnsLookup | None = None) -> Origin:
    """Check the message's DKIM signatures against DNS; aligned with ``address``'s domain.

    Blocking (DNS); run it in a thread with a timeout. Never raises on a broken message.
    """
    domain = _domain(address)
    if not domain:
        return Origin(address, None, "not exactly one address in From")
    try:
        checker = dkim.DKIM(raw, minkey=1024)
        count = min(
            MAX_SIGNATURES, sum(1 for h in checker.headers if h[0].lower() == b"dkim-signature")
        )
    except Exception as exc:  # dkimpy raises many kinds on malformed mail
        return Origin(address, None, f"dkim: cannot read the message ({type(exc).__name__})")
    if count == 0:
        return Origin(address, None, "dkim: no signature")
    seen: list[str] = []
    for index in range(count):
        signer = _verified_signer(checker, index, dnsfunc)
        seen.append(signer or "fail")
        if signer is not None and _aligned(signer, domain):
            return Origin(address, domain, f"dkim verified d={signer}")
    return Origin(address, None, f"dkim: no aligned valid signature ({', '.join(seen)})")


def _verified_signer(checker: dkim.DKIM, index: int, dnsfunc: DnsLookup | None) -> str | None:
    try:
        ok = checker.verify(idx=index, dnsfunc=dnsfunc or dkim.dnsplug.get_txt)
    except Exception:  # a bad signature or a DNS failure is simply not a pass
        return None
    if not ok or not checker.domain:
        return None
    return bytes(checker.domain).decode("ascii", "replace").lower().rstrip(".")


def _trusted_headers(
    message: InboundMessage, trusted: set[str]
) -> list[authres.AuthenticationResultsHeader]:
    found = []
    for value in message.tree.get_all("Authentication-Results", []):
        text = " ".join(str(value).split())
        if len(text) > MAX_HEADER_CHARS:
            continue
        try:
            header = authres.AuthenticationResultsHeader.parse_value(text)
        except Exception:  # authres raises its own and stdlib errors on garbage
            continue
        if header.authserv_id in trusted:
            found.append(header)
    return found


def _identity(result: authres.AuthenticationResult) -> str:
    """The domain a result vouches for: header.from, header.d / header.i, smtp.mailfrom."""
    wanted = {
        "dmarc": ("header", "from"),
        "dkim": ("header", "d"),
        "spf": ("smtp", "mailfrom"),
    }.get(result.method)
    if wanted is None:
        return ""
    values = {(p.type, p.name): str(p.value or "") for p in result.properties}
    value = values.get(wanted, "")
    if result.method == "dkim" and not value:
        value = values.get(("header", "i"), "")
    return _domain(value)


def _domain(value: str) -> str:
    return value.rpartition("@")[2].strip().lower().rstrip(".")


def _aligned(identity: str, domain: str) -> bool:
    """Relaxed alignment: the same domain, or one a subdomain of the other (never a bare TLD)."""
    if not identity or not domain or "." not in identity or "." not in domain:
        return False
    return identity == domain or domain.endswith("." + identity) or identity.endswith("." + domain)


def _said(result: authres.AuthenticationResult) -> str:
    props = " ".join(f"{p.type}.{p.name}={p.value}" for p in result.properties)
    return f"{result.method}={result.result} {props}".strip()


def _names(ids: set[str]) -> str:
    return ", ".join(sorted(ids))
