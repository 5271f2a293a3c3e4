"""One retry policy for both ends of the wire: the laptop's transport to the gateway
(``sync.device.transport``) and the gateway's connection to the upstream
(``sync.gateway.upstream.connection``). No network, no clock: the caller hands in the one
request (``send_once``), how to sleep and where the jitter comes from.

Invariants:
- Only a retryable request is sent more than once: a method in ``idempotent_methods``, or one
  the caller declares idempotent (a POST made idempotent by a conditional create); a request
  declared not idempotent is sent once, whatever its method.
- At most ``max_attempts`` sends, except that a **busy** answer (503 with a ``Retry-After`` in
  seconds), where the policy has a busy budget (``max_busy_wait_s``), is waited out without
  using up an attempt until the waits for this request would pass that budget; then it is
  returned as it is.
- Retried: a failure ``transient`` says is one (no connection, a timeout) and an answer whose
  status is in ``retry_statuses``. Anything else is returned, or raised, at once.
- The wait before attempt ``n + 1`` is ``backoff_base_s × 2^(n − 1)``, or the server's
  ``Retry-After`` when longer, times ``1 + jitter × fraction`` (``fraction`` clamped to
  [0, 1]): never shorter than the backoff, never longer than ``max_retry_after_s`` times that.
- ``Retry-After`` counts only as whole seconds in ASCII digits (an HTTP date or anything else is
  ignored: the backoff applies); a value above ``max_retry_after_s`` ends the retries and the
  answer is returned, so a request is never held longer than the caller allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

# Retry-After values are read up to this many digits; a longer one is clamped to the largest
# such number (it asks for more than any policy waits anyway).
_MAX_DIGITS = 9
_ASCII_DIGITS = frozenset("0123456789")


class Answer(Protocol):
    """What the loop reads of a response: its status and its headers (names in lower case)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


A = TypeVar("A", bound=Answer)


def retry_after_seconds(value: str | None) -> int | None:
    """Whole seconds of a ``Retry-After`` header (clamped to 999,999,999), or None when it is
    absent or not a number of seconds (e.g. an HTTP date)."""
    if value is None:
        return None
    text = value.strip()
    if not text or not set(text) <= _ASCII_DIGITS:
        return None
    text = text.lstrip("0") or "0"
    return int(text) if len(text) <= _MAX_DIGITS else 10**_MAX_DIGITS - 1


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_base_s: float
    retry_statuses: frozenset[int]
    idempotent_methods: frozenset[str]
    max_retry_after_s: int
    jitter: float = 0.0  # each wait times 1 + jitter × a fraction in [0, 1]
    max_busy_wait_s: float | None = None  # None: a busy answer uses up an attempt

    def retryable(self, method: str, idempotent: bool | None) -> bool:
        return method.upper() in self.idempotent_methods if idempotent is None else idempotent

    def backoff(self, attempt: int, fraction: float) -> float:
        """The wait after failed attempt ``attempt`` (1, 2 …), spread by the jitter."""
        return float(self.backoff_base_s * 2 ** (attempt - 1)) * self._spread(fraction)

    def retry_delay(self, attempt: int, retry_after: str | None, fraction: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``: the backoff, or the server's
        ``Retry-After`` when longer, spread by the jitter; None when the server asks for more
        than ``max_retry_after_s``."""
        delay = self.backoff(attempt, 0.0)
        asked = retry_after_seconds(retry_after)
        if asked is not None:
            if asked > self.max_retry_after_s:
                return None
            delay = max(delay, float(asked))
        return delay * self._spread(fraction)

    def asks_to_wait(self, answer: Answer) -> bool:
        """A busy answer this policy waits out: a 503 with a ``Retry-After`` in seconds."""
        return (
            self.max_busy_wait_s is not None
            and answer.status == 503
            and retry_after_seconds(answer.headers.get("retry-after")) is not None
        )

    def _spread(self, fraction: float) -> float:
        return 1 + self.jitter * min(max(fraction, 0.0), 1.0)


def send_with_retries(
    policy: RetryPolicy,
    send_once: Callable[[], A],
    *,
    retryable: bool,
    transient: Callable[[Exception], bool],
    sleep: Callable[[float], None],
    jitter: Callable[[], float],
) -> A:
    """``send_once`` until it gives an answer not worth retrying, or the policy says stop;
    the last answer is returned, the last failure raised."""
    attempts = policy.max_attempts if retryable else 1
    attempt, busy_waited = 1, 0.0
    while True:
        try:
            answer = send_once()
        except Exception as exc:
            if attempt < attempts and transient(exc):
                sleep(policy.backoff(attempt, jitter()))
                attempt += 1
                continue
            raise
        if not retryable or answer.status not in policy.retry_statuses:
            return answer
        retry_after = answer.headers.get("retry-after")
        if policy.asks_to_wait(answer):
            # "Busy, come back in N s": the server is shedding load, not failing. Waits do not
            # use up attempts, only this request's busy budget.
            budget = policy.max_busy_wait_s or 0.0
            delay = policy.retry_delay(1, retry_after, jitter())
            if delay is None or busy_waited + delay > budget:
                return answer
            busy_waited += delay
            sleep(delay)
            continue
        if attempt >= attempts:
            return answer
        delay = policy.retry_delay(attempt, retry_after, jitter())
        if delay is None:
            return answer  # asked to wait longer than the caller allows: answer now
        sleep(delay)
        attempt += 1
