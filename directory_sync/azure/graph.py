"""A small, polite Microsoft Graph client: paging, JSON `$batch`, retries, and an adaptive write rate.

What it does, following Microsoft's guidance for large directory jobs:

- reads page with `$top` (up to 999) and follow `@odata.nextLink`; callers `$select` what they need;
- writes go in JSON `$batch` envelopes of up to 20 requests, a few envelopes in flight at once
  (`concurrency`), results handed back to the caller's thread as each envelope completes;
- 429 and 503 (on the envelope, or on single requests inside it) wait for `Retry-After` and resend
  only what was refused; other transient failures (5xx, time-outs, dropped connections) back off
  exponentially with full jitter. After `max_retries` the request is given up: its answer has status 0;
- writes are paced by `WriteLimiter`, whose rate grows until the tenant signals its quota (the
  `x-ms-throttle-limit-percentage` header past 80% of the quota, or a 429) and then settles just under it,
  instead of hammering the tenant and living on Retry-After;
- a 401 refreshes the token once; a 403 stops everything (`GraphPermissionDenied`): no amount of
  retrying grants a permission. When Graph stays unreachable the client trips and every later call
  fails fast with `GraphUnavailable`, so a push stops cleanly and resumes next time.

Nothing here knows about people: `push.py` decides what to send and what each answer means.
"""

from __future__ import annotations

import email.utils
import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..config import AzureSettings
from .auth import TokenProvider
from .errors import GraphError, GraphPermissionDenied, GraphUnavailable

log = logging.getLogger(__name__)

MAX_BATCH = 20  # Graph's limit of requests in one $batch
MAX_PAGE = 999  # Graph's largest $top for directory objects
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_MAX_RETRY_AFTER = 300.0


class TransportUncertain(Exception):
    """A request that must not be blindly resent failed in transit: it may or may not have been applied."""


@dataclass(slots=True)
class GraphResponse:
    """One answer: HTTP status (0: no answer after every retry), lower-cased headers, JSON body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None

    @property
    def error_message(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        return f"HTTP {self.status}" if self.status else "no answer"


@dataclass(slots=True)
class SubRequest:
    """One request to send inside a `$batch`; `tag` is the caller's, handed back with the answer."""

    method: str
    url: str  # relative to the version root: "/users", "/groups/{id}/members/$ref"
    body: dict[str, Any] | None = None
    tag: Any = None

    @property
    def is_write(self) -> bool:
        return self.method in _WRITE_METHODS


@dataclass
class GraphStats:
    """What the client sent and what it was told: the figures a push reports."""

    requests: int = 0  # HTTP requests to Graph (a $batch envelope counts once)
    writes: int = 0  # write requests, inside envelopes or not
    throttled: int = 0  # 429 answers, envelope or inner
    retries: int = 0  # requests sent again
    gave_up: int = 0


# --------------------------------------------------------------------------------------------------
# Pacing writes.


