"""pytest plugin: run SQLAlchemy's own test suite with every ORM SELECT cached.

Loaded with ``-p tests.peer.plugin`` into a pytest run of SQLAlchemy's source
distribution (``python -m tests.peer`` does that; see ``tests/peer/README.md``).

Options:

``--qc-peer=off|installed|memory|redis``
    ``off`` (default): record outcomes only. ``installed``: install a
    QueryCache on ``sqlalchemy.orm.Session`` but cache nothing (isolates what
    the listeners alone change). ``memory``: every ORM SELECT of every
    session goes through a ``dogpile.cache.memory`` region with the local
    version store. ``redis``: a ``dogpile.cache.redis`` region and Redis
    versions, both on ``--qc-peer-redis-url`` (flushed at start).
``--qc-peer-out=PATH``
    write every test's outcome (and, when caching, its cache counters) as JSON.

How every SELECT is cached: the extension reads ``session.info["cache_region"]``
(SQLAlchemy 2.0 and 2.1). ``Session.info`` is a memoized property whose
initial value is ``{}``; the plugin replaces it, on the ``Session`` class, by
one whose initial value is ``{"cache_region": "default"}``. Every session
(subclasses, sessionmakers, ``scoped_session``, ``AsyncSession``'s sync
session, ``Session(info=...)``, which updates that dict) then starts with the
region set, without an extra event listener and without wrapping
``Session.__init__``.

SQLAlchemy's fixtures remove every listener of some event classes between
tests (``RemoveORMEventsGlobally`` clears all ``SessionEvents``;
``testing.teardown_events``). The plugin checks before each test's setup,
call and teardown that every listener ``install()`` added is still there, and
reinstalls the cache when one is missing (counted in the JSON as
``reinstalled``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import pytest

REGION = "default"
VARIANTS = ("off", "installed", "memory", "redis")
COUNTERS = ("hits", "misses", "stores", "bypassed", "uncacheable", "not_stored", "errors",
            "corrupt", "too_large")  # fmt: skip


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("qc-peer", "sqla_querycache peer run")
    group.addoption("--qc-peer", default="off", choices=VARIANTS,
                    help="cache every ORM SELECT: off, installed (listeners only), memory, redis")  # fmt: skip
    group.addoption("--qc-peer-redis-url", default="redis://127.0.0.1:6379/3",
                    help="Redis for --qc-peer=redis (region and versions); flushed at start")  # fmt: skip
    group.addoption("--qc-peer-out", default=None, help="write per-test outcomes as JSON here")
    group.addoption("--qc-peer-relax-sql", action="store_true", default=False,
                    help="SQL-count / SQL-matching assertions (SQLAsserter.assert_) record their "
                    "failure and let the test go on; a test that then passes is reported "
                    "failed with that message, one that fails reports its next failure")  # fmt: skip


class _LogCapture(logging.Handler):
    """The extension's own warnings (fail-open paths), per test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            try:
                self.records.append(f"{record.levelname}: {record.getMessage()}"[:500])
            except Exception:
                self.records.append(f"{record.levelname}: {record.msg!r}"[:500])


