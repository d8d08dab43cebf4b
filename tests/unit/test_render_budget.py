"""Rendering within a time and size budget, in a child process that can really be stopped."""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from worker.config import SellerSettings, Settings
from worker.domain import Order
from worker.errors import ConfigError, TemplateError
from worker.render import (
    RenderedMessage,
    Renderer,
    TemplateRunner,
    message_context,
    sample_context,
)

SHIPPED = Path(__file__).parent.parent.parent / "templates"
SELLER = SellerSettings(name="Kettle & Co", signature="Anna, customer service")
TIMEOUT_S = 0.5
MARGIN_S = 2.0
"""Kill, reap and report after the timeout, on a busy CI machine."""
MAX_BYTES = 64 * 1024

SUBJECT_TEXT = "{% block subject %}Hi{% endblock %}\n{% block text %}\n"
HTML = "{% endblock %}\n{% block html %}<p>Hi</p>{% endblock %}\n"
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
JOINED_STRING = (
    '{% set digits = range(100000)|join(",") %}'
    "{% for a in digits %}{% for b in digits %}{% endfor %}{% endfor %}"
)
OUTPUT_LOOP = (
    "{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}{% endfor %}"
)
ONE_BIG_STRING = "{{ buyer.name * 10000000 }}"  # not a constant, which Jinja would fold


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    """The shipped templates, in a folder a test may add broken ones to."""
    target = tmp_path / "templates"
    shutil.copytree(SHIPPED, target)
    return target


@pytest.fixture
async def runner(templates_dir: Path) -> AsyncIterator[TemplateRunner]:
    async with TemplateRunner(templates_dir, timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES) as running:
        await running.start()
        yield running
    assert running.pid is None


def broken(templates_dir: Path, text_block: str) -> str:
    """A ``check_in`` file for ``fr`` whose text block is ``text_block``; returns its path."""
    path = templates_dir / "check_in" / "fr.jinja"
    path.write_text(SUBJECT_TEXT + text_block + HTML, encoding="utf-8")
    return str(path)


def context(locale: str = "en") -> dict[str, Any]:
    return sample_context(SELLER, locale)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def until(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Yield to the loop until ``condition`` holds; fail past the deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0)


# Settings and what crosses the process boundary --------------------------------------------


def test_settings_have_render_budget_defaults_and_bounds() -> None:
    settings = Settings()
    assert (settings.render_timeout_s, settings.render_max_bytes) == (10.0, 1_000_000)
    with pytest.raises(ValidationError):
        Settings.model_validate({"render_timeout_s": 0})
    with pytest.raises(ValidationError):
        Settings.model_validate({"render_max_bytes": 1023})
    runner = TemplateRunner.from_settings(
        Settings.model_validate({"render_timeout_s": 2.5, "render_max_bytes": 4096})
    )
    assert (runner.timeout_s, runner.max_bytes, runner.pid) == (2.5, 4096, None)


def test_template_context_survives_pickling() -> None:
    order = Order(
        order_id="A-1",
        marketplace="ebay",
        buyer_email="b@example.com",
        buyer_name="Bö",
        products=("Lamp", "Bulb"),
        review_url="https://shop.example/lamp",
    )
    for values in (context("de"), message_context(order, SELLER, None, "fr")):
        assert pickle.loads(pickle.dumps(values)) == values


def test_bad_default_locale_is_refused_before_any_process() -> None:
    with pytest.raises(ConfigError):
        TemplateRunner(SHIPPED, default_locale="../x")


# Same output as the plain renderer ---------------------------------------------------------


async def test_shipped_templates_render_identically(runner: TemplateRunner) -> None:
    plain = Renderer(runner.templates_dir)
    budgeted = Renderer(runner.templates_dir, max_bytes=MAX_BYTES)
    templates = ["check_in", "review_request", "review_reminder", "review_thanks"]
    locales: list[str | None] = [*plain.locales("check_in"), None, "de-AT", "pt-BR"]
    assert len(locales) == 11  # eight locale files (zh and zh-Hant), the fallback, two regions
    for template in templates:
        for locale in locales:
            values = context(locale or "en")
            expected = plain.render(template, locale, values)
            assert await runner.render(template, locale, values) == expected
            assert budgeted.render(template, locale, values) == expected


async def test_concurrent_renders_each_get_their_own_message(runner: TemplateRunner) -> None:
    locales = ["en", "de", "fr", "es", "it", "ja", "zh", "zh-Hant"] * 3
    got = await asyncio.gather(*(runner.render("check_in", loc, context(loc)) for loc in locales))
    assert [m.locale for m in got] == locales