class WriteLimiter:
    """Paces writes at `rate` per second and adapts the rate to the tenant's write quota.

    Each caller reserves a slot (`acquire`); slots follow each other at `n / rate` seconds, so writes
    leave evenly instead of in bursts. The rate starts at the configured value (Entra's documented
    quota for an app in a tenant is 3,000 writes per 150 s, 20 per second) and then listens:

    - no signal: the tenant is below 80% of its quota: grow, 10% per envelope until the first signal
      (slow start), 0.3% after;
    - `x-ms-throttle-limit-percentage` u (sent by Entra past 80% of the quota): the quota's rate is
      about (writes accepted per second) / u, so aim at 98% of that, moving half-way (in log terms,
      between -10% and +2% per envelope) because the figure lags behind the rate;
    - a 429: cut towards 95% of the write rate the tenant accepted over the last seconds (between
      10% and 50% less, once per burst of refusals), and let nobody send before Retry-After.

    Tuned on a simulation of a sliding-window quota, then measured by benchmarks/azure_export.py.
    """

    AIM = 0.98  # of the quota, when the tenant reports its usage
    AFTER_429 = 0.95  # of the rate the tenant accepted, after a refusal
    HORIZON = 5.0  # seconds of accepted writes that measure what the tenant allows

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.min_rate = 0.2
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._last_cut = -1e9
        self._signalled = False
        self._started = clock()
        self._accepted: deque[tuple[float, int]] = deque()

    @property
    def signalled(self) -> bool:
        """Whether the tenant has said anything about its quota yet (so `rate` is learned)."""
        return self._signalled

    def prime(self, rate: float) -> None:
        """Start from a rate learned earlier (a previous push), as if the tenant had already spoken."""
        with self._lock:
            if not self._signalled:
                self.rate, self._signalled = max(self.min_rate, rate), True

    def acquire(self, writes: int) -> None:
        """Wait for the slot of `writes` writes."""
        if writes <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next_slot, self._paused_until)
            self._next_slot = start + writes / self.rate
        if start > now:
            self._sleep(start - now)

    def _achieved(self) -> float:
        """Writes per second the tenant accepted over the last few seconds (under the lock)."""
        now = self._clock()
        while self._accepted and self._accepted[0][0] < now - self.HORIZON:
            self._accepted.popleft()
        span = max(1.0, min(self.HORIZON, now - self._started))
        return sum(n for _, n in self._accepted) / span

    def on_accepted(self, usage: float | None, writes: int = 0) -> None:
        """`writes` went through; `usage` is the quota percentage the tenant reported, if any."""
        with self._lock:
            if writes:
                self._accepted.append((self._clock(), writes))
            if usage is None:
                self.rate *= 1.003 if self._signalled else 1.10
                return
            self._signalled = True
            aim = self._achieved() * self.AIM / max(usage, 0.01)
            step = (aim / self.rate) ** 0.5
            self.rate = max(self.min_rate, self.rate * min(1.02, max(0.9, step)))

    def on_throttled(self, retry_after: float) -> None:
        """A 429: slow down (once per burst of refusals) and let nobody send before Retry-After."""
        with self._lock:
            now = self._clock()
            self._signalled = True
            if now - self._last_cut > 1.0:
                aim = self.AFTER_429 * self._achieved()
                self.rate = max(self.min_rate, min(self.rate * 0.9, max(self.rate * 0.5, aim)))
                self._last_cut = now
            self._paused_until = max(self._paused_until, now + retry_after)
            self._next_slot = max(self._next_slot, self._paused_until)


# --------------------------------------------------------------------------------------------------
# The client.


def retry_after_seconds(headers: dict[str, str]) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped; None when absent or unreadable."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _usage(headers: dict[str, str]) -> float | None:
    value = headers.get("x-ms-throttle-limit-percentage")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _permission_for(method: str, url: str) -> str:
    """The application permission a request needs (the export's write permission covers reading)."""
    path = url.split("?", 1)[0]
    return "Group.ReadWrite.All" if path.startswith("/groups") else "User.ReadWrite.All"


