"""The daemon's small HTTP server: ``/metrics``, ``/healthz`` and one-click unsubscribe.

It runs on the daemon's event loop, loopback by default (``http.bind``), and treats every
request as hostile: bodies over ``http.max_body_bytes`` are refused (413), request lines and
headers are capped, each request has ``http.request_timeout_s``, only the known routes and
methods answer, an unexpected error answers a bare 500 (no traceback), and what is logged of
a request is its method, a cut and escaped path with any token left out, and the status.

``/unsubscribe/{token}`` (RFC 8058): POST with ``List-Unsubscribe=One-Click`` (what mail
clients send, and what the confirmation page's button sends) suppresses the order's buyer;
GET only shows that page, in the buyer's language, since link scanners fetch with GET.
A token that does not check out answers "not valid" and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import web

from worker import logs
from worker.clock import Clock
from worker.config import HttpSettings, Settings
from worker.domain import Customer, Order, SuppressionReason
from worker.errors import WorkerError
from worker.language import choose_language, locale_chain
from worker.metrics import Metrics
from worker.store import Store
from worker.unsubscribe import OneClick, read_token
from worker.unsubscribe_page import WORDS, Page, render_page

log = logs.get("worker.web")

ONE_CLICK = ("List-Unsubscribe", "One-Click")
"""RFC 8058's body, the only one that unsubscribes."""
SUPPRESSION_DETAIL = "one-click"
_PATH_LOGGED = 120
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Server": "worker",
}
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PROTOCOL_LOG = logging.getLogger("worker.web.protocol")
_PROTOCOL_LOG.disabled = True
"""aiohttp's own logger for malformed requests: silenced, as it writes a traceback with the
client's bytes for each (a flood on demand). The client gets its 400; handler errors are
logged by :meth:`WebServer._guarded`, as the error's type alone."""


class OneClickDesk:
    """Checks a token against the store and unsubscribes its order's buyer."""

    def __init__(self, settings: Settings, store: Store, one_click: OneClick, clock: Clock):
        self.settings = settings
        self.store = store
        self.one_click = one_click
        self.clock = clock

    def buyer(self, token: str) -> tuple[Order, Customer | None] | None:
        """The order and buyer the token was made for; None unless it checks out."""
        read = read_token(token)
        if read is None:
            return None
        found = self.store.buyer_of(read[0])
        if found is None or not self.one_click.valid(token, found[0].buyer_email):
            return None
        return found

    def page(self, page: Page, found: tuple[Order, Customer | None] | None) -> str:
        default = self.settings.default_locale
        if found is None:
            locale = default if default in WORDS else "en"
            return render_page(page, locale)
        order, customer = found
        locale = choose_language(order, customer, WORDS, default).locale
        seller, _ = self.settings.seller.signed(locale_chain(locale, default))
        return render_page(page, locale, seller=seller, address=order.buyer_email)

    def unsubscribe(self, order: Order) -> None:
        now = self.clock.now()
        email = order.buyer_email
        if self.store.suppress(email, SuppressionReason.UNSUBSCRIBE, now, SUPPRESSION_DETAIL):
            log.warning(
                "suppression.added",
                email=email,
                reason=SuppressionReason.UNSUBSCRIBE.value,
                detail=SUPPRESSION_DETAIL,
                order=order.order_id,
            )
        else:
            log.info("unsubscribe.already", email=email, order=order.order_id)


class WebServer:
    """Started and stopped by :meth:`worker.daemon.Daemon.run`, on its loop."""

    def __init__(
        self,
        settings: HttpSettings,
        metrics: Metrics,
        stalls: Callable[[], list[str]],
        desk: OneClickDesk | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stalls = stalls
        self.desk = desk
        self.port: int | None = None
        """The port listened on (``http.port``, or the one taken for port 0)."""
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[self._guarded]
        )
        app.router.add_get("/metrics", self._metrics, allow_head=False)
        app.router.add_get("/healthz", self._healthz, allow_head=False)
        if self.desk is not None:
            app.router.add_get("/unsubscribe/{token}", self._ask, allow_head=False)
            app.router.add_post("/unsubscribe/{token}", self._unsubscribe)
        app.on_response_prepare.append(_safe_headers)
        return app

    async def start(self) -> None:
        """Listen; a taken port or a bad bind address is a :class:`WorkerError`."""
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            logger=_PROTOCOL_LOG,
            handle_signals=False,
            handler_cancellation=True,
            keepalive_timeout=5,
            max_line_size=2048,
            max_field_size=4096,
            max_headers=32,
            lingering_time=2.0,
            shutdown_timeout=2,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.settings.bind, self.settings.port, backlog=64)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise WorkerError(
                f"cannot listen on {self.settings.bind}:{self.settings.port}: {exc.strerror}; "
                "another process may hold the port (http.port), or set http.enabled: false",
                where="http",
            ) from None
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.settings.port
        log.info("http.listening", bind=self.settings.bind, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @web.middleware
    async def _guarded(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        status = 500
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except TimeoutError:
            status = 503
            timed_out = web.Response(status=503, text="timed out\n")
            timed_out.force_close()  # no lingering for the rest of a body that never came
            return timed_out
        except Exception as exc:  # never a traceback to the client
            log.error("http.failed", path=_logged_path(request.path), error=type(exc).__name__)
            return web.Response(status=500, text="internal error\n")
        finally:
            log.debug(
                "http.request",
                method=request.method[:16],
                path=_logged_path(request.path),
                status=status,
            )

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            body = self.metrics.exposition()
        except WorkerError as exc:
            log.error("metrics.failed", error=str(exc))
            return web.Response(status=503, text="the database cannot be read\n")
        response = web.Response(body=body)
        response.content_type = "text/plain"
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        try:
            stalled = self.stalls()
        except WorkerError as exc:
            log.error("healthz.failed", error=str(exc))
            stalled = ["database: cannot be read"]
        if stalled:
            return web.Response(status=503, text="stalled: " + "; ".join(stalled) + "\n")
        return web.Response(text="ok\n")

    async def _ask(self, request: web.Request) -> web.Response:
        """GET: the confirmation page, never an unsubscribe (link scanners fetch with GET)."""
        assert self.desk is not None
        found = self.desk.buyer(request.match_info["token"])
        if found is None:
            return _html(self.desk.page("invalid", None), 404)
        return _html(self.desk.page("ask", found), 200)

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        assert self.desk is not None
        found = self.desk.buyer(request.match_info["token"])
        one_click = await _one_click_body(request)  # 413 past max_body_bytes, token or not
        if found is None:
            return _html(self.desk.page("invalid", None), 404)
        if not one_click:
            return _html(self.desk.page("ask", found), 400)
        self.desk.unsubscribe(found[0])
        return _html(self.desk.page("done", found), 200)


async def _one_click_body(request: web.Request) -> bool:
    """The body is RFC 8058's ``List-Unsubscribe=One-Click``, as a form or bare."""
    if request.content_type == "multipart/form-data":
        form = await request.post()
        return form.get(ONE_CLICK[0]) == ONE_CLICK[1]
    raw = await request.read()
    try:
        pairs = parse_qsl(raw.decode("ascii").strip(), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return False
    return ONE_CLICK in pairs


def _html(text: str, status: int) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


async def _safe_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _HEADERS.items():
        response.headers[name] = value


def _logged_path(path: str) -> str:
    """The path without a token (a key to unsubscribe someone), cut short."""
    if path.startswith("/unsubscribe/"):
        return "/unsubscribe/…"
    return path[:_PATH_LOGGED]
