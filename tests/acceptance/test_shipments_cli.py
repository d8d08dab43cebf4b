"""An export with no delivery dates, then a shipments file, through the real command line:
`worker plan` counts from an estimate, says so, and follows the delivery event once imported."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.test_cli import ROOT, Workdir

ORDERS = (
    "order_id,marketplace,buyer_email,buyer_name,product,country,shipped_at,expected_delivery_at\n"
    "E-1,ebay,jonas@example.de,Jonas,Milchaufschäumer,DE,2026-03-02T10:00:00Z,\n"
    "E-2,ebay,lena@example.de,Lena,Teekanne,DE,2026-03-02T10:00:00Z,2026-03-04T12:00:00Z\n"
    "S-3,shop,ann@example.com,Ann,Glass kettle,GB,2026-03-02T10:00:00Z,\n"
)
SHIPMENTS = (
    "order_id,carrier,tracking_number,status,at\n"
    "E-1,DHL,00340434161094042557,delivered,2026-03-05T14:30:00Z\n"
    "S-3,Royal Mail,AB123456789GB,returned,2026-03-10T09:00:00Z\n"
    "X-1,DHL,JJD1,delivered,2026-03-05T14:30:00Z\n"
)
NOW = "2026-03-12T15:00:00Z"  # a Thursday, 16:00 in Berlin: inside the send window


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    """A seller in China shipping to Germany in 12 days, with this checkout's code."""
    work = Workdir(tmp_path, 8025)
    config = work.path / "config" / "worker.yaml"
    config.write_text(
        config.read_text(encoding="utf-8") + "delivery: {ship_from: CN, routes: {CN->DE: 12d}}\n",
        encoding="utf-8",
    )
    work.env["PYTHONPATH"] = str(ROOT)  # the worktree under test, wherever the venv points
    work.run("db", "upgrade", check=True)
    (work.path / "orders.csv").write_text(ORDERS, encoding="utf-8")
    work.run("import", "orders", "orders.csv", check=True)
    return work


def plan_lines(workdir: Workdir) -> dict[str, str]:
    out = workdir.run("plan", "--at", NOW, check=True).stdout
    return {" ".join(line.split()[1:3]): line for line in out.splitlines()[2:-1]}


def test_plan_counts_from_the_estimate_then_from_the_imported_delivery(workdir: Workdir) -> None:
    before = plan_lines(workdir)
    check_in = before["E-1 review-follow-up/check-in"]
    assert check_in.startswith("wait") and "2026-03-14 10:00  awaiting_delivered " in check_in
    assert " [delivered ~2026-03-14 (estimated: CN->DE post, 12d)]  language " in check_in
    marketplace = before["E-2 review-follow-up/check-in"]
    assert marketplace.startswith("due")
    assert " [delivered ~2026-03-04 (marketplace estimate)]  language " in marketplace
    assert (
        " [delivered ~2026-03-16 (estimated: CN->GB post, 14d)]  language "
        in before["S-3 review-follow-up/check-in"]
    )

    (workdir.path / "shipments.csv").write_text(SHIPMENTS, encoding="utf-8")
    done = workdir.run("import", "shipments", "shipments.csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("shipments.csv: 0 new, 2 updated, 0 rejected; 1 about orders")
    assert "'X-1'" in done.stdout

    after = plan_lines(workdir)
    moved = after["E-1 review-follow-up/check-in"]
    assert moved.split()[0] == "due" and "2026-03-12 14:30" in moved
    assert " [delivered 2026-03-05 (event)]  language " in moved
    request = after["E-1 review-follow-up/review-request"]
    assert "2026-04-09" in request and " [delivered 2026-03-05 (event)]  language " in request
    returned = after["S-3 review-follow-up/check-in"]
    assert returned.startswith("skip") and "parcel_returned" in returned
    assert returned.endswith("[parcel returned]")
    assert after["E-2 review-follow-up/check-in"] == before["E-2 review-follow-up/check-in"]
