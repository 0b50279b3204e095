"""Adaptive admission: is caching a statement shape worth it?

Per statement shape (the plan digest, the fingerprint of the per-statement
stats) this process keeps exponentially weighted averages of:

- ``p``: the hit ratio of its *warm* lookups (those that found an entry: a hit,
  or an entry a write made stale), averaged over the last ``P_SECONDS`` (or the
  last ~``min_samples`` lookups if they span longer); and ``c``, the share of
  *cold* ones (a key never stored: the price of a first store, which says
  nothing of the writes). A stale entry stored before the shape was last turned
  away (``RENEW``) is neither: it feeds the costs only;
- ``hit``: what a hit costs (from the lookup to the Result);
- ``miss``: what a lookup that did not hit costs (lookup + query + store);
- ``uncached``: what the query costs without the cache, as ``exec + fetch``:
  ``exec`` is the time to execute it (misses, and one skipped call in
  ``TIME_EVERY``, both measure it), ``fetch`` the time to read its rows into
  objects (misses only; a bypassed run hands the unread result to the caller).

Each cost is kept twice: in wall time, and in this thread's CPU time (one call
in ``CPU_EVERY`` reads the CPU clock, a system call).

The expected saving per call is ``p * (uncached - hit) - (1 - p) * (miss -
uncached)``. Cold misses are counted in epochs of ``COLD_EPOCH``; when more
than ``COLD_SHARE`` of the lookups of an epoch were cold and that share did not
fall by ``COLD_FALL`` from the epoch before, its keys rarely come back
(parameters that do not repeat: a shape storing a bounded set of keys is cold
at first, less with every epoch), and the cold share counts too: ``(1 - c) *
that - c * (miss - uncached)``; the shape is then judged even before
``min_samples`` warm lookups. The verdict adds the saving in wall time and the
saving in CPU, each as a share of the uncached call's (``Shape.worth``): under
load a process is bound by its CPU, idle by its waits. Once ``min_samples``
warm lookups were seen (or the cold ones count) and the verdict is negative,
the shape is *not worth it*: its calls skip the lookup and the store and run
the query as they would without the cache. Now and then (after ``probe_calls`` skipped calls or
``probe_seconds``, whichever first, both doubled after each trial that did not
pay -- unless its hit ratio beat the previous one's by ``WARMING``: the shape's
entries are being stored -- up to ``MAX_BACKOFF`` times) a *trial* lets
``min_samples`` lookups through the cache again, with a fresh hit ratio; the
shape is admitted again if the verdict turned positive.

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
#: one call in this many is timed on the thread's CPU clock as well as the wall clock
CPU_EVERY = 4
#: what a lookup that did not hit found (Shape.missed): an entry made stale by a write
#: (WARM), nothing stored for its key (COLD), or an entry stored before the shape was
#: last turned away (RENEW: written while the shape was not looking, so it says nothing
#: of the write rate now; like a cold key, it must be stored again)
WARM, COLD, RENEW = 0, 1, 2
#: the hit ratio of warm lookups averages over the last P_SECONDS, or over the last
#: ~min_samples lookups if they span longer: a burst of invalidations (a bulk update:
#: every entry stale once, then stored again) is a short dip of a busy shape's hit
#: ratio, which a count-based window of 50 lookups took for a lasting write rate
P_SECONDS = 30.0
#: cold misses (keys never stored) are counted in epochs of this many; they count
#: against a shape when more than COLD_SHARE of an epoch's lookups were cold and that
#: share did not fall by COLD_FALL from the epoch before (keys that rarely come back;
#: a shape storing a bounded set of keys is cold at first, less with every epoch)
COLD_EPOCH = 1000
COLD_SHARE = 0.5
COLD_FALL = 0.05
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
        "__weakref__", "backoff", "c", "ccount", "colds", "cshare", "e", "ec", "en", "f",
        "fc", "h", "hc", "kc", "ke", "kec", "kf", "kfc", "kh", "khc", "km", "kmc", "kp", "kw",
        "left", "m", "mc", "mode", "p", "probe_at", "pt", "since", "state", "tick", "trial",
        "tried",
    )  # fmt: skip

    def __init__(self) -> None:
        self.state = ADMITTED
        #: the mode of the last call (a pin, or "adaptive"), for the stats
        self.mode = "adaptive"
        #: p: the hit ratio of warm lookups; c: the share of cold ones among all lookups
        self.p = self.c = 0.0
        #: when p last took a sample (monotonic)
        self.pt = time.monotonic()
        #: wall-clock averages (h, m, e, f) and their CPU twins (hc, mc, ec, fc)
        self.h = self.m = self.e = self.f = 0.0
        self.hc = self.mc = self.ec = self.fc = 0.0
        #: samples behind each average (1/k weights until the window is full)
        self.kp = self.kc = self.kh = self.km = self.ke = self.kf = 0
        self.khc = self.kmc = self.kec = self.kfc = 0
        #: warm lookups: those that found an entry (a hit, or one made stale by a write);
        #: a shape is judged only after min_samples of them
        self.kw = 0
        #: cold misses seen in all, lookups in the current cold epoch, the cold share of
        #: the last epoch (-1.0: none yet), and whether cold lookups count (COLD_EPOCH)
        self.colds = self.en = 0
        self.cshare = -1.0
        self.ccount = False
        #: counts calls: one in CPU_EVERY is timed in CPU too
        self.tick = 0
        #: rejected: calls to skip before the next trial, and its time (monotonic)
        self.left = 0
        self.probe_at = 0.0
        #: the probe interval's multiplier (doubles after a trial that did not pay)
        self.backoff = 1
        #: probing: lookups left in the trial
        self.trial = 0
        #: the hit ratio when the shape was last turned away, and when (wall clock, as
        #: entries' ``created``; 0.0: never)
        self.tried = 0.0
        self.since = 0.0

    # -------------------------------------------------------- estimates

    @property
    def uncached(self) -> float | None:
        return self.e + self.f if self.ke and self.kf else None

    @property
    def uncached_cpu(self) -> float | None:
        return self.ec + self.fc if self.kec and self.kfc else None

    def cpu_clock(self) -> float:
        """The thread's CPU clock for one call in CPU_EVERY, else -1.0 (not timed: reading
        it is a system call, ~0.7 us)."""
        t = self.tick = (self.tick + 1) % CPU_EVERY
        return -1.0 if t else time.thread_time()

    def _saving(self, h: float, kh: int, m: float, km: int, u: float) -> float:
        """Expected saving per call for costs ``h`` (hit), ``m`` (miss), ``u`` (uncached).

        Warm lookups hit ``p`` of the time. Cold ones (a key never stored) are the
        price of a first store, held against the shape only while its keys do not
        come back (``ccount``, COLD_EPOCH): a shape whose entries are being stored is not
        turned away for being cold (turned away, it would store nothing and stay
        cold)."""
        p = self.p
        warm = 0.0
        if self.kp:  # evidence from warm lookups
            warm = (p * (u - h) if kh else 0.0) - ((1.0 - p) * (m - u) if km else 0.0)
        if not self.ccount:
            return warm
        c = self.c
        return (1.0 - c) * warm - (c * (m - u) if km else 0.0)

    def saving(self) -> float | None:
        """Expected wall-clock seconds saved per call by looking up, or None without evidence."""
        if not (self.kp or self.ccount) or not self.kf or not self.ke:
            return None
        return self._saving(self.h, self.kh, self.m, self.km, self.e + self.f)

    def saving_cpu(self) -> float | None:
        """Expected CPU seconds of this thread saved per call, or None without evidence."""
        uc = self.uncached_cpu
        if not (self.kp or self.ccount) or uc is None or not (self.khc or self.kmc):
            return None
        return self._saving(self.hc, self.khc, self.mc, self.kmc, uc)

    def worth(self) -> float | None:
        """The verdict: > 0 worth it, < 0 not, None without evidence.

        The saving in wall time and in the thread's CPU, each as a share of the
        uncached call's: a process under load is bound by its CPU (a hit that frees
        the CPU pays there, however long it waits on Redis, and a wall clock read
        among busy threads measures their turns at the GIL too); an idle one by its
        waits (a hit that spares a 20 ms query pays even if it costs a little CPU).
        """
        s = self.saving()
        if s is None:
            return None
        sc = self.saving_cpu()
        if sc is None:
            return s
        u = self.e + self.f
        uc = self.ec + self.fc
        return (s / u if u > 0 else 0.0) + (sc / uc if uc > 0 else 0.0)

    def describe(self) -> str:
        """The state, as the stats show it."""
        if self.mode != "adaptive":
            return self.mode
        return STATE_NAMES[self.state]

    def summary(self) -> dict[str, Any]:
        """The averages, in microseconds, for the stats."""
        s = self.saving()
        sc = self.saving_cpu()
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
            "saving_cpu_us": us(sc),
        }

    # -------------------------------------------------------- samples

    def hit(self, seconds: float, policy: Policy, served: int = 1,
            cpu: float | None = None) -> None:  # fmt: skip
        """A hit that cost ``seconds`` (``cpu`` of them on this thread's CPU, if timed).
        A batch that answered ``served`` calls at once (a lazy load and its siblings'
        prefetched targets) counts as that many hits (at most a window's worth) of
        ``seconds / served`` each."""
        if served > 1:
            seconds /= served
            if cpu is not None:
                cpu /= served
        self.en += served
        tw = self._p_time(served)
        for _ in range(min(served, policy.window)):
            k = self.kh = self.kh + 1
            self.h = _mean(self.h, k, seconds, policy)
            if cpu is not None:
                k = self.khc = self.khc + 1
                self.hc = _mean(self.hc, k, cpu, policy)
            k = self.kp = self.kp + 1
            self.p += _p_weight(k, tw, policy) * (1.0 - self.p)
            k = self.kc = self.kc + 1
            self.c -= (policy.alpha if k > policy.window else 1.0 / k) * self.c
            self.kw += 1
            if self.kw >= policy.min_samples or self.state == PROBING:
                self._decide(policy)

    def _p_time(self, served: int) -> float:
        """The weight the time since the last warm lookup gives each of ``served``
        new ones in ``p`` (P_SECONDS: the hit ratio averages over that long)."""
        now = time.monotonic()
        dt, self.pt = now - self.pt, now
        return dt / (P_SECONDS * served)

    def missed(self, seconds: float, policy: Policy, cpu: float | None = None,
               cold: int = WARM) -> None:  # fmt: skip
        """A lookup that did not hit cost ``seconds`` in all (lookup, query, store);
        ``cold``: what it found (WARM, COLD, RENEW)."""
        k = self.km = self.km + 1
        self.m = _mean(self.m, k, seconds, policy)
        if cpu is not None:
            k = self.kmc = self.kmc + 1
            self.mc = _mean(self.mc, k, cpu, policy)
        self.en += 1
        if cold == RENEW:  # its cost only: neither warm evidence nor a new key
            if self.state == PROBING:
                self._decide(policy)
            return
        k = self.kc = self.kc + 1
        a = policy.alpha if k > policy.window else 1.0 / k
        if cold:  # nothing was stored for its key yet: it tells nothing of writes
            n = self.colds = self.colds + 1
            if not n % COLD_EPOCH:  # an epoch ends
                share = COLD_EPOCH / self.en
                prev = self.cshare  # the first epoch alone never counts
                self.ccount = prev >= 0 and share > COLD_SHARE and share > prev * (1 - COLD_FALL)
                self.cshare = share
                self.en = 0
            self.c += a * (1.0 - self.c)
        else:
            self.c -= a * self.c
            k = self.kp = self.kp + 1
            self.p -= _p_weight(k, self._p_time(1), policy) * self.p
            self.kw += 1
        if self.kw >= policy.min_samples or self.state == PROBING or self.ccount:
            self._decide(policy)

    def ran(self, execute: float, fetch: float | None, policy: Policy,
            cpu: tuple[float, float | None] | None = None) -> None:  # fmt: skip
        """The query ran: ``execute`` seconds, then ``fetch`` reading its rows (a miss);
        ``cpu``: the same two, on this thread's CPU, if timed."""
        k = self.ke = self.ke + 1
        self.e = _mean(self.e, k, execute, policy)
        if fetch is not None:
            k = self.kf = self.kf + 1
            self.f = _mean(self.f, k, fetch, policy)
        if cpu is not None:
            k = self.kec = self.kec + 1
            self.ec = _mean(self.ec, k, cpu[0], policy)
            if cpu[1] is not None:
                k = self.kfc = self.kfc + 1
                self.fc = _mean(self.fc, k, cpu[1], policy)

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
        self.kp = self.kc = 0
        return True

    def _decide(self, policy: Policy) -> None:
        state = self.state
        if state == PROBING:
            self.trial -= 1
            if self.trial > 0:
                return
            s = self.worth()
            if s is not None and s < 0:
                if self.p <= self.tried + WARMING:  # not warming up: wait longer
                    self.backoff = min(self.backoff * 2, MAX_BACKOFF)
                self._reject(policy)
            else:
                self.state = ADMITTED
                self.backoff = 1
            return
        if state == ADMITTED:
            s = self.worth()
            if s is not None and s < 0:
                self._reject(policy)

    def _reject(self, policy: Policy) -> None:
        self.tried = self.p
        self.since = time.time()
        self.left = policy.probe_calls * self.backoff
        self.probe_at = time.monotonic() + policy.probe_seconds * self.backoff
        self.state = REJECTED


def _mean(avg: float, k: int, sample: float, policy: Policy) -> float:
    """``avg`` moved towards the ``k``-th ``sample`` (1/k weights until the window is
    full, then ``policy.alpha``), the sample clipped to CLIP times the average once
    CLIP_AFTER were seen (a stall: a GC pause, a descheduled thread)."""
    if k > CLIP_AFTER and sample > CLIP * avg:
        sample = CLIP * avg
    return avg + (policy.alpha if k > policy.window else 1.0 / k) * (sample - avg)


def _p_weight(k: int, tw: float, policy: Policy) -> float:
    """The weight of the ``k``-th sample of ``p``: 1/k until the window is full, then
    the time-based ``tw`` but at most ``policy.alpha``."""
    if k <= policy.window:
        return 1.0 / k
    return tw if tw < policy.alpha else policy.alpha
