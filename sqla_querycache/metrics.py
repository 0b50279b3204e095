"""Metrics export: a Prometheus collector and OpenTelemetry instruments.

Both read :meth:`QueryCache.report` -- the same numbers as ``cache.stats()``
and the ``sqla-querycache stats`` command -- when scraped or collected, so
nothing is added to the hit path.

Prometheus (extra ``[prometheus]``)::

    from prometheus_client import REGISTRY, start_http_server
    from sqla_querycache.metrics import PrometheusCollector

    REGISTRY.register(PrometheusCollector(cache))   # this process's counters
    start_http_server(9300)

With several worker processes either let each export its own (``scope=
"process"``, the default: Prometheus sums them with ``sum by (region)``), or
export the app-wide sums (``scope="app"``) from ONE place only -- e.g.
``sqla-querycache exporter --port 9300`` next to the app -- never from every
worker (each would report the whole app).

OpenTelemetry (extra ``[otel]``): :func:`instrument_otel` registers
observable counters and gauges on a meter (the global meter provider's by
default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .exc import ConfigurationError
from .stats import REGION_COUNTERS, Report

if TYPE_CHECKING:
    from .cache import QueryCache

PREFIX = "sqla_querycache"

#: statements exported per scrape (the most called); each is a label value
DEFAULT_STATEMENTS = 50


def _check_scope(scope: str) -> None:
    if scope not in ("process", "app"):
        raise ConfigurationError(f"scope must be 'process' or 'app', got {scope!r}")


class _Reports:
    """One report per ``ttl`` seconds, however many instruments ask for it."""

    def __init__(self, cache: QueryCache, scope: str, ttl: float = 0.5):
        self.cache = cache
        self.scope = scope
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = 0.0
        self._report: Report | None = None

    def get(self) -> Report:
        with self._lock:
            now = time.monotonic()
            if self._report is None or now - self._at > self.ttl:
                self._report = self.cache.report(self.scope)
                self._at = now
            return self._report


# ------------------------------------------------------------------ Prometheus


class PrometheusCollector:
    """A ``prometheus_client`` custom collector of a QueryCache's counters.

    Metrics (``region``, ``table``, ``statement`` labels):

    - ``sqla_querycache_<counter>_total{region}`` for hits, misses, stores,
      bypassed, uncacheable, not_stored, too_large, corrupt, errors
    - ``sqla_querycache_bypassed_by_reason_total{region,reason}``
    - ``sqla_querycache_db_seconds_total{region}`` (database time of misses),
      ``sqla_querycache_saved_seconds_total{region}`` (estimated time saved),
      ``sqla_querycache_stored_bytes_total{region}``,
      ``sqla_querycache_hit_ratio{region}``
    - ``sqla_querycache_table_{hits,misses,invalidations}_total{table}``
    - ``sqla_querycache_statement_{calls,hits,misses}_total{statement,region}``,
      ``sqla_querycache_statement_db_seconds_total{statement,region}`` and
      ``sqla_querycache_statement_info{statement,region,sql}`` (value 1), for
      the ``statements`` most called
    - ``sqla_querycache_processes`` (scope "app": processes that flushed lately)
    - with a near cache, scope "process": ``sqla_querycache_near_reads_total{answer}``
      (``mirror``: sent nothing; ``unknown``, ``lagging``, ``unread``: read from
      Redis, and why), ``sqla_querycache_near_fresh`` (1 while the mirror may
      answer) and ``sqla_querycache_near_beat_lag_seconds`` (the last beat's
      round trip through the push channel)
    - ``sqla_querycache_up``: 0 when the counters could not be read (the
      shared store is down); nothing else is exported then.
    """

    def __init__(
        self, cache: QueryCache, scope: str = "process", statements: int = DEFAULT_STATEMENTS
    ):
        _check_scope(scope)
        if not isinstance(statements, int) or isinstance(statements, bool) or statements < 0:
            raise ConfigurationError(f"statements must be an int >= 0, got {statements!r}")
        try:
            import prometheus_client  # noqa: F401
        except ImportError as err:
            raise ConfigurationError(
                "PrometheusCollector needs prometheus_client: pip install "
                "'sqla_querycache[prometheus]'"
            ) from err
        self.cache = cache
        self.scope = scope
        self.statements = statements

    def describe(self) -> list[Any]:
        return []  # metrics depend on the data: collected at each scrape only

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily(f"{PREFIX}_up", "1 if the cache's counters could be read")
        try:
            report = self.cache.report(self.scope)
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        regions = report["regions"]
        for counter in REGION_COUNTERS:
            m = CounterMetricFamily(f"{PREFIX}_{counter}", f"statements counted as {counter}",
                                    labels=["region"])  # fmt: skip
            for name, r in regions.items():
                m.add_metric([name], r[counter])  # type: ignore[literal-required]
            yield m
        reasons = CounterMetricFamily(f"{PREFIX}_bypassed_by_reason", "bypassed reads by reason",
                                      labels=["region", "reason"])  # fmt: skip
        db = CounterMetricFamily(f"{PREFIX}_db_seconds", "database time of misses",
                                 labels=["region"])  # fmt: skip
        saved = CounterMetricFamily(f"{PREFIX}_saved_seconds",
                                    "estimated database time saved by hits (hits x mean miss time)",
                                    labels=["region"])  # fmt: skip
        nbytes = CounterMetricFamily(f"{PREFIX}_stored_bytes", "bytes of entries stored",
                                     labels=["region"])  # fmt: skip
        ratio = GaugeMetricFamily(f"{PREFIX}_hit_ratio", "hits / (hits + misses)",
                                  labels=["region"])  # fmt: skip
        for name, r in regions.items():
            for reason, n in r["bypass_reasons"].items():
                reasons.add_metric([name, reason], n)
            db.add_metric([name], r["db_seconds"])
            saved.add_metric([name], r["saved_seconds"])
            nbytes.add_metric([name], r["bytes_stored"])
            if r["hit_ratio"] is not None:
                ratio.add_metric([name], r["hit_ratio"])
        yield from (reasons, db, saved, nbytes, ratio)
        tables = report["tables"]
        for key in ("hits", "misses", "invalidations"):
            m = CounterMetricFamily(f"{PREFIX}_table_{key}", f"per table: {key}",
                                    labels=["table"])  # fmt: skip
            for name, t in tables.items():
                m.add_metric([name], t[key])
            yield m
        stmts = report["statements"][: self.statements]
        families = {
            key: CounterMetricFamily(
                f"{PREFIX}_statement_{key}", f"per statement: {key}", labels=["statement", "region"]
            )  # fmt: skip
            for key in ("calls", "hits", "misses", "db_seconds")
        }
        info = GaugeMetricFamily(f"{PREFIX}_statement_info", "a statement's SQL text",
                                 labels=["statement", "region", "sql"])  # fmt: skip
        for s in stmts:
            labels = [s["fingerprint"], s["region"]]
            for key, m in families.items():
                m.add_metric(labels, s[key])  # type: ignore[literal-required]
            info.add_metric([*labels, s["sql"]], 1)
        yield from families.values()
        yield info
        if report["scope"] == "app":
            procs = GaugeMetricFamily(f"{PREFIX}_processes",
                                      "processes that flushed their counters lately")  # fmt: skip
            procs.add_metric([], len(report["processes"]))
            yield procs
        near = getattr(self.cache, "near", None)
        if near is not None and report["scope"] == "process":
            n = near.stats()
            reads = CounterMetricFamily(f"{PREFIX}_near_reads",
                                        "version reads asked of the near cache, by answer",
                                        labels=["answer"])  # fmt: skip
            for answer, key in (("mirror", "hits"), ("unknown", "unknown"),
                                ("lagging", "lagging"), ("unread", "unread")):  # fmt: skip
                reads.add_metric([answer], n[key])
            yield reads
            fresh = GaugeMetricFamily(f"{PREFIX}_near_fresh", "1 while the near cache may answer")
            fresh.add_metric([], 1 if n["fresh"] else 0)
            yield fresh
            if n["lag"] is not None:
                lag = GaugeMetricFamily(
                    f"{PREFIX}_near_beat_lag_seconds",
                    "the last beat's round trip through the push channel",
                )
                lag.add_metric([], n["lag"])
                yield lag


# ------------------------------------------------------------------ OpenTelemetry


def instrument_otel(
    cache: QueryCache, meter: Any = None, scope: str = "process", statements: int = 0
) -> list[Any]:
    """Register observable instruments on ``meter`` (default: the global meter
    provider's ``sqla_querycache`` meter); return them.

    Instruments: ``sqla_querycache.lookups`` (attributes ``region`` and
    ``outcome``: each region counter), ``sqla_querycache.db_time`` and
    ``sqla_querycache.saved_time`` (s, per region), ``sqla_querycache.stored``
    (By, per region), ``sqla_querycache.table.invalidations`` (per table),
    ``sqla_querycache.hit_ratio`` (gauge, per region), and with
    ``statements`` > 0, ``sqla_querycache.statement.calls`` (attributes
    ``statement``, ``region``) for that many statements.
    """
    _check_scope(scope)
    if meter is None:
        try:
            from opentelemetry import metrics as otel_metrics
        except ImportError as err:
            raise ConfigurationError(
                "instrument_otel needs opentelemetry-api: pip install 'sqla_querycache[otel]'"
            ) from err
        meter = otel_metrics.get_meter("sqla_querycache")
    from opentelemetry.metrics import Observation

    reports = _Reports(cache, scope)

    def safe(fn: Any) -> Any:
        def callback(options: Any) -> Iterable[Any]:
            try:
                return list(fn(reports.get()))
            except Exception:  # the shared store is down: nothing this time
                return []

        return callback

    def lookups(r: Report) -> Iterator[Any]:
        for name, row in r["regions"].items():
            for counter in REGION_COUNTERS:
                yield Observation(row[counter], {"region": name, "outcome": counter})  # type: ignore[literal-required]

    def per_region(key: str) -> Any:
        def fn(r: Report) -> Iterator[Any]:
            for name, row in r["regions"].items():
                value = row[key]  # type: ignore[literal-required]
                if value is not None:
                    yield Observation(value, {"region": name})

        return fn

    def invalidations(r: Report) -> Iterator[Any]:
        for name, t in r["tables"].items():
            yield Observation(t["invalidations"], {"table": name})

    def statement_calls(r: Report) -> Iterator[Any]:
        for s in r["statements"][:statements]:
            yield Observation(s["calls"], {"statement": s["fingerprint"], "region": s["region"]})

    db_seconds, saved_seconds = safe(per_region("db_seconds")), safe(per_region("saved_seconds"))
    bytes_stored, hit_ratio = safe(per_region("bytes_stored")), safe(per_region("hit_ratio"))
    out = [
        meter.create_observable_counter(f"{PREFIX}.lookups", callbacks=[safe(lookups)],
                                        description="statements per region and outcome"),
        meter.create_observable_counter(f"{PREFIX}.db_time", callbacks=[db_seconds],
                                        unit="s", description="database time of misses"),
        meter.create_observable_counter(f"{PREFIX}.saved_time",
                                        callbacks=[saved_seconds], unit="s",
                                        description="estimated database time saved by hits"),
        meter.create_observable_counter(f"{PREFIX}.stored", callbacks=[bytes_stored],
                                        unit="By", description="bytes of entries stored"),
        meter.create_observable_counter(f"{PREFIX}.table.invalidations",
                                        callbacks=[safe(invalidations)],
                                        description="writes committed per table"),
        meter.create_observable_gauge(f"{PREFIX}.hit_ratio", callbacks=[hit_ratio],
                                      description="hits / (hits + misses)"),
    ]  # fmt: skip
    if statements:
        out.append(meter.create_observable_counter(
            f"{PREFIX}.statement.calls", callbacks=[safe(statement_calls)],
            description="calls per statement fingerprint"))  # fmt: skip
    return out
