"""Turn an operator's per-locale template into a subject, a text part and an HTML part.

Templates are edited by operators, so they run in Jinja's sandbox; buyer data is escaped in
the HTML part; a misspelt variable fails at start-up (``check``) instead of mailing "Hello ,".
Every failure becomes a :class:`~worker.errors.TemplateError` naming the file and line.
:class:`TemplateRunner` renders within a time and size budget, in a process it can kill.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import resource
import signal
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import babel
import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_interval
from babel.lists import format_list
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from worker import tracking as tracking_links
from worker.config import SellerSettings, Settings, TrackingSettings
from worker.domain import Order, Review
from worker.errors import ConfigError, TemplateError, WorkerError
from worker.language import locale_chain as locale_chain
from worker.language import normalise_locale as normalise_locale

BLOCKS = frozenset({"subject", "text", "html"})
TEXT_ONLY = frozenset({"subject", "text"})
"""A template without an ``html`` block is mailed as plain text alone (Amazon's rule)."""
LAYOUT = "layout.html.jinja"
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str
    """One line: whitespace collapsed, no CR/LF."""
    text: str
    html: str
    """The full HTML document: the template's fragment wrapped in the layout; empty for a
    text-only template (no ``html`` block), which is mailed as text/plain alone."""
    locale: str
    """The locale whose file was used."""
    source: str
    """Path of the template file used, for logs and errors."""


# What templates see. Attribute objects rather than dicts, so ``order.items`` is an error
# instead of a dict method.


@dataclass(frozen=True, slots=True)
class BuyerView:
    name: str


@dataclass(frozen=True, slots=True)
class OrderView:
    number: str
    marketplace: str
    product: str
    products: list[str] = field(default_factory=list)
    review_url: str | None = None
    carrier: str | None = None
    """The carrier's name as buyers know it (``DHL``, ``Japan Post``), when known."""
    tracking_number: str | None = None
    """Only a number a link could carry (letters, digits, '-'); anything else is None."""
    tracking_url: str | None = None
    local_tracking_url: str | None = None
    """The buyer's own national post's tracking page, for a cross-border S10 parcel; None
    when it would be the same page as ``tracking_url``."""
    delivery_window: str | None = None
    """When the parcel is expected, in the message's language (``14-18 March``)."""

    @property
    def items(self) -> list[str]:
        """Every item of the order, in the export's order: what a template lists."""
        return self.products

    @property
    def item_count(self) -> int:
        return len(self.products)


@dataclass(frozen=True, slots=True)
class ReviewView:
    rating: int | None
    """``None`` when the review notification did not give the stars."""


@dataclass(frozen=True, slots=True)
class SellerView:
    name: str
    signature: str


class Renderer:
    """Renders ``templates_dir/<template>/<locale>.jinja`` files; Jinja caches compiled ones.

    With ``max_bytes``, output is counted as it streams out of the template and rendering
    stops once subject, text and HTML together pass it, so a runaway loop cannot fill memory.
    It has no time limit: :class:`TemplateRunner` adds that around it in a child process.
    """

    def __init__(
        self, templates_dir: Path, default_locale: str = "en", *, max_bytes: int | None = None
    ) -> None:
        default = normalise_locale(default_locale)
        if default is None:
            raise ConfigError(
                f"{default_locale!r} is not a locale tag like en or de-AT", where="default_locale"
            )
        self.templates_dir = templates_dir
        self.default_locale = default
        self.max_bytes = max_bytes
        self._paths: dict[str, str] = {}
        loader = jinja2.FileSystemLoader(templates_dir)
        self._text_env = _environment(loader, autoescape=False)
        self._html_env = _environment(loader, autoescape=True)

    def render(
        self, template: str, locale: str | None, context: Mapping[str, Any]
    ) -> RenderedMessage:
        """Render the best file for ``locale``; ``context["locale"]`` becomes the one chosen."""
        chosen = self._resolve(template, locale)
        name = f"{template}/{chosen}.jinja"
        where = self._path(name)
        budget = _Budget(self.max_bytes, where)
        values = {**context, "locale": chosen}
        plain = self._template(False, name)
        raw_subject = self._block(plain, where, "subject", values, budget)
        subject = " ".join(_CONTROL.sub(" ", raw_subject).split())
        if not subject:
            raise TemplateError("the subject block is empty", where=where)
        text = self._block(plain, where, "text", values, budget).strip()
        if not text:
            raise TemplateError("the text block must not be empty", where=where)
        if "html" not in plain.blocks:
            return RenderedMessage(subject, text + "\n", "", chosen, where)
        fragment = self._block(self._template(True, name), where, "html", values, budget).strip()
        if not fragment:
            raise TemplateError(
                "the html block must not be empty (leave it out to send plain text only)",
                where=where,
            )
        budget.refund(fragment)  # the layout's output carries the fragment again
        html = self._layout(Markup(fragment), chosen, subject, budget)
        return RenderedMessage(subject, text + "\n", html, chosen, where)

    def source(self, template: str, locale: str | None) -> str:
        """Path of the file :meth:`render` would use for ``locale``, for logs and errors."""
        return self._path(f"{template}/{self._resolve(template, locale)}.jinja")

    def locales(self, template: str) -> list[str]:
        """Locales that have a file for ``template`` (file names, as written)."""
        folder = self.templates_dir / _checked_name(template)
        return sorted(p.stem for p in folder.glob("*.jinja") if p.is_file())

    def check(self, templates: Iterable[str], sample: Mapping[str, Any]) -> None:
        """Render every locale file of every template once, so mistakes stop the start-up.

        Raises the first problem as a TemplateError naming the file (and line, if known).
        """
        for template in templates:
            for locale in self.checked_locales(template):
                self.render(template, locale, sample)

    def checked_locales(self, template: str) -> list[str | None]:
        """What :meth:`check` renders for ``template``: each locale file, then the fallback
        (None), once the default locale's file is found and every file name is a locale tag.
        """
        found = self.locales(template)
        if self.default_locale not in found:
            raise TemplateError(
                f"no {self.default_locale}.jinja: every other locale falls back to it",
                where=str(self.templates_dir / template),
            )
        for locale in found:
            self._check_file_name(template, locale)
        return [*found, None]

    def _check_file_name(self, template: str, locale: str) -> None:
        if normalise_locale(locale) != locale:
            fix = normalise_locale(locale)
            hint = f"rename it to {fix}.jinja" if fix else "name it like de.jinja or de-AT.jinja"
            raise TemplateError(
                f"the file name is not a locale tag, so it is never chosen; {hint}",
                where=self._path(f"{template}/{locale}.jinja"),
            )

    def _resolve(self, template: str, locale: str | None) -> str:
        chain = locale_chain(locale, self.default_locale)
        folder = self._folder(template)
        for candidate in chain:
            if os.path.isfile(os.path.join(folder, f"{candidate}.jinja")):
                return candidate
        raise TemplateError(f"no template file for {', '.join(chain)}", where=folder)

    def _folder(self, template: str) -> str:
        return self._path(_checked_name(template))

    def _path(self, name: str) -> str:
        """``templates_dir / name`` as a string, worked out once per name."""
        path = self._paths.get(name)
        if path is None:
            path = self._paths[name] = str(self.templates_dir / name)
        return path

    def _template(self, html: bool, name: str) -> jinja2.Template:
        """The compiled file (Jinja reloads it if it changed), checked for its blocks."""
        with _template_errors(self._path(name)):
            env = self._html_env if html else self._text_env
            template = env.get_template(name)
            found = set(template.blocks)
            if found not in (BLOCKS, TEXT_ONLY) and name != LAYOUT:
                missing, extra = sorted(TEXT_ONLY - found), sorted(found - BLOCKS)
                raise TemplateError(
                    f"needs the blocks subject and text, and html unless it is plain text "
                    f"only (missing: {missing or '-'}, unexpected: {extra or '-'})",
                    where=self._path(name),
                )
            return template

    def _block(
        self,
        template: jinja2.Template,
        where: str,
        block: str,
        context: dict[str, Any],
        budget: _Budget,
    ) -> str:
        with _template_errors(where):
            try:
                return budget.join(template.blocks[block](template.new_context(context)))
            except WorkerError:
                raise
            except Exception:
                # Rewrites the traceback so frames carry template file names and lines.
                template.environment.handle_exception()

    def _layout(self, content: Markup, lang: str, subject: str, budget: _Budget) -> str:
        layout = self._template(True, LAYOUT)
        with _template_errors(self._path(LAYOUT)):
            return budget.join(layout.generate(content=content, lang=lang, subject=subject))


class _Budget:
    """Bytes (UTF-8) of output one message may still produce, counted chunk by chunk."""

    __slots__ = ("limit", "used", "where")

    def __init__(self, limit: int | None, where: str) -> None:
        self.limit = limit
        self.used = 0
        self.where = where

    def join(self, chunks: Iterable[str]) -> str:
        if self.limit is None:
            return "".join(chunks)
        parts = []
        for chunk in chunks:
            self.used += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "replace"))
            if self.used > self.limit:
                raise TemplateError(
                    f"the message would be larger than {self.limit} bytes (render_max_bytes); "
                    "is a loop repeating more than it should?",
                    where=self.where,
                )
            parts.append(chunk)
        return "".join(parts)

    def refund(self, text: str) -> None:
        if self.limit is not None:
            self.used -= len(text.encode("utf-8", "replace"))