async def test_template_errors_name_file_and_line_as_in_process(
    runner: TemplateRunner, templates_dir: Path
) -> None:
    path = broken(templates_dir, "Commande {{ order.nubmer }}\n")
    with pytest.raises(TemplateError) as in_child:
        await runner.render("check_in", "fr", context())
    with pytest.raises(TemplateError) as in_process:
        Renderer(templates_dir).render("check_in", "fr", context())
    assert in_child.value.where == in_process.value.where == f"{path}:3"
    assert in_child.value.detail == in_process.value.detail


# Many messages in one exchange --------------------------------------------------------------


async def test_a_batch_renders_what_renders_one_by_one(runner: TemplateRunner) -> None:
    plain = Renderer(runner.templates_dir)
    templates = ["check_in", "review_request", "review_reminder", "review_thanks"]
    locales: list[str | None] = [*plain.locales("check_in"), None, "de-AT", "pt-BR"]
    jobs = [(t, loc, context(loc or "en")) for t in templates for loc in locales]
    first = runner.pid

    got = await runner.render_many(jobs)

    assert got == [plain.render(t, loc, values) for t, loc, values in jobs]
    assert runner.pid == first
    assert await runner.render_many([]) == []


async def test_in_a_batch_each_failure_is_that_message_s_alone(
    runner: TemplateRunner, templates_dir: Path
) -> None:
    path = broken(templates_dir, "Commande {{ order.nubmer }}\n")
    jobs = [("check_in", loc, context(loc)) for loc in ["en", "fr", "de", "fr", "ja"]]

    got = await runner.render_many(jobs)

    assert [m.locale for m in got if not isinstance(m, TemplateError)] == ["en", "de", "ja"]
    for failed in (got[1], got[3]):
        assert isinstance(failed, TemplateError)
        assert failed.where == f"{path}:3"
        assert "undefined variable" in failed.detail


async def test_a_runaway_in_a_batch_is_killed_and_the_rest_rendered(
    runner: TemplateRunner, templates_dir: Path
) -> None:
    path = broken(templates_dir, NESTED_LOOPS)
    jobs = [("check_in", loc, context(loc)) for loc in ["en", "fr", "de", "fr", "ja"]]
    first = runner.pid

    started = time.monotonic()
    got = await runner.render_many(jobs)
    elapsed = time.monotonic() - started

    assert 2 * TIMEOUT_S <= elapsed < 2 * TIMEOUT_S + MARGIN_S  # each its own timeout
    assert [m.locale for m in got if not isinstance(m, TemplateError)] == ["en", "de", "ja"]
    for failed in (got[1], got[3]):
        assert isinstance(failed, TemplateError)
        assert failed.where == path
        assert failed.detail.startswith(
            f"template check_in (fr) took longer than {TIMEOUT_S:g} s to render"
        )
    assert runner.pid not in (None, first)
    assert first is not None and gone(first)


async def test_an_output_bomb_in_a_batch_is_refused_and_the_child_carries_on(
    runner: TemplateRunner, templates_dir: Path
) -> None:
    broken(templates_dir, OUTPUT_LOOP)
    first = runner.pid

    got = await runner.render_many([("check_in", loc, context(loc)) for loc in ["fr", "en"]])

    assert isinstance(got[0], TemplateError)
    assert f"larger than {MAX_BYTES} bytes" in got[0].detail
    assert isinstance(got[1], RenderedMessage) and got[1].locale == "en"
    assert runner.pid == first


async def test_a_message_whose_child_is_killed_twice_fails_and_the_batch_goes_on(
    templates_dir: Path,
) -> None:
    broken(templates_dir, NESTED_LOOPS)
    async with TemplateRunner(templates_dir, timeout_s=60) as runner:
        await runner.start()
        jobs = [("check_in", loc, context(loc)) for loc in ["fr", "en"]]
        task = asyncio.create_task(runner.render_many(jobs))
        killed: list[int] = []
        for _ in range(2):
            await until(
                lambda: (
                    runner._child is not None and runner._child.busy and runner.pid not in killed
                )
            )
            pid = runner.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        stopped, message = await asyncio.wait_for(task, 30)

    assert isinstance(stopped, TemplateError)
    assert "stopped twice on this message" in stopped.detail
    assert isinstance(message, RenderedMessage) and message.locale == "en"


# Time budget --------------------------------------------------------------------------------


