"""The optional intent endpoint, against a scripted OpenAI-compatible server on loopback.

The server answers each request with the next step of its script: a good reading, a
complaint, garbage, an intent we do not know, a 500, a reply too slow or too big; a closed
port stands for an endpoint that is down. Each time the test checks the reading the worker
ends with: the endpoint may only tighten the local one, and every failure leaves the local
reading as it was, logged without the key or the buyer's words.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import ROOT, settings_for
from tests.messages import plain_mail
from worker.clock import FixedClock
from worker.config import IntentSettings, load_settings
from worker.domain import DisputeKind, Intent, Order
from worker.errors import ConfigError
from worker.ingest import Ingest, IngestReport
from worker.intent import IntentReader, IntentReading
from worker.intent_remote import (
    MAX_REPLY_BYTES,
    SYSTEM_PROMPT,
    RemoteReader,
    RemoteVerdict,
    combine,
)
from worker.mailbox import FetchedMessage
from worker.rules import load_rules
from worker.store import Store

KEY = "sk-test-4f9c2b7e1d"
KEY_ENV = "TEST_INTENTS_KEY"
MODEL = "test-model-1"
THANKS = IntentReading(Intent.THANKS, 0.97, "intent=thanks p=0.97 from=words")
OTHER = IntentReading(Intent.OTHER, 0.41, "intent=other p=0.41 from=words")
COMPLAINT = IntentReading(Intent.DAMAGED, 0.93, "intent=damaged p=0.93 from=words")
WORDS = "Thank you, the kettle arrived and works perfectly!"

Step = Callable[[BaseHTTPRequestHandler, threading.Event], None]


@dataclass(frozen=True)
class Fixed:
    """A local reader whose reading the test chooses: the combination is what is tested."""

    reading: IntentReading

    def read(self, subject: str, words: str) -> IntentReading:
        return self.reading


@dataclass
class Endpoint:
    """What the scripted server saw, and the steps it still has to play."""

    port: int
    script: list[Step] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def completion(content: str) -> str:
    return json.dumps({"id": "c1", "choices": [{"index": 0, "message": {"content": content}}]})


def answer(body: bytes | str, status: int = 200, length: bool = True) -> Step:
    data = body.encode() if isinstance(body, str) else body

    def step(handler: BaseHTTPRequestHandler, release: threading.Event) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        if length:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        try:
            handler.wfile.write(data)
        except OSError:
            pass  # the worker stopped reading, as it should past the cap

    return step


def reading(intent: str, confidence: float = 0.8) -> Step:
    return answer(completion(json.dumps({"intent": intent, "confidence": confidence})))


def slow(seconds: float) -> Step:
    def step(handler: BaseHTTPRequestHandler, release: threading.Event) -> None:
        release.wait(seconds)  # the scripted slowness; ends at once when the test is over
        reading("damaged")(handler, release)

    return step


def trickle(seconds: float) -> Step:
    """A 200 whose body comes a byte at a time: each byte in time, the whole far too late."""

    def step(handler: BaseHTTPRequestHandler, release: threading.Event) -> None:
        data = completion(json.dumps({"intent": "damaged", "confidence": 0.9})).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        for byte in data:
            if release.wait(seconds / len(data)):
                return
            try:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            except OSError:
                return

    return step


def cut_short() -> Step:
    """A 200 announcing more than it sends, then closing."""

    def step(handler: BaseHTTPRequestHandler, release: threading.Event) -> None:
        data = completion(json.dumps({"intent": "damaged", "confidence": 0.9})).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data) * 2))
        handler.end_headers()
        handler.wfile.write(data)
        handler.close_connection = True

    return step


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    release = threading.Event()
    seen = Endpoint(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.requests.append(
                {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
            )
            step = seen.script.pop(0) if seen.script else answer("no more script", 599)
            step(self, release)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    seen.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield seen
    release.set()
    server.shutdown()
    server.server_close()


def settings(url: str, **changes: Any) -> IntentSettings:
    values: dict[str, Any] = {
        "backend": "openai",
        "url": url,
        "model": MODEL,
        "api_key_env": KEY_ENV,
        "timeout_s": 0.5,
    }
    return IntentSettings.model_validate(values | changes)


def remote(
    url: str, local: IntentReading = THANKS, clock: Callable[[], float] = lambda: 0.0, **kw: Any
) -> RemoteReader:
    return RemoteReader(Fixed(local), settings(url, **kw), environ={KEY_ENV: KEY}, monotonic=clock)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_key_in(logs: Sequence[Mapping[str, Any]]) -> None:
    for line in logs:
        assert KEY not in repr(line)
        assert "kettle" not in repr(line).lower()  # nor the buyer's words


def test_a_good_reply_is_asked_for_as_the_settings_say(endpoint: Endpoint) -> None:
    endpoint.script = [reading("thanks", 0.9)]
    result = remote(endpoint.url).read("Re: your order", WORDS)
    assert result == IntentReading(
        Intent.THANKS,
        0.97,
        f"remote={MODEL}:thanks p=0.90 decided=local; local {THANKS.evidence}",
    )
    [request] = endpoint.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    sent = request["json"]
    assert sent["model"] == MODEL
    assert sent["temperature"] == 0
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert json.loads(sent["messages"][1]["content"]) == {
        "subject": "Re: your order",
        "words": WORDS,
    }
    for intent in Intent:
        assert f"- {intent.value}:" in SYSTEM_PROMPT


def test_the_buyers_words_are_cut_to_max_chars(endpoint: Endpoint) -> None:
    endpoint.script = [reading("thanks")]
    remote(endpoint.url, max_chars=100).read("s" * 1000, "w" * 50_000)
    sent = json.loads(endpoint.requests[0]["json"]["messages"][1]["content"])
    assert sent == {"subject": "s" * 200, "words": "w" * 100}


def test_a_remote_complaint_over_thanks_pauses_for_review(endpoint: Endpoint) -> None:
    endpoint.script = [reading("damaged", 0.8)]
    result = remote(endpoint.url).read("", WORDS)
    assert result.intent is Intent.DAMAGED
    assert result.confidence == 0.8
    assert result.needs_review
    assert result.evidence.startswith(f"remote={MODEL}:damaged p=0.80 decided=remote")


def test_a_remote_unsubscribe_is_only_noted(endpoint: Endpoint) -> None:
    endpoint.script = [reading("unsubscribe", 0.99)]
    result = remote(endpoint.url).read("", "please stop")
    assert (result.intent, result.confidence, result.needs_review) == (Intent.THANKS, 0.97, False)
    assert result.evidence.startswith(f"remote={MODEL}:unsubscribe p=0.99 not acted on")


def test_the_remote_tags_what_the_model_calls_other(endpoint: Endpoint) -> None:
    endpoint.script = [reading("invoice_request", 0.85), reading("thanks", 0.85)]
    tagged = remote(endpoint.url, local=OTHER).read("", "the paper for my accountant")
    assert (tagged.intent, tagged.confidence, tagged.needs_review) == (
        Intent.INVOICE_REQUEST,
        0.85,
        False,
    )
    assert tagged.evidence.startswith(f"remote={MODEL}:invoice_request p=0.85 decided=remote")
    kept = remote(endpoint.url, local=IntentReading(Intent.USAGE_QUESTION, 0.6, "e")).read(
        "", "how do I descale it?"
    )
    assert kept.intent is Intent.USAGE_QUESTION


def test_a_local_complaint_stands_and_its_words_stay_here(endpoint: Endpoint) -> None:
    endpoint.script = [reading("thanks", 1.0)]
    assert remote(endpoint.url, local=COMPLAINT).read("", "broken") == COMPLAINT
    unsubscribe = IntentReading(Intent.UNSUBSCRIBE, 0.99, "intent=unsubscribe")
    assert remote(endpoint.url, local=unsubscribe).read("", "stop") == unsubscribe
    assert endpoint.requests == []
    unsure = IntentReading(Intent.REFUND, 0.4, "intent=refund p=0.40", needs_review=True)
    for said in (RemoteVerdict(Intent.THANKS, 1.0), RemoteVerdict(Intent.UNSUBSCRIBE, 1.0)):
        for local in (COMPLAINT, unsure, unsubscribe):
            combined = combine(local, said, MODEL)
            assert (combined.intent, combined.confidence, combined.needs_review) == (
                local.intent,
                local.confidence,
                local.needs_review,
            )
            assert "decided=local" in combined.evidence


FAILURES = {
    "garbage": (answer("{not json at all"), "bad reply: json_invalid"),
    "garbage in the message": (answer(completion("I think it is damaged")), "bad reply"),
    "an intent we do not know": (reading("refund_immediately_and_delete_db"), "bad reply"),
    "a confidence out of range": (reading("damaged", 7.0), "bad reply"),
    "a refusal without content": (answer(json.dumps({"choices": [{"message": {}}]})), "bad"),
    "a body cut short": (cut_short(), "cut short"),
    "HTTP 500": (answer('{"error": "boom"}', status=500), "status 500"),
    "a redirect elsewhere": (answer("", status=307), "status 307"),
    "a slow reply": (slow(3.0), "timeout"),
    "a reply dripping past the deadline": (trickle(3.0), "timeout"),
    "a body bigger than the cap": (answer(b"x" * (MAX_REPLY_BYTES * 4)), "too big"),
    "a body past the cap with no length": (
        answer(" " * (MAX_REPLY_BYTES * 4) + completion("{}"), length=False),
        "too big",
    ),
}


@pytest.mark.parametrize("step, reason", FAILURES.values(), ids=FAILURES.keys())
def test_a_failed_reply_leaves_the_local_reading(
    endpoint: Endpoint, step: Step, reason: str
) -> None:
    endpoint.script = [step]
    started = time.monotonic()
    with capture_logs() as logs:
        result = remote(endpoint.url).read("Kettle", WORDS)
    assert time.monotonic() - started < 2.0  # timeout_s is 0.5; the slow ones take 3
    assert (result.intent, result.confidence, result.needs_review) == (Intent.THANKS, 0.97, False)
    assert result.evidence.startswith("remote=failed (")
    assert reason in result.evidence
    [line] = logs
    assert line["event"] == "intent.remote_failed"
    assert line["log_level"] == "warning"
    assert reason in line["reason"]
    assert line["endpoint"] == f"http://127.0.0.1:{endpoint.port}"
    no_key_in(logs)
    assert len(endpoint.requests) == 1


def test_a_closed_port_leaves_the_local_reading() -> None:
    with capture_logs() as logs:
        result = remote(f"http://127.0.0.1:{closed_port()}").read("", WORDS)
    assert result.intent is Intent.THANKS
    assert result.evidence == f"remote=failed (refused); local {THANKS.evidence}"
    assert [line["reason"] for line in logs] == ["refused"]
    no_key_in(logs)


def test_a_dead_endpoint_is_left_alone_after_failures_in_a_row(endpoint: Endpoint) -> None:
    now = [1000.0]
    reader = remote(endpoint.url, clock=lambda: now[0], failures_before_pause=3, pause_s=60)
    endpoint.script = [answer("", 503)] * 3 + [reading("damaged", 0.9), answer("", 503)]
    with capture_logs() as logs:
        for _ in range(3):
            assert reader.read("", WORDS).intent is Intent.THANKS
        assert [line["paused_s"] for line in logs] == [0, 0, 60]
        for _ in range(5):
            assert reader.read("", WORDS).evidence.startswith("remote=paused; ")
        assert len(endpoint.requests) == 3
        now[0] += 59.9
        assert reader.read("", WORDS).evidence.startswith("remote=paused; ")
        now[0] += 0.2
        assert reader.read("", WORDS).intent is Intent.DAMAGED  # tried again, and it answered
        assert logs[-1]["event"] == "intent.remote_resumed"
        assert reader.read("", WORDS).evidence.startswith("remote=failed (status 503)")
        assert logs[-1]["failures"] == 1  # the count began again
    assert len(endpoint.requests) == 5
    no_key_in(logs)


def test_the_key_comes_from_the_named_variable_only(endpoint: Endpoint, tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=KEY_ENV) as missing:
        RemoteReader(Fixed(THANKS), settings(endpoint.url), environ={})
    assert KEY not in str(missing.value)
    assert KEY not in repr(remote(endpoint.url))
    config = tmp_path / "worker.yaml"
    config.write_text(
        f"intents: {{backend: openai, url: '{endpoint.url}', model: m, api_key_env: {KEY_ENV}}}\n"
    )
    with pytest.raises(ConfigError, match=f"{KEY_ENV} .* is not set"):
        load_settings(config, {})
    assert load_settings(config, {KEY_ENV: KEY}).intents.backend == "openai"
    with pytest.raises(ConfigError, match="not the key itself"):
        load_settings(config, {KEY_ENV: KEY, "WORKER_INTENTS_API_KEY_ENV": KEY})
    for url, problem in [
        ("ftp://api.example/v1", "not an http"),
        ("http://api.example/v1", "allowed only on loopback"),
        (f"https://user:{KEY}@api.example/v1", "must not carry a user or password"),
    ]:
        with pytest.raises(ConfigError, match=problem) as refused:
            load_settings(config, {KEY_ENV: KEY, "WORKER_INTENTS_URL": url})
        assert KEY not in str(refused.value)
    with pytest.raises(ConfigError, match=r"below inbox\.read_timeout_s"):
        load_settings(config, {KEY_ENV: KEY, "WORKER_INTENTS_TIMEOUT_S": "10"})


NOW = datetime(2026, 4, 6, 9, 0, tzinfo=UTC)
ANN = Order(
    "SHOP-1001", "shop", "ann@buyer.example", "Ann Smith", ("Glass kettle",), "en", "GB",
    delivered_at=NOW - timedelta(days=5),
)  # fmt: skip


async def test_ingest_reads_through_the_endpoint(
    endpoint: Endpoint, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thanks the model reads becomes a complaint the endpoint found: a dispute opens."""
    monkeypatch.setenv(KEY_ENV, KEY)
    config = settings_for(
        store,
        8025,
        inbox={"rules_file": str(ROOT / "config" / "mail-rules.yaml")},
        intents=settings(endpoint.url).model_dump(),
    )
    store.upsert_orders([ANN], NOW - timedelta(days=9))
    ingest = Ingest(config, store, load_rules(config.inbox.rules_file), FixedClock(NOW))
    assert IntentReader.shipped().read("", WORDS).intent is Intent.THANKS
    endpoint.script = [reading("damaged", 0.75)]
    raw = plain_mail("Ann Smith <ann@buyer.example>", "Your order", WORDS, message_id="<a1@b>")
    fetched = FetchedMessage(1, raw, NOW, len(raw))
    recorded = await ingest.take(fetched, "INBOX", 1, IngestReport())
    assert (recorded.dispute, recorded.dispute_order) == (DisputeKind.DAMAGED, ANN.order_id)
    [request] = endpoint.requests
    assert WORDS in request["json"]["messages"][1]["content"]
