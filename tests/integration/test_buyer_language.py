"""A marketplace export with no locale column: each buyer still gets their own language.

Real SQLite file, the real command line for ``db upgrade``, ``import orders`` and ``plan``,
and the daemon's pass delivering to a real aiosmtpd sink on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from worker.clock import FixedClock
from worker.config import load_settings
from worker.daemon import Daemon, load_checked_campaigns
from worker.render import Renderer
from worker.sink import Sink
from worker.store import Store

ROOT = Path(__file__).resolve().parents[2]
ORDERS = (
    "order_id,marketplace,buyer_email,buyer_name,product,country,site,delivered_at\n"
    "12-34567-89012,ebay,jonas@example.de,Jonas Müller,Milchaufschäumer,DE,ebay.de,"
    "2026-03-02T11:00:00Z\n"
    "SHOP-7,shop,mei@example.tw,林美玲,保溫杯,TW,,2026-03-02T11:00:00Z\n"
    "SHOP-8,shop,ann@example.com,Ann Smith,Glass kettle,GB,,2026-03-02T11:00:00Z\n"
)
AT = "2026-03-10T09:30:00Z"
"""A Tuesday: 10:30 in Berlin, 17:30 in Taipei, 09:30 in London: inside every send window."""

ZH_HANT = """{% block subject %}您的訂單 {{ order.number }}{% endblock %}
{% block text %}
{{ buyer.name }} 您好：

繁體中文測試信。

{{ seller.signature }}
{% endblock %}
{% block html %}
<p>{{ buyer.name }} 您好：</p>
<p>繁體中文測試信。</p>
<p>{{ seller.signature }}</p>
{% endblock %}
"""


def _workdir(path: Path, smtp_port: int) -> Path:
    """The shipped campaigns and templates; a zh-Hant file where the shipped ones lack it."""
    shutil.copytree(ROOT / "campaigns", path / "campaigns")
    shutil.copytree(ROOT / "templates", path / "templates")
    for folder in (path / "templates").iterdir():
        if folder.is_dir() and not (folder / "zh-Hant.jinja").exists():
            (folder / "zh-Hant.jinja").write_text(ZH_HANT, encoding="utf-8")
    (path / "config").mkdir()
    (path / "config" / "worker.yaml").write_text(
        f"database_url: sqlite:///{path / 'worker.db'}\n"
        f"campaigns_dir: {path / 'campaigns'}\n"
        f"templates_dir: {path / 'templates'}\n"
        'from: "Kettle & Co <service@shop.example>"\n'
        "seller:\n"
        "  name: Kettle & Co\n"
        "  signature: Anna, customer service\n"
        "  locales:\n"
        "    de: {name: Kessel & Co, signature: 'Anna, Kundenservice'}\n"
        "    zh-Hant: {name: 水壺公司, signature: 安娜，客服部}\n"
        f"smtp: {{host: 127.0.0.1, port: {smtp_port}, tls: none, attempts: 1, "
        "backoff_initial_s: 0, timeout_s: 5}\n",
        encoding="utf-8",
    )
    (path / "orders.csv").write_text(ORDERS, encoding="utf-8")
    return path


def _cli(workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--config", "config/worker.yaml", *args],
        cwd=workdir,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"worker {' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


async def test_german_and_taiwanese_buyers_get_their_language(tmp_path: Path, sink: Sink) -> None:
    workdir = _workdir(tmp_path / "shop", sink.port)
    _cli(workdir, "db", "upgrade")
    _cli(workdir, "import", "orders", "orders.csv")

    plan = _cli(workdir, "plan", "--at", AT)
    lines = {line.split()[1]: line for line in plan.splitlines()[2:-1] if "check-in" in line}
    assert lines["12-34567-89012"].startswith("due")
    assert lines["12-34567-89012"].endswith("language de (site ebay.de)")
    assert lines["SHOP-7"].endswith("language zh-Hant (country TW)")
    assert lines["SHOP-8"].endswith("language en (country GB)")

    settings = load_settings(workdir / "config" / "worker.yaml", environ={})
    store = Store.open(settings.database_url)
    try:
        renderer = Renderer(settings.templates_dir, settings.default_locale)
        campaigns = load_checked_campaigns(settings, renderer)
        clock = FixedClock(datetime.fromisoformat(AT).astimezone(UTC))
        daemon = Daemon(settings, store, campaigns, renderer, clock)
        report = await daemon.run_pass()
    finally:
        store.close()
    assert report.ok, report.summary()

    received = {m["X-Worker-Order"]: m for m in sink.received}
    assert set(received) == {"12-34567-89012", "SHOP-7", "SHOP-8"}
    german, taiwanese, british = (received[o] for o in ("12-34567-89012", "SHOP-7", "SHOP-8"))

    assert german["Content-Language"] == "de"
    assert "„Milchaufschäumer“" in german["Subject"] and "angekommen" in german["Subject"]
    assert "Freundliche Grüße" in _text(german)
    assert "Anna, Kundenservice" in _text(german) and "Kessel & Co" in _text(german)

    assert taiwanese["Content-Language"] == "zh-Hant"
    assert any("\u4e00" <= c <= "\u9fff" for c in taiwanese["Subject"])
    assert "林美玲" in _text(taiwanese) and "安娜，客服部" in _text(taiwanese)

    assert british["Content-Language"] == "en"
    assert "Anna, customer service" in _text(british)