class PeerPlugin:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.variant: str = config.getoption("--qc-peer")
        self.out: str | None = config.getoption("--qc-peer-out")
        self.redis_url: str = config.getoption("--qc-peer-redis-url")
        self.results: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.cache: Any = None
        self.listeners: list[tuple[Any, str, Any]] = []
        self.reinstalls = 0
        self.started = time.time()
        self.log = _LogCapture()
        self._saved_info: Any = None
        self._before: dict[str, int] = {}
        self._reinstalled_now = False
        self.meta: dict[str, Any] = {}
        self.relax: bool = config.getoption("--qc-peer-relax-sql")
        self.relaxed: list[str] = []

    # ------------------------------------------------------------ set-up

    def start(self) -> None:
        import sqlalchemy

        self.meta = {
            "variant": self.variant,
            "sqlalchemy": sqlalchemy.__version__,
            "sqlalchemy_file": sqlalchemy.__file__,
            "python": sys.version.split()[0],
        }
        if self.relax:
            self._relax_sql_assertions()
        if self.variant == "off":
            return
        from dogpile.cache import make_region
        from sqlalchemy.orm import Session

        import sqla_querycache
        from sqla_querycache import QueryCache

        self.meta["sqla_querycache_file"] = sqla_querycache.__file__
        if self.variant == "redis":
            import redis

            client = redis.Redis.from_url(self.redis_url)
            client.flushdb()
            region = make_region().configure(
                "dogpile.cache.redis", arguments={"url": self.redis_url}
            )
            self.cache = QueryCache(regions={REGION: region}, versions=self.redis_url)
            self.meta["redis_url"] = self.redis_url
        else:
            region = make_region().configure("dogpile.cache.memory")
            self.cache = QueryCache(regions={REGION: region})
        self._install()
        logging.getLogger("sqla_querycache").addHandler(self.log)
        if self.variant in ("memory", "redis"):
            self._patch_session_info(Session)

    def _relax_sql_assertions(self) -> None:
        """SQLAsserter.assert_ (behind assert_sql_count, assert_sql_execution,
        assert_statement_count, CountStatements, CompiledSQL...) records instead of raising."""
        from sqlalchemy.testing import assertsql

        real = assertsql.SQLAsserter.assert_
        relaxed = self.relaxed

        def assert_(asserter: Any, *rules: Any) -> None:
            try:
                real(asserter, *rules)
            except AssertionError as err:
                relaxed.append(f"AssertionError: {str(err).splitlines()[0] if str(err) else ''}"[:300])

        assert_.__qualname__ = real.__qualname__
        assertsql.SQLAsserter.assert_ = assert_  # type: ignore[method-assign]

    def _install(self) -> None:
        """``cache.install(Session)``, noting every listener it adds."""
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        added: list[tuple[Any, str, Any]] = []
        real_listen = event.listen

        def listen(target: Any, identifier: str, fn: Any, *args: Any, **kw: Any) -> None:
            added.append((target, identifier, fn))
            real_listen(target, identifier, fn, *args, **kw)

        event.listen = listen  # events.py calls event.listen(...) through the module
        try:
            self.cache.install(Session)
        finally:
            event.listen = real_listen
        self.listeners = added

    def _patch_session_info(self, session_cls: Any) -> None:
        """Every Session's ``info`` starts as ``{"cache_region": "default"}``."""

        class InfoWithRegion:
            """Like SQLAlchemy's memoized ``Session.info``, with the region set."""

            __doc__ = getattr(session_cls.__dict__.get("info"), "__doc__", None)

            def __get__(self, obj: Any, cls: Any = None) -> Any:
                if obj is None:
                    return self
                value = obj.__dict__["info"] = {"cache_region": REGION}
                return value

        self._saved_info = session_cls.__dict__["info"]
        session_cls.info = InfoWithRegion()

    def stop(self) -> None:
        if self._saved_info is not None:
            from sqlalchemy.orm import Session

            Session.info = self._saved_info
        if self.cache is not None:
            try:
                self.meta["stats"] = self.cache.stats()
                self.cache.close()
            except Exception as err:  # the report matters more
                self.meta["close_error"] = repr(err)

    def ensure_installed(self) -> None:
        """Reinstall when a fixture cleared an event class the cache listens on."""
        if self.cache is None:
            return
        from sqlalchemy import event

        try:
            missing = [
                (t, n) for t, n, f in self.listeners if not event.contains(t, n, f)
            ]
        except Exception:
            missing = []
        if missing:
            self.cache.uninstall()
            self._install()
            self.reinstalls += 1
            self._reinstalled_now = True

    # ------------------------------------------------------------ counters

    def _counters(self) -> dict[str, int]:
        if self.cache is None:
            return {}
        total = dict.fromkeys(COUNTERS, 0)
        for stats in self.cache.stats().values():
            for k in COUNTERS:
                total[k] += int(stats.get(k) or 0)
        return total

    # ------------------------------------------------------------ hooks

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: Any) -> Any:
        self._reinstalled_now = False
        self.log.records = []
        self.relaxed.clear()
        self._before = self._counters()
        self.ensure_installed()
        yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: Any) -> Any:
        self.ensure_installed()
        yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: Any, nextitem: Any) -> Any:
        self.ensure_installed()
        yield

    def pytest_runtest_logreport(self, report: Any) -> None:
        nodeid = report.nodeid
        entry = self.results.get(nodeid)
        if entry is None:
            entry = self.results[nodeid] = {"outcome": None, "phase": None, "longrepr": None}
            self.order.append(nodeid)
        when = report.when
        xfail = hasattr(report, "wasxfail")
        if when == "setup":
            if report.failed:
                entry.update(outcome="error", phase="setup")
            elif report.skipped:
                entry.update(outcome="xfailed" if xfail else "skipped", phase="setup")
        elif when == "call":
            if self.relaxed:
                entry["relaxed"] = list(self.relaxed)
            if report.passed and self.relaxed and not xfail:
                # the test passed once its SQL assertions were relaxed: report
                # the first of them as its failure
                entry.update(outcome="failed", phase="call",
                             longrepr="Traceback (most recent call last):\n"
                             "  File \"sqlalchemy/testing/assertsql.py\", line 0, in assert_\n"
                             "    (a SQL assertion, relaxed by qc-peer)\n"
                             + self.relaxed[0] + "\n[relaxed by qc-peer; the test then passed]")  # fmt: skip
                return
            if report.passed:
                entry.update(outcome="xpassed" if xfail else "passed", phase="call")
            elif report.failed:
                entry.update(outcome="failed", phase="call")
            elif report.skipped:
                entry.update(outcome="xfailed" if xfail else "skipped", phase="call")
        elif when == "teardown":
            if report.failed:
                entry["teardown_error"] = True
                if entry["outcome"] in (None, "passed", "xpassed", "skipped"):
                    entry.update(outcome="error", phase="teardown")
            if self.cache is not None:
                after = self._counters()
                entry["cache"] = {
                    k: after[k] - self._before.get(k, 0)
                    for k in COUNTERS
                    if after[k] - self._before.get(k, 0)
                }
                if self.log.records:
                    entry["log"] = sorted(set(self.log.records))[:20]
                if self._reinstalled_now:
                    entry["reinstalled"] = True
        if report.failed or (report.skipped and when != "teardown"):
            text = _longrepr(report)
            if report.failed:
                prev = entry.get("longrepr")
                entry["longrepr"] = (prev + "\n\n---- " + when + " ----\n" + text) if prev else text
            elif not entry.get("longrepr"):
                entry["reason"] = text[-300:]

    def pytest_sessionfinish(self, session: Any, exitstatus: Any) -> None:
        self.stop()
        if not self.out:
            return
        data = {
            "meta": {
                **self.meta,
                "exitstatus": int(exitstatus),
                "seconds": round(time.time() - self.started, 2),
                "reinstalls": self.reinstalls,
                "args": list(session.config.invocation_params.args),
            },
            "tests": {nodeid: self.results[nodeid] for nodeid in self.order},
        }
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=repr)
        os.replace(tmp, self.out)


def _longrepr(report: Any) -> str:
    try:
        text = report.longreprtext
    except Exception:
        text = str(report.longrepr)
    if len(text) > 30000:  # keep the start (the test) and the end (the exception)
        text = text[:8000] + "\n[... cut by qc-peer ...]\n" + text[-20000:]
    return text


_plugin: PeerPlugin | None = None


def pytest_configure(config: Any) -> None:
    global _plugin
    if config.getoption("--qc-peer", default="off") == "off" and not config.getoption(
        "--qc-peer-out", default=None
    ):
        return
    _plugin = PeerPlugin(config)
    config.pluginmanager.register(_plugin, "qc-peer")
    _plugin.start()


def pytest_report_header(config: Any) -> list[str]:
    if _plugin is None:
        return []
    return [f"qc-peer: variant={_plugin.variant} {json.dumps(_plugin.meta, default=repr)}"]
