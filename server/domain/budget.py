"""A host's budget, without I/O: how its rate backs off and comes back, and how it is shared.

The back-off, per host, from what the fleet's clients report (each gate folds its clients'
reports into the host's row about twice a second, server/budgets.py):

- **Throttling** halves the effective rate (at most once a second, never below 2 % of the
  budget): a 429, a 503 that says Retry-After, a block page, or errors (5xx, timeouts, resets)
  above the noise threshold. The rate the trouble came at is remembered (`ceiling`): healthy
  answers bring the rate back by 5 % of the budget per second up to 80 % of it, hold it there
  for HOLD_SECONDS, then creep on by 0.5 % of the budget per second; after QUIET_SECONDS
  without throttling the ceiling is forgotten and the rate grows at 5 % a second again, up to
  the budget. A rate limiter is found and kept just under; it is never a ratchet.
- **Noise**: errors at most NOISE_RATE (5 %) of the host's answers are not throttling. The
  answers are counted with a half-life of WINDOW_SECONDS (30 s), from at least MIN_ANSWERS
  (20), and the errors are over the threshold only when more than two standard deviations
  past 5 % of them (so 3 errors of the first 20 answers count, 1 does not). Each noisy report
  costs the rate 5 % of the budget (once a second), never below 80 % of the budget, and
  doesn't touch the ceiling: healthy answers bring it back to the budget within seconds.

Shares: each budget (a host's, or a host's for the clients behind one egress address) is cut
into slices, one per gate, each gate's in proportion to its clients, but never more than the
other gates' slices leave; a gate cuts its slice the same way among its clients. See
server/budgets.py for why the grants held at once never sum past the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

DECREASE = 0.5
INCREASE = 0.05  # of the budget, per second of healthy answers, well below the last trouble
NEAR = 0.005  # the same, near or above the rate the last trouble came at (after HOLD_SECONDS)
BELOW = 0.8  # of the rate the last trouble came at: where the fast increase stops
HOLD_SECONDS = 30.0
QUIET_SECONDS = 120.0  # without throttling for this long, the last trouble's rate is forgotten
FLOOR = 0.02  # of the budget
WINDOW_SECONDS = 30.0  # half-life of the answers an error rate is judged over
MIN_ANSWERS = 20.0
NOISE_RATE = 0.05
NOISE_COST = 0.2  # of the budget: the most sporadic errors take from a host
NOISE_STEP = 0.05  # of the budget, per noisy report


@dataclass(frozen=True)
class Seen:
    """What clients saw of a host since it was last counted."""

    ok: int = 0
    throttled: int = 0
    errors: int = 0
    blocked: int = 0

    def __add__(self, other: Seen) -> Seen:
        return Seen(
            self.ok + other.ok,
            self.throttled + other.throttled,
            self.errors + other.errors,
            self.blocked + other.blocked,
        )

    @property
    def answers(self) -> int:
        return self.ok + self.throttled + self.errors + self.blocked


@dataclass(frozen=True)
class Rate:
    """A host's back-off state, as its row holds it."""

    effective: float | None
    ceiling: float | None
    troubled_at: datetime | None
    noisy_at: datetime | None
    adjusted_at: datetime
    answers: float
    errors: float
    counted_at: datetime


def over_noise(answers: float, errors: float) -> bool:
    """Whether `errors` of `answers` are more than sporadic: past NOISE_RATE by two standard
    deviations, over at least MIN_ANSWERS."""
    n = max(answers, MIN_ANSWERS)
    return errors > NOISE_RATE * n + 2.0 * math.sqrt(NOISE_RATE * (1 - NOISE_RATE) * n)


def adjust(budget: float | None, state: Rate, now: datetime, seen: Seen) -> tuple[Rate, bool]:
    """The host's state after what was seen, and whether it was throttling."""
    if budget is None:
        return replace(state, effective=None, ceiling=None, adjusted_at=now, counted_at=now), False
    decay = 0.5 ** (max(0.0, (now - state.counted_at).total_seconds()) / WINDOW_SECONDS)
    counted = replace(
        state,
        answers=state.answers * decay + seen.answers,
        errors=state.errors * decay + seen.errors,
        counted_at=now,
    )
    current = min(budget, state.effective if state.effective is not None else budget)
    counted = replace(counted, effective=current)
    throttled = bool(seen.throttled or seen.blocked) or (
        seen.errors > 0 and over_noise(counted.answers, counted.errors)
    )
    if throttled:
        if state.troubled_at is not None and (now - state.troubled_at).total_seconds() < 1.0:
            return counted, True  # one halving a second, however many report it
        lowered = max(budget * FLOOR, current * DECREASE)
        return replace(counted, effective=lowered, ceiling=current, troubled_at=now, adjusted_at=now), True
    if seen.errors:
        if state.noisy_at is not None and (now - state.noisy_at).total_seconds() < 1.0:
            return counted, False
        floor = budget * (1 - NOISE_COST)
        lowered = current if current <= floor else max(floor, current - budget * NOISE_STEP)
        return replace(counted, effective=lowered, noisy_at=now, adjusted_at=now), False
    if not seen.ok:
        return counted, False
    return _grown(budget, state, counted, current, now), False


def _grown(budget: float, state: Rate, counted: Rate, current: float, now: datetime) -> Rate:
    """Healthy answers: the rate grows back towards the budget (see the module's docstring)."""
    elapsed = (now - state.adjusted_at).total_seconds()
    ceiling = state.ceiling
    since = None if state.troubled_at is None else (now - state.troubled_at).total_seconds()
    if ceiling is not None and (since is None or since >= QUIET_SECONDS):
        ceiling = None
    grown = current + budget * INCREASE * min(elapsed, 10.0)
    if ceiling is not None and since is not None:
        if since < HOLD_SECONDS:
            grown = max(current, min(grown, BELOW * ceiling))
        elif current >= BELOW * ceiling:
            grown = current + budget * NEAR * min(elapsed, 10.0)
    return replace(counted, effective=min(budget, grown), ceiling=ceiling, adjusted_at=now)


def share(total: float | None, clients: int, others: float) -> float | None:
    """An equal share of `total` among `clients`, but no more than the others' grants leave."""
    return None if total is None else max(0.0, min(total / max(1, clients), total - others))


def portion(total: float | None, mine: int, clients: int, others: float) -> float | None:
    """A gate's slice: `total` in proportion to its `mine` of `clients`, within what the other
    gates' slices leave."""
    if total is None:
        return None
    return max(0.0, min(total * mine / max(1, clients), total - others))


def slots(total: float | None, clients: int, others: int) -> int | None:
    """An equal share of `total` connections among `clients`, within what the others' grants
    leave (0 when they hold them all: the fleet's "one each" is decided by whole slices)."""
    if total is None:
        return None
    return max(0, min(int(total) // max(1, clients), int(total) - int(others)))


def slot_portion(total: float | None, mine: int, clients: int, others: int) -> int | None:
    """A gate's slice of connections; with more clients than connections, one for each of its own."""
    if total is None:
        return None
    if clients > total:
        return mine
    return max(0, min(int(total) * mine // max(1, clients), int(total) - int(others)))


def lowest(value: float | None, cap: float | None) -> float | None:
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


def budget(value: float | None, default: float) -> float | None:
    """A host's own budget, else the gate's default; 0 or less: no limit (None)."""
    chosen = default if value is None else value
    return chosen if chosen > 0 else None