START_TIMEOUT_S = 60.0
"""Time a fresh rendering process may take to import and read its settings (once at start,
and after each kill); its first render starts the clock of ``timeout_s`` only after that."""

_KILL_WAIT_S = 5.0
_MEMORY_HEADROOM = 512 * 1024 * 1024
"""Address space a rendering process may add to what it has when it starts: enough for any
sane message, and it turns ``'x' * 10**10`` into a MemoryError instead of a machine-wide
out-of-memory kill."""

_Reply = tuple[Any, ...]
RenderJob = tuple[str, str | None, Mapping[str, Any]]
"""What :meth:`TemplateRunner.render_many` renders: template, locale, context."""
_Job = tuple[str, str | None, dict[str, Any]]


@dataclass(slots=True)
class _Child:
    process: BaseProcess
    conn: Connection
    busy: bool = False


class _ChildGone(Exception):
    """The child was killed or died while rendering."""

    def __init__(self, exitcode: int | None, *, timed_out: bool) -> None:
        super().__init__(f"exit code {exitcode}")
        self.timed_out = timed_out


class TemplateRunner:
    """Renders messages in a child process with a time and a size budget.

    A template looping on some order's data would otherwise hang the pass and keep a CPU
    core busy for good (a thread cannot be stopped), so the child is killed (SIGKILL) when
    ``timeout_s`` runs out, and a fresh one renders the next message. The child counts
    output as it streams (``max_bytes``), caps its own memory, and kills itself if the
    parent is not there to do it. One render at a time; POSIX only (it waits on the pipe
    with ``loop.add_reader``). Close it, or use it as an async context manager.
    """

    def __init__(
        self,
        templates_dir: Path,
        default_locale: str = "en",
        *,
        timeout_s: float = 10.0,
        max_bytes: int = 1_000_000,
    ) -> None:
        self._paths = Renderer(templates_dir, default_locale)  # refuses a bad locale here
        self.templates_dir = templates_dir
        self.default_locale = self._paths.default_locale
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._mp = multiprocessing.get_context("forkserver")
        # Children fork from a server that has imported the program and this module, so a
        # start takes milliseconds. (The program's script must guard `if __name__ == ...`.)
        self._mp.set_forkserver_preload(["__main__", __name__])
        self._child: _Child | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateRunner:
        return cls(
            settings.templates_dir,
            settings.default_locale,
            timeout_s=settings.render_timeout_s,
            max_bytes=settings.render_max_bytes,
        )

    @property
    def pid(self) -> int | None:
        """The rendering process, if one is running."""
        return self._child.process.pid if self._child is not None else None

    async def start(self) -> None:
        """Start the child now instead of at the first render, so a start-up failure shows."""
        async with self._lock:
            await self._ready()

    async def render(
        self, template: str, locale: str | None, context: Mapping[str, Any]
    ) -> RenderedMessage:
        """As :meth:`Renderer.render`, within the budget; a broken budget is a TemplateError.

        A child that dies for another reason (killed from outside) is replaced and the
        message tried once more.
        """
        [result] = await self.render_many([(template, locale, context)])
        if isinstance(result, TemplateError):
            raise result
        return result

    async def render_many(self, jobs: Sequence[RenderJob]) -> list[RenderedMessage | TemplateError]:
        """:meth:`render` for several messages in one exchange with the child, in order.

        Each message gets what :meth:`render` gives it: its own ``timeout_s`` (counted from
        the previous message's answer, as the child renders them one after another) and
        ``max_bytes``, and one more try if the child dies under it for another reason. A
        message that breaks its budget, or whose template fails, gets its TemplateError in
        the list instead of a message; after a kill, a fresh child renders the rest. A child
        that does not start gives its TemplateError for every message left.

        Raises only what :meth:`render` raises for no single message's sake: RuntimeError
        once the runner is closed, ConfigError, and CancelledError (the child goes too).
        """
        batch: list[_Job] = [(t, loc, dict(values)) for t, loc, values in jobs]
        results: list[RenderedMessage | TemplateError] = []
        if not batch:
            return results
        async with self._lock:
            gone: _ChildGone | None = None
            while len(results) < len(batch):
                try:
                    child = await self._ready()
                except TemplateError as exc:
                    results += [exc] * (len(batch) - len(results))
                    break
                replies: list[_Reply] = []
                try:
                    await self._exchange(child, batch[len(results) :], replies)
                except _ChildGone as exc:
                    failed: _ChildGone | None = exc
                else:
                    failed = None
                for reply in replies:
                    results.append(_result(reply))
                    gone = None
                if failed is None:
                    continue
                template, locale, _ = batch[len(results)]
                if failed.timed_out:
                    results.append(self._too_slow(template, locale))
                    gone = None
                elif gone is not None:
                    results.append(
                        TemplateError(
                            f"the rendering process stopped twice on this message ({failed})",
                            where=self._where(template, locale),
                        )
                    )
                    gone = None
                else:
                    gone = failed  # the message is tried once more, by a fresh child
        return results

    async def check(self, templates: Iterable[str], sample: Mapping[str, Any]) -> None:
        """:meth:`Renderer.check` within the budget: a template that loops or explodes even
        on the sample order is refused at start-up instead of hanging it."""
        for template in templates:
            for locale in self._paths.checked_locales(template):
                await self.render(template, locale, sample)

    def close(self) -> None:
        """Kill the child; rendering afterwards raises RuntimeError."""
        self._closed = True
        child, self._child = self._child, None
        if child is not None:
            _stop(child.process)
            if not child.busy:
                child.conn.close()

    async def __aenter__(self) -> TemplateRunner:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    async def _ready(self) -> _Child:
        if self._closed:
            raise RuntimeError("the template runner is closed")
        if self._child is not None:
            return self._child
        parent_end, child_end = self._mp.Pipe()
        process = self._mp.Process(
            target=_serve,
            args=(child_end, self.templates_dir, self.default_locale, self.max_bytes),
            kwargs={"alarm_s": 2 * self.timeout_s + 1},
            name="worker-render",
            daemon=True,
        )
        child = self._child = _Child(process, parent_end)
        try:
            await _start(process, child_end)
            await _readable(parent_end, START_TIMEOUT_S)
            reply = parent_end.recv()
        except (TimeoutError, EOFError, OSError) as exc:
            self._discard(child)
            if self._closed:
                raise RuntimeError("the template runner is closed") from None
            raise TemplateError(
                f"the rendering process did not start ({exc!r}, exit code {process.exitcode})",
                where=str(self.templates_dir),
            ) from None
        except BaseException:
            self._discard(child)
            raise
        if reply[0] != "ready":
            self._discard(child)
            _answer(reply)
        return child

    async def _exchange(self, child: _Child, jobs: list[_Job], replies: list[_Reply]) -> None:
        """Hands ``jobs`` to the child and collects its answers into ``replies`` as they come,
        each within ``timeout_s``; raises _ChildGone for the first one that does not come."""
        child.busy = True
        try:
            try:
                child.conn.send(jobs)
                for _ in jobs:
                    if not child.conn.poll():  # not there yet: wait without blocking the loop
                        await _readable(child.conn, self.timeout_s)
                    replies.append(child.conn.recv())
            except TimeoutError:
                self._discard(child)
                raise _ChildGone(child.process.exitcode, timed_out=True) from None
            except (EOFError, OSError):
                self._discard(child)
                code = child.process.exitcode  # SIGALRM: its own deadline, the parent was late
                raise _ChildGone(code, timed_out=code == -signal.SIGALRM) from None
            except asyncio.CancelledError:
                self._discard(child)  # its answers would be taken for the next messages'
                raise
        finally:
            child.busy = False
            if self._child is not child:
                child.conn.close()

    def _discard(self, child: _Child) -> None:
        _stop(child.process)
        if self._child is child:
            self._child = None
        if not child.busy:
            child.conn.close()

    def _where(self, template: str, locale: str | None) -> str:
        try:
            return self._paths.source(template, locale)
        except TemplateError:
            return str(self.templates_dir / template)

    def _too_slow(self, template: str, locale: str | None) -> TemplateError:
        where = self._where(template, locale)
        shown = Path(where).stem if where.endswith(".jinja") else locale
        return TemplateError(
            f"template {template} ({shown}) took longer than {self.timeout_s:g} s to render; "
            "it was stopped (render_timeout_s). Look for a loop over order data that "
            "repeats far more than it should.",
            where=where,
        )