class GraphClient:
    """Microsoft Graph v1.0 for one tenant, with an app-only token from `TokenProvider`."""

    def __init__(
        self,
        settings: AzureSettings,
        tokens: TokenProvider,
        *,
        http: httpx.Client | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.base = f"{settings.graph_url}/v1.0"
        self.concurrency = settings.concurrency
        self.max_retries = settings.max_retries
        self.retry_base = settings.retry_base
        self.limiter = WriteLimiter(settings.write_rate)
        self.stats = GraphStats()
        self._stats_lock = threading.Lock()
        self._rng = rng or random.Random()
        self._broken: str | None = None
        verify = tokens.verify
        self.http = http or httpx.Client(
            verify=ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify,
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 15.0)),
            limits=httpx.Limits(max_connections=settings.concurrency + 2),
            headers={"Accept": "application/json", "User-Agent": "ght-federation/azure-export"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with full jitter: uniform in [0, base * 2^attempt], at most 30 s."""
        return self._rng.uniform(0, min(30.0, self.retry_base * (2**attempt)))

    # -- one HTTP exchange --------------------------------------------------------------------------

    def _exchange(self, method: str, url: str, body: Any) -> GraphResponse:
        """One HTTP request with a fresh token; a 401 gets one more try with a new token.

        Raises httpx.TransportError (including time-outs) for the caller to retry.
        """
        if self._broken:
            raise GraphUnavailable(self._broken)
        target = url if url.startswith("https://") else f"{self.base}{url}"
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.tokens.token()}"}
            self._count(requests=1)
            response = self.http.request(method, target, json=body, headers=headers)
            answer = GraphResponse(
                response.status_code,
                {k.lower(): v for k, v in response.headers.items()},
                response.json()
                if response.content and "json" in response.headers.get("content-type", "")
                else None,
            )
            if answer.status == 401 and attempt == 1:
                log.info("Graph answered 401 (%s): asking for a new token", answer.error_code)
                self.tokens.invalidate()
                continue
            return answer
        return answer

    def _give_up(self, what: str, problem: str) -> None:
        self._broken = f"Microsoft Graph is not answering ({what}): {problem}; nothing more was sent"
        self._count(gave_up=1)

    def request(
        self, method: str, url: str, body: Any = None, *, what: str = "", retry_transport: bool = True
    ) -> GraphResponse:
        """One request, retried on 429/5xx and transport failures. Raises on 401/403 and give-up.

        With `retry_transport=False` a transport failure raises `TransportUncertain` instead of
        resending: the caller checks whether the request took effect before trying again.
        """
        what = what or f"{method} {url.split('?', 1)[0]}"
        for attempt in range(self.max_retries + 1):
            if method in _WRITE_METHODS:
                self.limiter.acquire(1)
                self._count(writes=1)
            try:
                answer = self._exchange(method, url, body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.info("%s failed (%s), attempt %d", what, problem, attempt + 1)
                if not retry_transport:
                    raise TransportUncertain(problem) from None
                if attempt == self.max_retries:
                    self._give_up(what, problem)
                    raise GraphUnavailable(self._broken or problem) from None
                self._count(retries=1)
                time.sleep(self._backoff(attempt))
                continue
            self._check_fatal(answer, method, url, what)
            if answer.status in RETRY_STATUSES and attempt < self.max_retries:
                delay = self._on_refusal(answer, attempt, write=method in _WRITE_METHODS)
                log.info("%s answered %d; retrying in %.1f s", what, answer.status, delay)
                self._count(retries=1)
                time.sleep(delay)
                continue
            if method in _WRITE_METHODS and answer.status not in RETRY_STATUSES:
                self.limiter.on_accepted(_usage(answer.headers), 1)
            if answer.status in RETRY_STATUSES:
                self._give_up(what, f"still {answer.status} after {attempt + 1} attempts")
                raise GraphUnavailable(self._broken or "")
            return answer
        return answer

    def _on_refusal(self, answer: GraphResponse, attempt: int, *, write: bool) -> float:
        """How long to wait after a retryable answer; a 429 also slows the writers down."""
        retry_after = retry_after_seconds(answer.headers)
        if answer.status == 429:
            self._count(throttled=1)
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            self.limiter.on_throttled(delay)
            return delay
        return retry_after if retry_after is not None else self._backoff(attempt)

    def _check_fatal(self, answer: GraphResponse, method: str, url: str, what: str) -> None:
        if answer.status == 403:
            raise GraphPermissionDenied(answer.error_message, what, _permission_for(method, url))
        if answer.status == 401:
            raise GraphError(401, answer.error_code, answer.error_message, what)

    def get(self, url: str, *, what: str = "") -> Any:
        """GET one resource or page; raises GraphError unless it succeeds."""
        answer = self.request("GET", url, what=what)
        if not answer.ok:
            raise GraphError(answer.status, answer.error_code, answer.error_message, what or f"GET {url}")
        return answer.body

    def pages(self, url: str, *, what: str = "") -> Iterator[dict[str, Any]]:
        """Every item of a collection, page after page (`@odata.nextLink`)."""
        next_url: str | None = url
        while next_url:
            page = self.get(next_url, what=what)
            yield from page.get("value", [])
            next_url = page.get("@odata.nextLink")

    # -- $batch ---------------------------------------------------------------------------------------

    def batch(self, requests: Iterable[SubRequest]) -> Iterator[list[tuple[SubRequest, GraphResponse]]]:
        """Send `requests` in `$batch` envelopes of up to 20; yield each envelope's answers when done.

        `requests` is consumed lazily in the caller's thread (so it may write a journal before each
        request is handed over); answers are yielded in the caller's thread too, in completion order.
        """
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="graph-batch")
        in_flight: set[Future[list[tuple[SubRequest, GraphResponse]]]] = set()
        try:
            envelope: list[SubRequest] = []
            for request in requests:
                envelope.append(request)
                if len(envelope) == MAX_BATCH:
                    in_flight.add(pool.submit(self._send_envelope, envelope))
                    envelope = []
                    while len(in_flight) >= 2 * self.concurrency:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for future in done:
                            yield future.result()
            if envelope:
                in_flight.add(pool.submit(self._send_envelope, envelope))
            while in_flight:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _send_envelope(self, envelope: Sequence[SubRequest]) -> list[tuple[SubRequest, GraphResponse]]:
        """Send one envelope until every request in it has a final answer (or was given up)."""
        final: dict[int, GraphResponse] = {}
        pending = list(range(len(envelope)))
        attempt = 0
        while pending:
            payload = {
                "requests": [
                    {
                        "id": str(i),
                        "method": envelope[i].method,
                        "url": envelope[i].url,
                        **(
                            {"headers": {"Content-Type": "application/json"}, "body": envelope[i].body}
                            if envelope[i].body is not None
                            else {}
                        ),
                    }
                    for i in pending
                ]
            }
            writes = sum(1 for i in pending if envelope[i].is_write)
            self.limiter.acquire(writes)
            self._count(writes=writes)
            try:
                answer = self._exchange("POST", "/$batch", payload)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if attempt >= self.max_retries:
                    self._give_up("$batch", problem)
                    raise GraphUnavailable(self._broken or problem) from None
                log.info("$batch of %d failed (%s); resending", len(pending), problem)
                self._count(retries=len(pending))
                time.sleep(self._backoff(attempt))
                attempt += 1
                continue
            self._check_fatal(answer, "POST", "/$batch", "$batch")
            if answer.status != 200:  # the envelope itself was refused (429, 503...)
                if answer.status in RETRY_STATUSES and attempt < self.max_retries:
                    delay = self._on_refusal(answer, attempt, write=writes > 0)
                    self._count(retries=len(pending))
                    time.sleep(delay)
                    attempt += 1
                    continue
                if answer.status in RETRY_STATUSES:
                    self._give_up("$batch", f"still {answer.status} after {attempt + 1} attempts")
                    raise GraphUnavailable(self._broken or "")
                raise GraphError(answer.status, answer.error_code, answer.error_message, "$batch")
            responses = {
                int(r["id"]): GraphResponse(
                    int(r.get("status", 0)),
                    {k.lower(): str(v) for k, v in (r.get("headers") or {}).items()},
                    r.get("body"),
                )
                for r in (answer.body or {}).get("responses", [])
            }
            retry: list[int] = []
            wait_for = 0.0
            usage: float | None = None
            for i in pending:
                inner = responses.get(i, GraphResponse(0, {}, None))
                reported = _usage(inner.headers)
                if reported is not None:
                    usage = max(usage or 0.0, reported)
                self._check_fatal(
                    inner, envelope[i].method, envelope[i].url, f"{envelope[i].method} {envelope[i].url}"
                )
                if (inner.status in RETRY_STATUSES or inner.status == 0) and attempt < self.max_retries:
                    retry.append(i)
                    wait_for = max(wait_for, self._on_refusal(inner, attempt, write=envelope[i].is_write))
                else:
                    final[i] = inner
            accepted = sum(1 for i in pending if i not in retry and envelope[i].is_write)
            if accepted:
                self.limiter.on_accepted(usage, accepted)
            pending = retry
            if pending:
                self._count(retries=len(pending))
                time.sleep(wait_for)
                attempt += 1
        return [(envelope[i], final[i]) for i in range(len(envelope))]
