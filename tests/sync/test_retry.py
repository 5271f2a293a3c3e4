"""The retry policy both ends share (``sync.protocol.retry``): what the laptop's transport and
the gateway's upstream connection rely on. The loop is driven by a script of answers and
failures; sleeps are recorded, never slept."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.device.transport import RETRY as LAPTOP
from sync.gateway.upstream.connection import RETRY as UPSTREAM
from sync.protocol.retry import RetryPolicy, retry_after_seconds, send_with_retries


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


class Lost(Exception):
    """A connection failure (transient) in the script."""


class Refused(Exception):
    """A failure that is not worth another try."""


Step = Answer | Exception


@dataclass
class Run:
    sleeps: list[float]
    sent: int
    outcome: Answer | Exception


def run(policy: RetryPolicy, script: list[Step], *, retryable: bool, fraction: float = 0.5) -> Run:
    sleeps: list[float] = []
    steps = iter(script)
    sent = 0

    def send_once() -> Answer:
        nonlocal sent
        sent += 1
        step = next(steps, Answer(200))
        if isinstance(step, Exception):
            raise step
        return step

    try:
        outcome: Answer | Exception = send_with_retries(
            policy,
            send_once,
            retryable=retryable,
            transient=lambda exc: isinstance(exc, Lost),
            sleep=sleeps.append,
            jitter=lambda: fraction,
        )
    except (Lost, Refused) as exc:
        outcome = exc
    return Run(sleeps, sent, outcome)


def busy(seconds: str) -> Answer:
    return Answer(503, {"retry-after": seconds})


# -- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5),
        (" 30 ", 30),
        ("007", 7),
        ("0", 0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),  # a date: the backoff applies
        ("", None),
        (None, None),
        ("-1", None),
        ("1.5", None),
        ("\u00b2", None),  # a superscript two: isdigit() says yes, int() refuses it
        ("\u0663", None),  # an Arabic-Indic three: not ASCII
        ("9" * 5000, 999_999_999),  # clamped, never int() of 5,000 digits
    ],
)
def test_retry_after_counts_only_whole_seconds_in_ascii_digits(
    value: str | None, seconds: int | None
) -> None:
    assert retry_after_seconds(value) == seconds


@given(st.text(max_size=40))
def test_any_retry_after_is_read_without_error_and_within_bounds(value: str) -> None:
    seconds = retry_after_seconds(value)
    assert seconds is None or 0 <= seconds <= 999_999_999
    if seconds is not None:
        assert int(value.strip()) == seconds or seconds == 999_999_999


@pytest.mark.parametrize("policy", [LAPTOP, UPSTREAM], ids=["laptop", "upstream"])
@pytest.mark.parametrize("odd", ["\u00b2", "\u0663", "1" * 5000])
def test_a_malformed_retry_after_never_breaks_a_request(policy: RetryPolicy, odd: str) -> None:
    """Before the shared loop, the laptop's transport passed ``"²"`` to int() (ValueError out
    of a sync) and both ends raised on 5,000 digits."""
    done = run(policy, [busy(odd), busy(odd), busy(odd)], retryable=True)
    assert isinstance(done.outcome, Answer)
    assert all(s <= policy.max_retry_after_s * (1 + policy.jitter) for s in done.sleeps)


# -- the loop --------------------------------------------------------------------------------


def test_a_request_not_retryable_is_sent_once_whatever_comes_back() -> None:
    for step in (Answer(503), Lost(), busy("1")):
        done = run(LAPTOP, [step], retryable=False)
        assert done.sent == 1 and done.sleeps == []


def test_the_laptop_waits_out_a_busy_gateway_within_its_budget_without_using_attempts() -> None:
    done = run(LAPTOP, [busy("2")] * 500, retryable=True, fraction=0.5)
    each = 2.0 * (1 + LAPTOP.jitter * 0.5)
    assert done.sleeps == [each] * int(120.0 // each)
    assert isinstance(done.outcome, Answer) and done.outcome.status == 503


def test_the_upstream_counts_a_busy_answer_as_an_attempt() -> None:
    done = run(UPSTREAM, [busy("2")] * 10, retryable=True)
    assert done.sleeps == [2.0, 2.0] and done.sent == UPSTREAM.max_attempts


def test_a_retry_after_longer_than_allowed_is_answered_at_once() -> None:
    for policy in (LAPTOP, UPSTREAM):
        ask = str(policy.max_retry_after_s + 1)
        done = run(policy, [busy(ask), Answer(200)], retryable=True)
        assert done.sent == 1 and done.sleeps == []


def test_failures_not_transient_are_raised_at_once_and_transient_ones_after_the_attempts() -> None:
    refused = run(UPSTREAM, [Refused()], retryable=True)
    assert isinstance(refused.outcome, Refused) and refused.sent == 1
    lost = run(UPSTREAM, [Lost()] * 5, retryable=True)
    assert isinstance(lost.outcome, Lost) and lost.sent == 3 and lost.sleeps == [0.5, 1.0]


steps = st.one_of(
    st.just(Lost()),
    st.just(Refused()),
    st.sampled_from([200, 201, 400, 404, 412, 429, 500, 502, 503, 504]).map(Answer),
    st.builds(
        lambda status, after: Answer(status, {"retry-after": after}),
        st.sampled_from([429, 502, 503, 504]),
        st.one_of(
            st.integers(0, 200).map(str),
            st.sampled_from(["", "soon", "Wed, 21 Oct 2026 07:28:00 GMT", " 3 "]),
        ),
    ),
)


@given(
    policy=st.sampled_from([LAPTOP, UPSTREAM]),
    script=st.lists(steps, max_size=80),
    retryable=st.booleans(),
    fraction=st.floats(-1.0, 2.0),
)
def test_every_run_keeps_the_policys_bounds(
    policy: RetryPolicy, script: list[Step], retryable: bool, fraction: float
) -> None:
    done = run(policy, script, retryable=retryable, fraction=fraction)
    assert len(done.sleeps) == done.sent - 1  # a wait before every resend, none after the last
    if not retryable:
        assert done.sent == 1
    spread = 1 + policy.jitter
    for wait in done.sleeps:
        assert policy.backoff_base_s <= wait
        assert wait <= max(
            policy.backoff(policy.max_attempts, 1.0), policy.max_retry_after_s * spread
        )
    resends = script[: done.sent - 1]
    busy_waits = [s for s in resends if isinstance(s, Answer) and policy.asks_to_wait(s)]
    assert done.sent - len(busy_waits) <= policy.max_attempts
    if policy.max_busy_wait_s is not None:
        assert sum(w for s, w in zip(resends, done.sleeps, strict=True) if s in busy_waits) <= (
            policy.max_busy_wait_s
        )
    expected = script[done.sent - 1] if done.sent <= len(script) else Answer(200)
    assert done.outcome is expected or done.outcome == expected


# -- the same behaviour as the two loops it replaced ------------------------------------------


def laptop_before(script: list[Step], retryable: bool, fraction: float) -> Run:
    """sync/device/transport.py's loop at 37270c8, over the same script."""
    sleeps: list[float] = []
    steps_ = iter(script)
    sent = 0

    def delay_of(attempt: int, retry_after: str | None) -> float | None:
        delay = 0.5 * 2 ** (attempt - 1)
        if retry_after is not None and retry_after.strip().isdigit():
            asked = int(retry_after.strip())
            if asked > 30:
                return None
            delay = max(delay, float(asked))
        return delay * (1 + 0.5 * min(max(fraction, 0.0), 1.0))

    attempts = 3 if retryable else 1
    attempt, busy_waited = 1, 0.0
    while True:
        sent += 1
        step = next(steps_, Answer(200))
        if isinstance(step, Exception):
            if attempt < attempts and isinstance(step, Lost):
                sleeps.append(0.5 * 2 ** (attempt - 1) * (1 + 0.5 * min(max(fraction, 0.0), 1.0)))
                attempt += 1
                continue
            return Run(sleeps, sent, step)
        if not retryable or step.status not in {502, 503, 504}:
            return Run(sleeps, sent, step)
        retry_after = step.headers.get("retry-after")
        if step.status == 503 and retry_after is not None and retry_after.strip().isdigit():
            delay = delay_of(1, retry_after)
            if delay is None or busy_waited + delay > 120.0:
                return Run(sleeps, sent, step)
            busy_waited += delay
            sleeps.append(delay)
            continue
        if attempt >= attempts:
            return Run(sleeps, sent, step)
        delay = delay_of(attempt, retry_after)
        if delay is None:
            return Run(sleeps, sent, step)
        sleeps.append(delay)
        attempt += 1