async def _start(process: BaseProcess, child_end: Connection) -> None:
    """``process.start()`` off the loop: the first one waits for the fork server to import
    everything. Cancelled, the process is stopped once it has started."""
    starting = asyncio.get_running_loop().run_in_executor(None, process.start)
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:

        def abandon(_: object) -> None:
            child_end.close()
            _stop(process)

        starting.add_done_callback(abandon)
        raise
    finally:
        if starting.done():
            child_end.close()


async def _readable(conn: Connection, timeout_s: float) -> None:
    """Until ``conn`` has something to read (or is closed at the other end)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, _set_ready, ready)
    try:
        async with asyncio.timeout(timeout_s):
            await ready
    finally:
        loop.remove_reader(fd)


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _stop(process: BaseProcess) -> None:
    """SIGKILL and reap; the child holds nothing worth a gentler ending."""
    if process.pid is None:
        return
    if process.exitcode is None:
        process.kill()
        process.join(_KILL_WAIT_S)


def _answer(reply: _Reply) -> RenderedMessage:
    if reply[0] == "ok":
        return RenderedMessage(*reply[1:])
    _kind, error, detail, where = reply
    raise (ConfigError if error == "ConfigError" else TemplateError)(detail, where=where)


def _result(reply: _Reply) -> RenderedMessage | TemplateError:
    """A child's answer to one message; a ConfigError is raised, not a message's failure."""
    try:
        return _answer(reply)
    except ConfigError:
        raise
    except TemplateError as exc:
        return exc


def _failure(exc: BaseException) -> _Reply:
    if isinstance(exc, WorkerError):
        return ("error", type(exc).__name__, exc.detail, exc.where)
    return ("error", "TemplateError", f"rendering failed: {type(exc).__name__}: {exc}", None)


def _serve(
    conn: Connection, templates_dir: Path, default_locale: str, max_bytes: int, *, alarm_s: float
) -> None:
    """The child: a list of jobs in, one reply out per job as each is done, until the parent
    hangs up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to act on
    # If the parent is gone, or too busy to kill a runaway render, SIGALRM ends this process.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    _limit_memory(max_bytes)
    try:
        try:
            renderer = Renderer(templates_dir, default_locale, max_bytes=max_bytes)
        except Exception as exc:
            conn.send(_failure(exc))
            return
        conn.send(("ready",))
        while True:
            jobs: list[_Job] = conn.recv()
            for template, locale, context in jobs:
                signal.setitimer(signal.ITIMER_REAL, alarm_s)
                try:
                    m = renderer.render(template, locale, context)
                    reply: _Reply = ("ok", m.subject, m.text, m.html, m.locale, m.source)
                except Exception as exc:
                    reply = _failure(exc)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                conn.send(reply)
    except (EOFError, OSError):
        return  # the parent closed the pipe or is gone


