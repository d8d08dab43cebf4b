"""The shipping notice, switched on, goes out through a real aiosmtpd sink on loopback with
the tracking link; switched off (as shipped) nothing goes out."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import settings_for
from worker.clock import FixedClock
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import Order, SendState
from worker.render import Renderer
from worker.sink import Sink
from worker.store import Store

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = datetime(2026, 3, 3, 8, 30, tzinfo=UTC)  # a Tuesday; 09:30 in Paris
ORDERS = [
    Order(
        "SHOP-3001",
        "shop",
        "claire@example.fr",
        "Claire Dubois",
        ("Moulin à café", "Filtre"),
        "fr",
        "FR",
        shipped_at=SHIPPED,
        carrier="中国邮政",
        tracking_number="RR123456785CN",
        expected_delivery_at=SHIPPED + timedelta(days=14),
    ),
    Order(
        "SHOP-3002",
        "shop",
        "ann@example.com",
        "Ann Smith",
        ("Glass kettle 1.7 l",),
        "en",
        "GB",
        shipped_at=SHIPPED,
        carrier="Royal Mail Tracked 48",
        tracking_number="AB123456789GB",  # not S10 (wrong check digit): no second link
    ),
    Order(
        "12-34567-89012",
        "ebay",
        "jonas@example.de",
        "Jonas Müller",
        ("Milchaufschäumer",),
        "de",
        "DE",
        shipped_at=SHIPPED,
        carrier="DHL",
        tracking_number="00340434161234567890",
    ),
]


def campaigns_dir(tmp_path: Path, *, enabled: bool) -> Path:
    target = tmp_path / "campaigns"
    shutil.copytree(ROOT / "campaigns", target)
    if enabled:
        notice = target / "shipping-notice.yaml"
        text = notice.read_text(encoding="utf-8")
        notice.write_text(text.replace("enabled: false", "enabled: true"), encoding="utf-8")
    return target


async def one_pass(store: Store, sink: Sink, tmp_path: Path, *, enabled: bool) -> Daemon:
    settings = settings_for(
        store, sink.port, campaigns_dir=str(campaigns_dir(tmp_path, enabled=enabled))
    )
    store.upsert_orders(ORDERS, SHIPPED)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    clock = FixedClock(SHIPPED + timedelta(hours=1, minutes=30))
    daemon = Daemon(settings, store, load_checked_campaigns(settings, renderer), renderer, clock)
    report = await daemon.run_pass()
    assert report.ok, report.summary()
    return daemon


async def test_enabled_notice_reaches_the_buyer_with_the_tracking_link(
    store: Store, sink: Sink, tmp_path: Path
) -> None:
    await one_pass(store, sink, tmp_path, enabled=True)
    received = {m["X-Worker-Order"]: m for m in sink.received}
    assert set(received) == {"SHOP-3001", "SHOP-3002"}, "shop orders only"

    claire = received["SHOP-3001"]
    assert claire["X-Worker-Campaign"] == "shipping-notice"
    assert claire["Content-Language"] == "fr"
    assert str(claire["Subject"]) == "Votre commande SHOP-3001 est en route"
    text = claire.get_body(("plain",)).get_content()
    html = claire.get_body(("html",)).get_content()
    tracking = "https://t.17track.net/en#nums=RR123456785CN&fc=3011"
    local = "https://www.laposte.fr/outils/suivre-vos-envois?code=RR123456785CN"
    assert "China Post" in text and "RR123456785CN" in text
    assert tracking in text and local in text
    assert f'<a href="{tracking.replace("&", "&amp;")}">' in html
    assert f'<a href="{local}">' in html
    assert "Moulin à café" in text and "Filtre" in text
    assert "17\u2009–\u200917 mars" not in text and "17 mars" in text, "one day: no range"

    ann = received["SHOP-3002"].get_body(("plain",)).get_content()
    assert "Royal Mail" in ann
    assert "https://www.royalmail.com/track-your-item#/tracking-results/AB123456789GB" in ann
    assert ann.count("https://") == 1, "no local post link for a non-S10 number"

    sent = store.sends([SendState.SENT])
    assert {(s.order_id, s.campaign, s.step) for s in sent} == {
        ("SHOP-3001", "shipping-notice", "shipped"),
        ("SHOP-3002", "shipping-notice", "shipped"),
    }


async def test_shipped_disabled_sends_nothing(store: Store, sink: Sink, tmp_path: Path) -> None:
    await one_pass(store, sink, tmp_path, enabled=False)
    assert sink.received == []
    assert store.sends([SendState.SENT]) == []
