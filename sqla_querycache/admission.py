"""Adaptive admission: is caching a statement shape worth it?

Per statement shape (the plan digest, the fingerprint of the per-statement
stats) this process keeps exponentially weighted averages of:

- ``p``: the hit ratio of its lookups;
- ``hit``: what a hit costs (from the lookup to the Result);
- ``miss``: what a lookup that did not hit costs (lookup + query + store);
- ``uncached``: what the query costs without the cache, as ``exec + fetch``:
  ``exec`` is the time to execute it (misses, and one skipped call in
  ``TIME_EVERY``, both measure it), ``fetch`` the time to read its rows into objects (misses only; a
  bypassed run hands the unread result to the caller).

The expected saving per call is ``p * (uncached - hit) - (1 - p) * (miss -
uncached)``. Once ``min_samples`` *warm* lookups were seen (lookups that found
an entry: a hit, or an entry a write made stale; a cold miss of a key never
stored is the price of a first store and says nothing of the writes) and it is
negative, the shape is *not worth it*: its calls skip the lookup and the store and run the
query as they would without the cache. Now and then (after ``probe_calls``
skipped calls or ``probe_seconds``, whichever first, both doubled after each
trial that did not pay -- unless its hit ratio beat the previous one's by
``WARMING``: the shape's entries are being stored -- up to ``MAX_BACKOFF``
times) a *trial* lets
``min_samples`` lookups through the cache again, with a fresh hit ratio; the
shape is admitted again if the saving turned positive.

Admission only decides whether the cache is consulted: a lookup that runs
still validates the entry against the current versions, and writes
invalidate whatever the state (ARCHITECTURE.md, "Admission").

No lock: the averages are plain float attributes updated in place by the
threads that use the shape; a lost update under contention costs one sample.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import checks
from .exc import ConfigurationError

#: the admission modes (a region's, the QueryCache's, a FromCache's)
MODES = ("adaptive", "always", "never")
#: states of an adaptive shape
ADMITTED, REJECTED, PROBING = 0, 1, 2
STATE_NAMES = {ADMITTED: "admitted", REJECTED: "not worth it", PROBING: "probing"}
#: the probe interval grows at most to this many times the configured one
MAX_BACKOFF = 32
#: a failed trial whose hit ratio beat the last one's by this much is warming up (its
#: keys are being stored): the next trial comes as soon, the wait is not doubled
WARMING = 0.05
#: a cost sample above CLIP times its average (once CLIP_AFTER samples were seen) counts
#: as CLIP times it: one stall of the process (a GC pause, a descheduled thread) cannot
#: turn a shape away on its own, while a lasting change still moves the average
CLIP = 4.0
CLIP_AFTER = 4
#: one skipped call in this many is run and timed by the cache (the uncached estimate);
#: the others are left to the ORM as if the cache were not there
TIME_EVERY = 16
#: bypass reasons (``Stats.bypass``) of admission
NOT_WORTH_IT = "not_worth_it"
PINNED_NEVER = "never"


def check_mode(name: str, value: Any) -> str:
    if value not in MODES or not isinstance(value, str):
        raise ConfigurationError(f"{name} must be one of {', '.join(map(repr, MODES))}, "
                                 f"got {value!r}")  # fmt: skip
    return value


def region_modes(value: Any, regions: Mapping[str, Any]) -> dict[str, str]:
    """``QueryCache(admission=...)``: one mode for every region, or a mapping region ->
    mode (regions not named are adaptive) -> the mode of each region."""
    if isinstance(value, Mapping):
        out = dict.fromkeys(regions, "adaptive")
        for region, mode in value.items():
            if region not in regions:
                raise ConfigurationError(
                    f"admission names a region {region!r} that is not one of {sorted(regions)}"
                )
            out[region] = check_mode(f"admission[{region!r}]", mode)
        return out
    mode = check_mode("admission", value)
    return dict.fromkeys(regions, mode)


class Policy:
    """The thresholds (QueryCache settings), validated at construction."""

    __slots__ = ("alpha", "min_samples", "probe_calls", "probe_seconds", "window")

    def __init__(self, min_samples: int, probe_calls: int, probe_seconds: float):
        self.min_samples = checks.integer("admission_min_samples", min_samples, 1, 1 << 30)
        self.probe_calls = checks.integer("admission_probe_calls", probe_calls, 1, 1 << 30)
        self.probe_seconds = checks.seconds("admission_probe_seconds", probe_seconds,
                                            maximum=86400.0)  # fmt: skip
        #: the averages weigh the last ~min_samples samples (plain means before that)
        self.window = max(min_samples, 2)
        self.alpha = 2.0 / (self.window + 1)


class Shape:
    """One statement shape's admission state and averages (seconds)."""

    __slots__ = (
        "__weakref__", "backoff", "cold", "e", "f", "h", "ke", "kf", "kh", "km", "kp", "kw",
        "left", "m",
        "mode", "p", "probe_at", "state", "trial", "tried",
    )  # fmt: skip

    def __init__(self) -> None:
        self.state = ADMITTED
        #: the mode of the last call (a pin, or "adaptive"), for the stats
        self.mode = "adaptive"
        self.p = self.h = self.m = self.e = self.f = 0.0
        #: samples behind each average (1/k weights until the window is full)
        self.kp = self.kh = self.km = self.ke = self.kf = 0
        #: warm lookups: those that found an entry (a hit, or one made stale by a write);
        #: a shape is judged only after min_samples of them
        self.kw = 0
        #: set by a lookup that found nothing stored, read by the miss that follows
        self.cold = False
        #: rejected: calls to skip before the next trial, and its time (monotonic)
        self.left = 0
        self.probe_at = 0.0
        #: the probe interval's multiplier (doubles after a trial that did not pay)
        self.backoff = 1
        #: probing: lookups left in the trial
        self.trial = 0
        #: the hit ratio when the shape was last turned away
        self.tried = 0.0

    # -------------------------------------------------------- estimates

    @property
    def uncached(self) -> float | None:
        return self.e + self.f if self.ke and self.kf else None

    def saving(self) -> float | None:
        """Expected seconds saved per call by looking up, or None without evidence."""
        if not self.kp or not self.kf or not self.ke:
            return None
        u = self.e + self.f
        p = self.p
        gain = p * (u - self.h) if self.kh else 0.0
        loss = (1.0 - p) * (self.m - u) if self.km else 0.0
        return gain - loss

    def describe(self) -> str:
        """The state, as the stats show it."""
        if self.mode != "adaptive":
            return self.mode
        return STATE_NAMES[self.state]

    def summary(self) -> dict[str, Any]:
        """The averages, in microseconds, for the stats."""
        s = self.saving()
        u = self.uncached

        def us(v: float | None) -> float | None:
            return None if v is None else round(v * 1e6, 1)

        return {
            "admission": self.describe(),
            "admission_hit_ratio": round(self.p, 4) if self.kp else None,
            "hit_us": us(self.h) if self.kh else None,
            "miss_us": us(self.m) if self.km else None,
            "uncached_us": us(u),
            "saving_us": us(s),
        }

    # -------------------------------------------------------- samples

    def hit(self, seconds: float, policy: Policy, served: int = 1) -> None:
        """A hit that cost ``seconds``. A batch that answered ``served`` calls at
        once (a lazy load and its siblings' prefetched targets) counts as that many
        hits (at most a window's worth) of ``seconds / served`` each."""
        if served > 1:
            seconds /= served
        for _ in range(min(served, policy.window)):
            k = self.kh = self.kh + 1
            h = self.h
            if k > CLIP_AFTER and seconds > CLIP * h:  # a stall (GC, a descheduled thread)
                seconds = CLIP * h
            self.h = h + (policy.alpha if k > policy.window else 1.0 / k) * (seconds - h)
            k = self.kp = self.kp + 1
            self.p += (policy.alpha if k > policy.window else 1.0 / k) * (1.0 - self.p)
            self.kw += 1
            if self.kw >= policy.min_samples or self.state == PROBING:
                self._decide(policy)

    def missed(self, seconds: float, policy: Policy) -> None:
        """A lookup that did not hit cost ``seconds`` in all (lookup, query, store)."""
        k = self.km = self.km + 1
        m = self.m
        if k > CLIP_AFTER and seconds > CLIP * m:
            seconds = CLIP * m
        self.m = m + (policy.alpha if k > policy.window else 1.0 / k) * (seconds - m)
        k = self.kp = self.kp + 1
        self.p -= (policy.alpha if k > policy.window else 1.0 / k) * self.p
        if self.cold:  # nothing was stored for its key yet: it tells nothing of writes
            self.cold = False
        else:
            self.kw += 1
        if self.kw >= policy.min_samples or self.state == PROBING:
            self._decide(policy)

    def ran(self, execute: float, fetch: float | None, policy: Policy) -> None:
        """The query ran: ``execute`` seconds, then ``fetch`` reading its rows (a miss)."""
        k = self.ke = self.ke + 1
        e = self.e
        if k > CLIP_AFTER and execute > CLIP * e:
            execute = CLIP * e
        self.e = e + (policy.alpha if k > policy.window else 1.0 / k) * (execute - e)
        if fetch is not None:
            k = self.kf = self.kf + 1
            f = self.f
            if k > CLIP_AFTER and fetch > CLIP * f:
                fetch = CLIP * f
            self.f = f + (policy.alpha if k > policy.window else 1.0 / k) * (fetch - f)

    # -------------------------------------------------------- state machine

    def admit(self, policy: Policy) -> bool:
        """An adaptive call: look up (True), or skip the cache (False)?"""
        if self.state != REJECTED:
            return True
        self.left -= 1
        if self.left > 0 and time.monotonic() < self.probe_at:
            return False
        # a trial: min_samples lookups with a fresh hit ratio
        self.state = PROBING
        self.trial = policy.min_samples
        self.kp = 0
        return True

    def _decide(self, policy: Policy) -> None:
        state = self.state
        if state == PROBING:
            self.trial -= 1
            if self.trial > 0:
                return
            s = self.saving()
            if s is not None and s < 0:
                if self.p <= self.tried + WARMING:  # not warming up: wait longer
                    self.backoff = min(self.backoff * 2, MAX_BACKOFF)
                self._reject(policy)
            else:
                self.state = ADMITTED
                self.backoff = 1
            return
        if state == ADMITTED:
            s = self.saving()
            if s is not None and s < 0:
                self._reject(policy)

    def _reject(self, policy: Policy) -> None:
        self.tried = self.p
        self.left = policy.probe_calls * self.backoff
        self.probe_at = time.monotonic() + policy.probe_seconds * self.backoff
        self.state = REJECTED