def _limit_memory(max_bytes: int) -> None:
    """Cap this process's address space at what it uses now plus a headroom (Linux)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = size + _MEMORY_HEADROOM + 16 * max_bytes
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError):
        pass  # elsewhere the time budget still stops it


def _environment(loader: jinja2.BaseLoader, *, autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=loader,
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    add_filters(env)
    return env


def add_filters(env: jinja2.Environment) -> None:
    """The filters the template format documents (tests that render templates use it too)."""
    env.filters["item_list"] = item_list


@jinja2.pass_context
def item_list(
    context: jinja2.runtime.Context,
    items: Iterable[object],
    many: str | None = None,
    none: str = "",
    *,
    limit: int = 3,
    quotes: Sequence[str] = ("", ""),
    width: int | None = None,
    style: str = "standard",
    locale: str | None = None,
) -> str:
    """An order's items as the template's language lists them: ``A, B und C`` in de.

    More than ``limit`` items give ``many`` with ``{n}`` replaced by the count ("your {n}
    items"), since a list of nine names reads as a packing slip; no items give ``none``.
    ``quotes`` wrap each name (``("„", "“")``); ``width`` shares that many characters among
    the names, each cut with "…", so a subject stays one short line. ``style`` is a babel
    list style ("unit-narrow" joins Japanese 「A」「B」 with nothing between). The result is
    plain text: the HTML part escapes it like any other value.
    """
    # A single name (``order.product|item_list``) is one item, not a list of letters.
    names = [items] if isinstance(items, str) else [str(item) for item in items]
    if not names:
        return str(none)
    if many is not None and len(names) > limit:
        return str(many).replace("{n}", str(len(names)))
    if width is not None:
        names = _shortened(names, width)
    opening, closing = (str(quotes[0]), str(quotes[1])) if len(quotes) == 2 else ("", "")
    quoted = [f"{opening}{n}{closing}" for n in names]
    tag = locale or context.get("locale") or "en"
    try:
        return format_list(quoted, style=style, locale=_list_locale(str(tag)))  # type: ignore[arg-type]
    except (KeyError, ValueError) as exc:
        # A ValueError, so the TemplateError built from it names the template's line.
        raise ValueError(f"item_list: babel has no list style {style!r} for {tag!r}") from exc


def _shortened(names: list[str], width: int) -> list[str]:
    """Cut names to share ``width`` characters: short names stay whole and leave their
    unused share to the long ones; none is cut below 8."""
    limits = [0] * len(names)
    budget, left = width, len(names)
    for index in sorted(range(len(names)), key=lambda i: len(names[i])):
        limits[index] = max(budget // left, 8)
        budget -= min(len(names[index]), limits[index])
        left -= 1
    return [
        name if len(name) <= limit else name[: limit - 1].rstrip() + "…"
        for name, limit in zip(names, limits, strict=True)
    ]


def _list_locale(tag: str) -> Locale:
    """The babel locale for a template's locale tag; an unknown one lists the English way."""
    core = normalise_locale(tag) or "en"
    for candidate in (core, core.split("-")[0], "en"):
        try:
            return Locale.parse(candidate, sep="-")
        except (UnknownLocaleError, ValueError):
            continue
    return Locale("en")


def _checked_name(template: str) -> str:
    if not _TEMPLATE_NAME.fullmatch(template):
        raise TemplateError(
            "a template name is a folder name of letters, digits, '_' and '-'",
            where=f"template {template!r}",
        )
    return template


@contextmanager
def _template_errors(path: str) -> Iterator[None]:
    """Any failure inside a template is the operator's to fix: say where and what."""
    try:
        yield
    except WorkerError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        where = f"{exc.filename or path}:{exc.lineno}"
        raise TemplateError(f"syntax error: {exc.message}", where=where) from exc
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template file not found: {exc.name}", where=path) from exc
    except OSError as exc:
        raise TemplateError(f"cannot read the file: {exc.strerror}", where=path) from exc
    except Exception as exc:
        raise TemplateError(_describe(exc), where=_template_line(exc) or path) from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {exc.message}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"not allowed in a template: {exc.message}"
    if isinstance(exc, MemoryError):
        return "ran out of memory; is a loop or a repetition ('x' * n) running away?"
    return f"{type(exc).__name__}: {exc}"


def _template_line(exc: BaseException) -> str | None:
    """The innermost template frame, as ``path:line``."""
    frames = [
        f"{frame.f_code.co_filename}:{line}"
        for frame, line in traceback.walk_tb(exc.__traceback__)
        if frame.f_code.co_filename.endswith(".jinja")
    ]
    return frames[-1] if frames else None


def _web_url(url: str | None) -> str | None:
    """Only http(s) links reach a template: a ``javascript:`` URL from a feed must not."""
    if url and url.lower().startswith(("https://", "http://")):
        return url
    return None


def format_delivery_window(start: date, end: date, locale: str | None) -> str:
    """``14-18 March`` in the buyer's language, in CLDR's own interval format (German puts
    the dots, Japanese the day suffixes); one date when both ends are the same day."""
    try:
        parsed = babel.Locale.parse(normalise_locale(locale) or "en", sep="-")
    except (ValueError, babel.UnknownLocaleError):
        parsed = babel.Locale.parse("en")
    start, end = min(start, end), max(start, end)
    skeleton = "MMMMd" if start.year == end.year else "yMMMMd"
    return str(format_interval(start, end, skeleton, locale=parsed))


def message_context(
    order: Order,
    seller: SellerSettings,
    review: Review | None,
    locale: str,
    default_locale: str | None = None,
    *,
    tracking: TrackingSettings | None = None,
    ship_from_country: str | None = None,
    delivery_window: tuple[date, date] | None = None,
) -> dict[str, Any]:
    """The variables every template gets (see the template format spec); the seller's name
    and signature are those of ``locale``, its base language, then ``default_locale``.

    The tracking fields are filled from the order's carrier and number; links are built
    only from a number that passes :func:`worker.tracking.clean_number`.
    """
    name, signature = seller.signed(locale_chain(locale, default_locale or locale))
    number = tracking_links.clean_number(order.tracking_number)
    url = tracking_links.tracking_url(order.carrier, number, tracking, country=order.country)
    local = tracking_links.local_tracking_url(number, order.country, ship_from_country, tracking)
    window = (
        format_delivery_window(*delivery_window, locale) if delivery_window is not None else None
    )
    return {
        "buyer": BuyerView(name=order.buyer_name.strip()),
        "order": OrderView(
            number=order.order_id,
            marketplace=order.marketplace,
            product=order.products[0] if order.products else "",
            products=list(order.products),
            review_url=_web_url(order.review_url),
            carrier=tracking_links.carrier_name(order.carrier, tracking),
            tracking_number=number,
            tracking_url=url,
            local_tracking_url=local if local != url else None,
            delivery_window=window,
        ),
        "review": ReviewView(rating=review.rating) if review is not None else None,
        "seller": SellerView(name=name, signature=signature),
        "locale": locale,
    }


def sample_context(seller: SellerSettings, locale: str) -> dict[str, Any]:
    """A realistic order for start-up checks: a 5-star review so review_thanks renders, and
    a cross-border tracked parcel so shipping notices render every part."""
    shipped = datetime(2024, 4, 29, 15, 0, tzinfo=UTC)
    order = Order(
        order_id="028-1234567-7654321",
        marketplace="shop",
        buyer_email="alex.sample@example.com",
        buyer_name="Alex Sample",
        products=("Stainless steel water bottle, 750 ml", "Bottle brush"),
        locale=locale,
        country="DE",
        shipped_at=shipped,
        delivered_at=datetime(2024, 5, 6, 10, 0, tzinfo=UTC),
        review_url="https://shop.example/products/water-bottle#reviews",
        carrier="China Post",
        tracking_number="RR123456785CN",
    )
    review = Review(order.order_id, rating=5, reviewed_at=datetime(2024, 6, 1, 9, 0, tzinfo=UTC))
    window = ((shipped + timedelta(days=10)).date(), (shipped + timedelta(days=14)).date())
    return message_context(order, seller, review, locale, delivery_window=window)