@pytest.mark.parametrize("runaway", [NESTED_LOOPS, JOINED_STRING], ids=["nested", "joined"])
async def test_a_runaway_template_is_killed_and_the_next_render_works(
    runner: TemplateRunner, templates_dir: Path, runaway: str
) -> None:
    path = broken(templates_dir, runaway)
    first = runner.pid
    assert first is not None

    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        await runner.render("check_in", "fr", context())
    elapsed = time.monotonic() - started

    assert TIMEOUT_S <= elapsed < TIMEOUT_S + MARGIN_S
    assert caught.value.where == path
    assert caught.value.detail.startswith(
        f"template check_in (fr) took longer than {TIMEOUT_S:g} s to render"
    )
    assert runner.pid is None and gone(first)

    message = await runner.render("check_in", "de", context("de"))
    assert message.locale == "de"
    assert runner.pid not in (None, first)


async def test_a_cancelled_render_takes_its_process_with_it(
    runner: TemplateRunner, templates_dir: Path
) -> None:
    broken(templates_dir, NESTED_LOOPS)
    first = runner.pid
    assert first is not None
    task = asyncio.create_task(runner.render("check_in", "fr", context()))
    await until(lambda: runner._child is not None and runner._child.busy)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert runner.pid is None and gone(first)
    assert (await runner.render("check_in", "en", context())).locale == "en"


async def test_a_child_killed_from_outside_is_replaced(runner: TemplateRunner) -> None:
    first = runner.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    message = await runner.render("check_in", "en", context())

    assert message.locale == "en"
    assert runner.pid not in (None, first)


# Size budget --------------------------------------------------------------------------------


@pytest.mark.parametrize("bomb", [OUTPUT_LOOP, ONE_BIG_STRING], ids=["loop", "one-string"])
async def test_an_output_bomb_is_refused_by_size(
    runner: TemplateRunner, templates_dir: Path, bomb: str
) -> None:
    path = broken(templates_dir, bomb)
    first = runner.pid

    started = time.monotonic()
    with pytest.raises(TemplateError, match=f"larger than {MAX_BYTES} bytes") as caught:
        await runner.render("check_in", "fr", context())

    assert time.monotonic() - started < TIMEOUT_S
    assert caught.value.where == path
    assert runner.pid == first  # refused inside the child, which carries on
    assert (await runner.render("check_in", "en", context())).locale == "en"


def test_the_size_budget_also_holds_in_process(templates_dir: Path) -> None:
    broken(templates_dir, OUTPUT_LOOP)
    with pytest.raises(TemplateError, match=f"larger than {MAX_BYTES} bytes"):
        Renderer(templates_dir, max_bytes=MAX_BYTES).render("check_in", "fr", context())


@pytest.mark.skipif(sys.platform != "linux", reason="the memory cap reads /proc")
async def test_a_giant_allocation_is_a_memory_error_not_a_dead_machine(
    runner: TemplateRunner, templates_dir: Path
) -> None:
    broken(templates_dir, "{{ buyer.name * 100000000000 }}")
    with pytest.raises(TemplateError, match="ran out of memory"):
        await runner.render("check_in", "fr", context())
    assert (await runner.render("check_in", "en", context())).locale == "en"


# Closing ------------------------------------------------------------------------------------


async def test_close_stops_the_process_and_refuses_more_work(templates_dir: Path) -> None:
    runner = TemplateRunner(templates_dir, timeout_s=TIMEOUT_S)
    await runner.render("check_in", "en", context())
    pid = runner.pid
    assert pid is not None and not gone(pid)

    runner.close()

    assert runner.pid is None and gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        await runner.render("check_in", "en", context())
    runner.close()  # twice is harmless


async def test_closing_during_a_render_stops_it(templates_dir: Path) -> None:
    broken(templates_dir, NESTED_LOOPS)
    runner = TemplateRunner(templates_dir, timeout_s=60)
    await runner.start()
    pid = runner.pid
    assert pid is not None
    task = asyncio.create_task(runner.render("check_in", "fr", context()))
    await until(lambda: runner._child is not None and runner._child.busy)

    runner.close()

    with pytest.raises(RuntimeError, match="closed"):
        await task
    assert gone(pid)


async def test_check_through_the_runner_refuses_a_template_looping_on_the_sample(
    runner: TemplateRunner, templates_dir: Path
) -> None:
    sample = context()
    await runner.check(["check_in", "review_request"], {**sample, "review": None})
    path = broken(templates_dir, NESTED_LOOPS)
    with pytest.raises(TemplateError, match="took longer than") as caught:
        await runner.check(["check_in"], sample)
    assert caught.value.where == path
