"""Metrics export: a real /metrics endpoint scraped over HTTP, and OpenTelemetry."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from sqla_querycache import ConfigurationError, FromCache, QueryCache
from sqla_querycache.metrics import PrometheusCollector, instrument_otel

from . import models
from .conftest import memory_region, redis_region

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class App:
    def __init__(self, engine: Any, redis_url: str):
        self.session_class = type("MetricsSession", (Session,), {})
        self.Session = sessionmaker(engine, class_=self.session_class)
        self.cache = QueryCache(
            regions={"default": redis_region(redis_url), "hot": memory_region()},
            versions=redis_url, stats_interval=0,
        ).install(self.session_class)  # fmt: skip

    def run(self) -> None:
        for _ in range(3):  # 1 miss + 2 hits
            with self.Session() as s:
                s.scalars(select(models.Product).options(FromCache())).all()
        with self.Session() as s:
            s.scalars(select(models.Tag).options(FromCache("hot"))).all()
            s.get(models.Tag, 1).label = "renamed"
            s.commit()


@pytest.fixture()
def app(tmp_path: Any, redis_url: str, redis_client: Any) -> Iterator[App]:
    engine = create_engine(f"sqlite:///{tmp_path}/m.db")
    models.Base.metadata.create_all(engine)
    with Session(engine) as s:
        models.populate(s)
    a = App(engine, redis_url)
    yield a
    a.cache.close()
    engine.dispose()


@pytest.mark.parametrize("scope", ["process", "app"])
def test_metrics_endpoint_exposes_the_counters(app: App, scope: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    app.run()
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(app.cache, scope=scope))
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        m = scrape(port)
    finally:
        server.shutdown()
        thread.join(5)
    report = app.cache.report(scope)
    d = report["regions"]["default"]
    region = (("region", "default"),)
    assert m[("sqla_querycache_up", ())] == 1
    assert m[("sqla_querycache_hits_total", region)] == d["hits"] == 2
    assert m[("sqla_querycache_misses_total", region)] == d["misses"] == 1
    assert m[("sqla_querycache_stores_total", region)] == 1
    assert m[("sqla_querycache_hits_total", (("region", "hot"),))] == 0
    assert m[("sqla_querycache_db_seconds_total", region)] == pytest.approx(d["db_seconds"])
    assert m[("sqla_querycache_saved_seconds_total", region)] > 0
    assert m[("sqla_querycache_stored_bytes_total", region)] == d["bytes_stored"] > 0
    assert m[("sqla_querycache_hit_ratio", region)] == pytest.approx(2 / 3, abs=1e-3)
    assert m[("sqla_querycache_table_hits_total", (("table", "product"),))] == 2
    assert m[("sqla_querycache_table_invalidations_total", (("table", "tag"),))] == 1
    (product,) = [s for s in report["statements"] if s["tables"] == ["product"]]
    labels = (("region", "default"), ("statement", product["fingerprint"]))
    assert m[("sqla_querycache_statement_calls_total", labels)] == 3
    info = [k for k in m if k[0] == "sqla_querycache_statement_info"
            and ("statement", product["fingerprint"]) in k[1]]  # fmt: skip
    assert len(info) == 1 and "FROM product" in dict(info[0][1])["sql"]
    assert (("sqla_querycache_processes", ()) in m) == (scope == "app")


def test_a_store_down_scrapes_as_up_0(app: App) -> None:
    import redis
    from prometheus_client import CollectorRegistry, generate_latest

    from sqla_querycache.stats import RedisStatsStore

    registry = CollectorRegistry()
    registry.register(PrometheusCollector(app.cache, scope="app"))
    assert app.cache._app_stats is not None
    good = app.cache._app_stats.store
    app.cache._app_stats.store = RedisStatsStore(redis.Redis(port=1, socket_timeout=0.2), "qc")
    try:
        text = generate_latest(registry).decode()
    finally:
        app.cache._app_stats.store = good
    assert "sqla_querycache_up 0.0" in text and "hits_total" not in text


def test_collector_arguments_are_checked(app: App) -> None:
    with pytest.raises(ConfigurationError, match="scope"):
        PrometheusCollector(app.cache, scope="all")
    with pytest.raises(ConfigurationError, match="statements"):
        PrometheusCollector(app.cache, statements=-1)


def test_opentelemetry_instruments_read_the_same_numbers(app: App) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrument_otel(app.cache, provider.get_meter("test"), statements=5)
    app.run()
    points: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    points[(metric.name, tuple(sorted(p.attributes.items())))] = p.value
    hits = ("sqla_querycache.lookups", (("outcome", "hits"), ("region", "default")))
    assert points[hits] == 2
    assert points[("sqla_querycache.lookups", (("outcome", "misses"), ("region", "default")))] == 1
    assert points[("sqla_querycache.db_time", (("region", "default"),))] > 0
    assert points[("sqla_querycache.table.invalidations", (("table", "tag"),))] == 1
    assert points[("sqla_querycache.hit_ratio", (("region", "default"),))] == pytest.approx(
        2 / 3, abs=1e-3
    )
    calls = [v for (name, _), v in points.items() if name == "sqla_querycache.statement.calls"]
    assert sorted(calls) == [1, 3]
    provider.shutdown()


def test_the_cli_exporter_serves_the_apps_counters(app: App, tmp_path: Any, redis_url: str) -> None:
    """`sqla-querycache exporter` next to the app: a real /metrics of every process's sums."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "qc_exp.py").write_text(
        "from dogpile.cache import make_region\n"
        "from sqla_querycache import QueryCache\n"
        f"cache = QueryCache(regions={{'default': make_region().configure('dogpile.cache.memory'),"
        f" 'hot': make_region().configure('dogpile.cache.memory')}}, versions={redis_url!r})\n"
    )
    app.run()
    app.cache.flush_stats()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(tmp_path)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqla_querycache.cli", "exporter", "--cache", "qc_exp:cache",
         "--port", str(port), "--seconds", "20"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                m = scrape(port)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        region = (("region", "default"),)
        assert m[("sqla_querycache_hits_total", region)] == 2  # the app's, not the exporter's
        assert m[("sqla_querycache_misses_total", region)] == 1
        assert m[("sqla_querycache_processes", ())] == 1
    finally:
        proc.terminate()
        proc.wait(10)