def upstream_before(script: list[Step], retryable: bool) -> Run:
    """sync/gateway/upstream/connection.py's loop at 37270c8, over the same script."""
    sleeps: list[float] = []
    steps_ = iter(script)
    sent = 0
    attempts = 3 if retryable else 1
    for attempt in range(1, attempts + 1):
        sent += 1
        step = next(steps_, Answer(200))
        if isinstance(step, Exception):
            if attempt < attempts and isinstance(step, Lost):
                sleeps.append(0.5 * 2 ** (attempt - 1))
                continue
            return Run(sleeps, sent, step)
        if attempt < attempts and step.status in {429, 502, 503, 504}:
            delay = 0.5 * 2 ** (attempt - 1)
            asked = step.headers.get("retry-after", "").strip()
            if asked.isdigit():
                if int(asked) > 60:
                    return Run(sleeps, sent, step)
                delay = max(delay, float(asked))
            sleeps.append(delay)
            continue
        return Run(sleeps, sent, step)
    raise AssertionError("unreachable")


@given(
    script=st.lists(steps, max_size=80),
    retryable=st.booleans(),
    fraction=st.floats(0.0, 1.0),
)
def test_the_shared_loop_behaves_as_each_loop_it_replaced(
    script: list[Step], retryable: bool, fraction: float
) -> None:
    for policy, before in (
        (LAPTOP, laptop_before),
        (UPSTREAM, lambda s, r, f: upstream_before(s, r)),
    ):
        now = run(policy, script, retryable=retryable, fraction=fraction)
        then = before(script, retryable, fraction)
        assert (now.sent, now.sleeps) == (then.sent, then.sleeps)
        assert now.outcome is then.outcome or now.outcome == then.outcome
