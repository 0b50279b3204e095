"""End-to-end benchmark: the demo shop as a web app, cached against uncached, under load.

Run from the repository root (PostgreSQL and Redis needed)::

    QC_PG_URL=postgresql+psycopg://root@127.0.0.1:5432/test_c \\
    QC_REDIS_URL=redis://127.0.0.1:6379/3 \\
    python -m tests.benchmarks.e2e [--markdown] [--rounds 3] [--seconds 10]

What runs:

- **The app** (``tests/benchmarks/e2e_app.py``): the demo shop of
  ``sqla_querycache.demo`` as a Starlette app with synchronous endpoints, one
  Session per request, served by uvicorn (one worker process) pinned to CPU 0.
  Two servers are started: ``cached`` (a QueryCache on Redis regions and Redis
  versions, ``identity_region`` for ``session.get``) and the baseline
  (``--baseline none``, the default: the same app without any QueryCache, plain
  SQLAlchemy; ``--baseline disabled``: the same app with the QueryCache built
  under ``SQLA_QUERYCACHE_DISABLED=1``). Only one of them is under load at a time.
- **The load**: ``wrk`` (one thread, ``--connections`` connections) pinned to
  CPU 1, with a Lua script that asks for ids with skew (80% of the requests on
  20% of the rows, see ``e2e_pick``) and sends the write (a price update of a
  product, ids skewed the same way) at the mix's ratio. ``wrk`` is installed
  with ``apt-get`` when missing; if that fails, ``oha`` (if on the PATH) is used
  instead: it cannot run a script, so its URLs carry two random numbers from
  which the app's ``/mix`` route picks the request the same way.
- **Workloads** (the read endpoint of a cell): ``category_page`` (50 products),
  ``customer_orders`` (a customer's orders with items, eager graph),
  ``product`` (detail by primary key, ``session.get``), ``revenue_report``
  (GROUP BY). **Mixes**: 0%, 5% and 20% writes.
- **Method**: each cell (workload x mix) runs cached and uncached in turn, the
  order flipped every round, for ``--rounds`` rounds; each run is preceded by a
  ``--warmup`` of the same load (not measured). Figures are medians over the
  rounds; cached/uncached is the ratio of the median req/s (beside it the range
  of the per-round ratios). The hit ratio is hits / (hits + misses + bypassed)
  of the workload's region during the measured run (from the app's ``/_stats``,
  i.e. ``cache.stats()``); for ``product`` it includes the write endpoint's
  ``session.get``. The baseline server does not tell the cached one about its
  writes (with ``--baseline none`` it has no cache), so after a baseline run
  with writes the cached app updates the same products again (same price, one
  ORM flush per 200 rows, not measured): its cache then loses what its own
  writes would have invalidated, no more, no less. Every run must have no failed
  request and no non-2xx response, else the run is reported.
- The database's ``shop_`` tables are recreated and filled by
  ``demo.populate()`` at the start (``--no-populate`` to keep them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import e2e_pick

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ("category_page", "customer_orders", "product", "revenue_report")
LABELS = {
    "category_page": "category page (50 products)",
    "customer_orders": "customer's orders with items (eager graph)",
    "product": "product detail by primary key (session.get)",
    "revenue_report": "revenue report (GROUP BY)",
}
READ_PATHS = {
    "category_page": "/category/%d",
    "customer_orders": "/customer/%d/orders",
    "product": "/product/%d",
    "revenue_report": "/revenue",
}
MIXES = (0.0, 0.05, 0.20)
#: (mixes, workloads, minimum cached/uncached): the issue's goals
GOALS: list[tuple[tuple[float, ...], tuple[str, ...], float]] = [
    (MIXES, WORKLOADS, 0.97),
    ((0.0,), ("category_page", "customer_orders", "revenue_report"), 2.0),
    ((0.0,), ("product",), 1.5),
    ((0.05,), ("product", "category_page"), 1.3),
]


class LoadGeneratorMissing(RuntimeError):
    """Neither wrk nor oha is on the PATH, and wrk could not be installed."""


@dataclass
class Tool:
    kind: str  # "wrk" or "oha"
    path: str
    version: str
    note: str = ""


def _version(path: str, kind: str) -> str:
    try:
        out = subprocess.run([path, "--version"] if kind == "oha" else [path, "-v"],
                             capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return kind
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else kind


def find_load_generator(install: bool = True) -> Tool:
    """wrk (installed with apt-get when missing and ``install``), else oha, else raise."""
    note = ""
    wrk = shutil.which("wrk")
    if wrk is None and install:
        problem = _apt_install("wrk")
        wrk = shutil.which("wrk")
        if wrk is None:
            note = f"wrk could not be installed ({problem}); "
    if wrk is not None:
        return Tool("wrk", wrk, _version(wrk, "wrk"), note)
    oha = shutil.which("oha")
    if oha is not None:
        return Tool("oha", oha, _version(oha, "oha"),
                    note + "falling back to oha (no Lua: the app's /mix route picks the "
                    "requests from two random numbers per URL)")  # fmt: skip
    raise LoadGeneratorMissing(
        f"{note}no load generator: install wrk (apt-get install wrk) or oha"
        if note else "no load generator: wrk and oha are not on the PATH "
        "(install wrk: apt-get install wrk)"
    )  # fmt: skip


def _apt_install(package: str) -> str:
    """Try ``apt-get install -y package`` (after ``apt-get update`` if needed); the problem."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "no apt-get"
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            return "not root and no sudo"
        prefix = [sudo, "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"e2e: {package} not found, installing it with apt-get ...", file=sys.stderr)
    problem = ""
    for step in ([[apt, "install", "-y", "-q", package]],
                 [[apt, "update", "-q"], [apt, "install", "-y", "-q", package]]):  # fmt: skip
        for cmd in step:
            try:
                r = subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=600,
                                   env=env)  # fmt: skip
            except (OSError, subprocess.SubprocessError) as err:
                return f"apt-get failed: {err}"
            if r.returncode != 0:
                lines = (r.stderr or r.stdout).strip().splitlines()
                problem = f"apt-get exited {r.returncode}: {lines[-1] if lines else ''}"
                break
        else:
            return ""
    return problem


# ------------------------------------------------------------------ the load


LUA = r"""
-- generated by tests/benchmarks/e2e.py: skewed ids, writes mixed in at a ratio
local read_path = "%(read_path)s"
local n, hot, stride = %(n)d, %(hot)d, %(stride)d
local pn, phot, pstride = %(pn)d, %(phot)d, %(pstride)d
local hot_share = %(hot_share)r
local write_ratio = %(write_ratio)r
local threads = {}

local function pick(n, hot, stride)
  local rank
  if hot >= n or math.random() < hot_share then
    rank = math.random(0, hot - 1)
  else
    rank = math.random(hot, n - 1)
  end
  return rank * stride %% n + 1
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bad = 0
  math.randomseed(%(seed)d)
end

function request()
  if write_ratio > 0 and math.random() < write_ratio then
    local path = "/product/" .. pick(pn, phot, pstride) .. "/price?cents=" .. math.random(199, 49999)
    return wrk.format("POST", path, nil, "")
  end
  if n > 0 then
    return wrk.format("GET", string.format(read_path, pick(n, hot, stride)))
  end
  return wrk.format("GET", read_path)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local non2xx = 0
  for _, t in ipairs(threads) do
    non2xx = non2xx + t:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
    'E2E_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"errors": %%d, "non2xx": %%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, non2xx))
end
"""


def lua_script(workload: str, write_ratio: float, seed: int = 12) -> str:
    """The wrk script of one cell."""
    s, p = e2e_pick.SPECS[workload], e2e_pick.SPECS["product"]
    return LUA % {
        "read_path": READ_PATHS[workload], "n": s.n, "hot": s.hot, "stride": s.stride,
        "pn": p.n, "phot": p.hot, "pstride": p.stride, "hot_share": e2e_pick.HOT_SHARE,
        "write_ratio": float(write_ratio), "seed": seed,
    }  # fmt: skip


@dataclass
class Run:
    """One load run against one server."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors and timeouts
    non2xx: int
    hit_ratio: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _pinned(cpu: int | None) -> Any:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def run_load(tool: Tool, base: str, workload: str, write_ratio: float, seconds: float,
             connections: int, cpu: int | None, seed: int = 12) -> Run:  # fmt: skip
    """Drive ``base`` for ``seconds``; the figures of the run."""
    duration = max(1, round(seconds))
    if tool.kind == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(lua_script(workload, write_ratio, seed))
        try:
            cmd = [tool.path, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
                   "-s", f.name, base]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                                 preexec_fn=_pinned(cpu))  # fmt: skip
        finally:
            os.unlink(f.name)
        line = next((x for x in out.stdout.splitlines() if x.startswith("E2E_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result (exit {out.returncode}): "
                               f"{out.stdout[-500:]} {out.stderr[-500:]}")  # fmt: skip
        d = json.loads(line[len("E2E_JSON ") :])
        return Run(d["requests"], d["duration_us"] / 1e6, d["p50_us"] / 1e3,
                   d["p99_us"] / 1e3, d["errors"], d["non2xx"])  # fmt: skip
    # oha: the URL carries two random numbers; the app's /mix route picks the request
    ratio = f"{write_ratio:.6f}".replace(".", "\\.")
    url = f"{base}/mix/{workload}/[0-9]{{6}}/[0-9]{{6}}\\?writes={ratio}"
    for json_flag in (["-j"], ["--output-format", "json"]):  # older and newer oha
        cmd = [tool.path, "--no-tui", *json_flag, "--rand-regex-url", "-c", str(connections),
               "-z", f"{duration}s", url]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                             preexec_fn=_pinned(cpu))  # fmt: skip
        if out.returncode == 0 or "argument" not in out.stderr:
            break
    try:
        d = json.loads(out.stdout)
    except ValueError as err:
        raise RuntimeError(
            f"oha printed no JSON (exit {out.returncode}): {out.stderr[-500:]}"
        ) from err
    codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    errors = sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k)
    total = sum(codes.values())
    pct = d["latencyPercentiles"]
    return Run(total, d["summary"]["total"], pct["p50"] * 1e3, pct["p99"] * 1e3, errors,
               sum(v for k, v in codes.items() if not 200 <= k < 300))  # fmt: skip


# ---------------------------------------------------------------- the servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, timeout: float = 10.0, body: bytes | None = None) -> Any:
    data = body if body is not None else b"" if method == "POST" else None
    req = urllib.request.Request(url, method=method, data=data)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class Server:
    mode: str
    base: str
    proc: subprocess.Popen[str]
    log: Path

    def stats(self) -> dict[str, Any]:
        return dict(http("GET", f"{self.base}/_stats")["regions"])


@contextmanager
def server(mode: str, db_url: str, redis_url: str, namespace: str, pool: int,
           cpu: int | None, logdir: Path) -> Iterator[Server]:  # fmt: skip
    """A uvicorn server of the app in ``mode``, pinned to ``cpu``, until the block ends."""
    port = _free_port()
    env = dict(os.environ, QC_E2E_MODE=mode, QC_E2E_DB=db_url, QC_E2E_REDIS=redis_url,
               QC_E2E_NAMESPACE=namespace, QC_E2E_POOL=str(pool),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))  # fmt: skip
    env.pop("SQLA_QUERYCACHE_DISABLED", None)
    log = logdir / f"uvicorn-{mode}.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.benchmarks.e2e_app:app", "--host",
             "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT, text=True,
            preexec_fn=_pinned(cpu),
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the {mode} server exited ({proc.returncode}): "
                                   f"{log.read_text()[-2000:]}")  # fmt: skip
            try:
                if http("GET", f"{base}/_health", timeout=2)["mode"] == mode:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {mode} server did not answer within 60 s")
            time.sleep(0.2)
        yield Server(mode, base, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def replay(plain: Server, cached: Server) -> int:
    """Make the cached app write again what the baseline wrote (it has no cache to tell)."""
    ids = http("GET", f"{plain.base}/_written")
    if ids:
        http("POST", f"{cached.base}/_replay", body=json.dumps(ids).encode(), timeout=120)
    return len(ids)


def lookups(stats: dict[str, Any], region: str) -> tuple[int, int]:
    """(hits, lookups = hits + misses + bypassed) of a region in a ``cache.stats()``."""
    s = stats.get(region) or {}
    hits = int(s.get("hits", 0))
    return hits, hits + int(s.get("misses", 0)) + int(s.get("bypassed", 0))


# ----------------------------------------------------------------- measuring


@dataclass
class Config:
    db_url: str
    redis_url: str
    workloads: tuple[str, ...] = WORKLOADS
    mixes: tuple[float, ...] = MIXES
    rounds: int = 3
    seconds: float = 10.0
    warmup: float = 2.0
    connections: int = 8
    baseline: str = "none"
    populate: bool = True
    install: bool = True


@dataclass
class Cell:
    """Every run of one workload x mix, per mode (``cached``, ``uncached``)."""

    workload: str
    mix: float
    runs: dict[str, list[Run]] = field(default_factory=lambda: {"cached": [], "uncached": []})

    def median(self, mode: str, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs[mode]]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        c, u = self.median("cached", "rps"), self.median("uncached", "rps")
        return c / u if c is not None and u else None

    @property
    def ratio_range(self) -> tuple[float, float] | None:
        pairs = [c.rps / u.rps for c, u in zip(self.runs["cached"], self.runs["uncached"])
                 if u.rps]  # fmt: skip
        return (min(pairs), max(pairs)) if pairs else None

    @property
    def failed(self) -> int:
        return sum(r.errors + r.non2xx for rs in self.runs.values() for r in rs)

    def row(self) -> dict[str, Any]:
        """The cell's figures (medians over its runs)."""
        return {
            "workload": self.workload,
            "writes": self.mix,
            "uncached_rps": self.median("uncached", "rps"),
            "cached_rps": self.median("cached", "rps"),
            "ratio": self.ratio,
            "ratio_range": self.ratio_range,
            "uncached_p50_ms": self.median("uncached", "p50_ms"),
            "cached_p50_ms": self.median("cached", "p50_ms"),
            "uncached_p99_ms": self.median("uncached", "p99_ms"),
            "cached_p99_ms": self.median("cached", "p99_ms"),
            "hit_ratio": self.median("cached", "hit_ratio"),
            "requests": sum(r.requests for rs in self.runs.values() for r in rs),
            "failed": self.failed,
            "rounds": min(len(rs) for rs in self.runs.values()),
        }


def cpus() -> tuple[int | None, int | None]:
    """(server CPU, load generator CPU): the first two this process may use."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if not allowed:
        return None, None
    return allowed[0], allowed[1] if len(allowed) > 1 else allowed[0]


def populate(db_url: str) -> dict[str, int]:
    from sqla_querycache import demo

    engine = demo.make_engine(db_url)
    try:
        return demo.populate(engine)
    finally:
        engine.dispose()


def redis_cleanup(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        for pattern in (f"{namespace}:*", f"{{{namespace}}}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
    finally:
        client.close()


@dataclass
class Measured:
    cells: list[Cell]
    #: responses of the cached app compared with the uncached app's after the runs
    compared: int
    #: the paths whose responses differed (see :func:`compare`)
    differ: list[str]

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.cells)

    @property
    def ok(self) -> bool:
        """Every request answered with a 2xx, and the cached app answered as the uncached."""
        return self.failed == 0 and not self.differ


def measure(cfg: Config, tool: Tool, notes: list[str], progress: Any = None) -> Measured:
    """Start both servers, run every cell ``cfg.rounds`` times, compare the apps' answers."""
    server_cpu, load_cpu = cpus()
    if server_cpu is None:
        notes.append("CPU affinity not available: nothing pinned")
    elif server_cpu == load_cpu:
        notes.append(f"one CPU only: server and load generator both on CPU {server_cpu}")
    else:
        notes.append(f"server pinned to CPU {server_cpu}, load generator to CPU {load_cpu} "
                     "(PostgreSQL and Redis are not pinned)")  # fmt: skip
    if cfg.populate:
        populate(cfg.db_url)
    namespace = f"qce2e{uuid.uuid4().hex[:8]}"
    pool = cfg.connections + 4
    cells = [Cell(w, m) for w in cfg.workloads for m in cfg.mixes]
    baseline = "none" if cfg.baseline == "none" else "disabled"
    with tempfile.TemporaryDirectory(prefix="qc-e2e-") as tmp, \
            server("cached", cfg.db_url, cfg.redis_url, namespace, pool, server_cpu,
                   Path(tmp)) as cached, \
            server(baseline, cfg.db_url, cfg.redis_url, namespace, pool, server_cpu,
                   Path(tmp)) as plain:  # fmt: skip
        try:
            servers = {"cached": cached, "uncached": plain}
            for r in range(cfg.rounds):
                for i, cell in enumerate(cells):
                    order = ("cached", "uncached") if (r + i) % 2 == 0 else ("uncached", "cached")
                    for mode in order:
                        srv = servers[mode]
                        if cfg.warmup > 0:
                            run_load(tool, srv.base, cell.workload, cell.mix, cfg.warmup,
                                     cfg.connections, load_cpu, seed=1000 + r)  # fmt: skip
                        before = cached.stats() if mode == "cached" else None
                        run = run_load(tool, srv.base, cell.workload, cell.mix, cfg.seconds,
                                       cfg.connections, load_cpu, seed=r * 100 + i)  # fmt: skip
                        if before is not None:
                            region = cell.workload
                            h0, n0 = lookups(before, region)
                            h1, n1 = lookups(cached.stats(), region)
                            run.hit_ratio = (h1 - h0) / (n1 - n0) if n1 > n0 else None
                        elif cell.mix > 0 and baseline == "none":
                            # the baseline wrote products the cached app did not see
                            replay(plain, cached)
                        cell.runs[mode].append(run)
                        if progress is not None:
                            progress(r, cell, mode, run)
            compared, differ = compare(cached, plain, cfg.workloads)
        finally:
            redis_cleanup(cfg.redis_url, namespace)
    return Measured(cells, compared, differ)


def compare(cached: Server, plain: Server, workloads: Sequence[str],
            per_workload: int = 10) -> tuple[int, list[str]]:  # fmt: skip
    """GET the same pages (hot and cold ids) from both apps: (compared, paths that differ).

    Each page is asked twice of the cached app (the second answer is a hit when
    cacheable): a cache serving stale rows would make the benchmark flatter itself.
    """
    compared, differ = 0, []
    for w in workloads:
        s = e2e_pick.SPECS[w]
        ids = sorted({e2e_pick.skewed(u, s) for u in
                      range(0, 1_000_000, 1_000_000 // per_workload)}) or [0]  # fmt: skip
        for i in ids:
            path = READ_PATHS[w] % i if s.n else READ_PATHS[w]
            want = http("GET", plain.base + path)
            for _ in range(2):
                compared += 1
                if http("GET", cached.base + path) != want:
                    differ.append(path)
    return compared, differ


# ------------------------------------------------------------------- output


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


HEADERS = ("workload", "writes", "uncached req/s", "cached req/s", "cached/uncached",
           "(per-round range)", "p50 ms uncached / cached", "p99 ms uncached / cached",
           "hit ratio", "requests", "failed")  # fmt: skip


def cells_of(row: dict[str, Any]) -> list[str]:
    rr = row["ratio_range"]
    return [
        row["workload"],
        f"{row['writes']:.0%}",
        _f(row["uncached_rps"], ",.0f"),
        _f(row["cached_rps"], ",.0f"),
        _f(row["ratio"], ".2f"),
        "-" if rr is None else f"{rr[0]:.2f}-{rr[1]:.2f}",
        f"{_f(row['uncached_p50_ms'], '.1f')} / {_f(row['cached_p50_ms'], '.1f')}",
        f"{_f(row['uncached_p99_ms'], '.1f')} / {_f(row['cached_p99_ms'], '.1f')}",
        _pct(row["hit_ratio"]),
        f"{row['requests']:,}",
        str(row["failed"]),
    ]


def evaluate_goals(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float, float, bool]]:
    """(cell, measured, minimum, met) for every goal that applies to a measured cell."""
    out = []
    by = {(r["workload"], r["writes"]): r for r in rows}
    for mixes, workloads, minimum in GOALS:
        for mix in mixes:
            for w in workloads:
                row = by.get((w, mix))
                if row is None or row["ratio"] is None:
                    continue
                out.append((f"{w}, {mix:.0%} writes", row["ratio"], minimum,
                            row["ratio"] >= minimum))  # fmt: skip
    return out


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "-"


def render(rows: Sequence[dict[str, Any]], cfg: Config, tool: Tool, notes: Sequence[str],
           markdown: bool, header: dict[str, str]) -> str:  # fmt: skip
    body = [cells_of(r) for r in rows]
    goals = evaluate_goals(rows)
    lines: list[str] = []
    if markdown:
        lines += ["**End-to-end benchmark**", ""]
        lines += [f"- {k}: {v}" for k, v in header.items()]
        lines += ["", "| " + " | ".join(HEADERS) + " |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        lines += ["| " + " | ".join(c) + " |" for c in body]
        if goals:
            lines += ["", "**Goals** (cached/uncached req/s, medians)", "",
                      "| cell | measured | goal | verdict |", "|---|---:|---:|---:|"]  # fmt: skip
            lines += [f"| {c} | {m:.2f} | >= {g:.2f} | {'PASS' if ok else 'FAIL'} |"
                      for c, m, g, ok in goals]  # fmt: skip
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    else:
        lines += ["End-to-end benchmark"] + [f"  {k}: {v}" for k, v in header.items()] + [""]
        table = [list(HEADERS), *body]
        widths = [max(len(x[i]) for x in table) for i in range(len(HEADERS))]
        for n, cells in enumerate(table):
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip())  # fmt: skip
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        if goals:
            lines += ["", "Goals (cached/uncached req/s, medians):"]
            lines += [f"  {'PASS' if ok else 'FAIL'}  {c}: {m:.2f} (goal >= {g:.2f})"
                      for c, m, g, ok in goals]  # fmt: skip
        lines += ["", "Notes:"] + [f"  - {n}" for n in notes]
    if goals:
        met = sum(ok for *_, ok in goals)
        lines.append(("- " if markdown else "  - ")
                     + f"goals: {met} PASS, {len(goals) - met} FAIL")  # fmt: skip
    return "\n".join(lines)


def versions_line() -> str:
    import dogpile
    import sqlalchemy
    import starlette
    import uvicorn

    return (f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
            f"dogpile.cache {dogpile.__version__}, Starlette {starlette.__version__}, "
            f"uvicorn {uvicorn.__version__}")  # fmt: skip


def servers_line(db_url: str, redis_url: str) -> str:
    from sqlalchemy import create_engine, text

    parts = []
    try:
        engine = create_engine(db_url)
        with engine.connect() as conn:
            parts.append(str(conn.execute(text("select version()")).scalar()).split(" on ")[0])
        engine.dispose()
    except Exception as err:
        parts.append(f"database: {type(err).__name__}")
    try:
        import redis

        client = redis.Redis.from_url(redis_url)
        parts.append(f"Redis {client.info('server')['redis_version']}")
        client.close()
    except Exception as err:
        parts.append(f"Redis: {type(err).__name__}")
    return ", ".join(parts)


def _mixes(text: str) -> tuple[float, ...]:
    out = []
    for part in text.split(","):
        value = float(part.strip().rstrip("%")) / (100 if part.strip().endswith("%") else 1)
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"a write ratio is in 0..1 (or 0%..100%): {part!r}")
        out.append(value)
    return tuple(out)


def _workloads(text: str) -> tuple[str, ...]:
    names = tuple(w.strip() for w in text.split(",") if w.strip())
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"workloads are among {', '.join(WORKLOADS)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.e2e",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--pg-url", default=os.environ.get("QC_PG_URL"),
                        help="PostgreSQL URL (default: $QC_PG_URL); its shop_* tables are "
                             "dropped and recreated")  # fmt: skip
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("QC_REDIS_URL"),
        help="Redis URL of the cache (default: $QC_REDIS_URL)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured run")
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of the same load before each run, not measured (0: none)",
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workloads", type=_workloads, default=WORKLOADS)
    parser.add_argument(
        "--mixes", type=_mixes, default=MIXES, help="write ratios, e.g. 0,0.05,0.2 or 0%%,5%%,20%%"
    )
    parser.add_argument("--baseline", choices=("none", "disabled"), default="none",
                        help="the uncached app: no QueryCache at all (none), or the same "
                             "QueryCache with SQLA_QUERYCACHE_DISABLED=1 (disabled)")  # fmt: skip
    parser.add_argument(
        "--no-populate", action="store_true", help="keep the shop_* tables as they are"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install wrk when it is missing"
    )
    parser.add_argument("--near", type=float, default=0.0, metavar="SECONDS",
                        help="the cached app uses NearCache(max_staleness=SECONDS)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.near:
        os.environ["QC_E2E_NEAR"] = repr(args.near)  # the servers' environment
    else:
        os.environ.pop("QC_E2E_NEAR", None)
    if not args.pg_url or not args.redis_url:
        parser.error("needs PostgreSQL and Redis: set QC_PG_URL and QC_REDIS_URL "
                     "(or --pg-url / --redis-url)")  # fmt: skip
    if args.rounds < 1 or args.seconds < 1 or args.connections < 1:
        parser.error("--rounds, --seconds and --connections must be at least 1")
    try:
        tool = find_load_generator(install=not args.no_install)
    except LoadGeneratorMissing as err:
        print(f"e2e: {err}", file=sys.stderr)
        return 2
    if tool.note:
        print(f"e2e: {tool.note}", file=sys.stderr)
    cfg = Config(args.pg_url, args.redis_url, args.workloads, args.mixes, args.rounds,
                 args.seconds, args.warmup, args.connections, args.baseline,
                 not args.no_populate, not args.no_install)  # fmt: skip
    notes: list[str] = []
    started, load0 = time.perf_counter(), loadavg()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def progress(r: int, cell: Cell, mode: str, run: Run) -> None:
        print(f"e2e: round {r + 1}/{cfg.rounds} {cell.workload} {cell.mix:.0%} writes "
              f"{mode}: {run.rps:,.0f} req/s, p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms"
              + ("" if run.hit_ratio is None else f", hits {run.hit_ratio:.0%}")
              + (f", FAILED {run.errors + run.non2xx}" if run.errors + run.non2xx else ""),
              file=sys.stderr, flush=True)  # fmt: skip

    result = measure(cfg, tool, notes, progress)
    rows = [c.row() for c in result.cells]
    given = list(argv) if argv is not None else sys.argv[1:]
    command = " ".join(["python -m tests.benchmarks.e2e", *given])
    header = {
        "date": date,
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
                   f"{platform.system()} {platform.release()}",
        "software": versions_line() + f"; load generator: {tool.version}",
        "servers (local)": servers_line(cfg.db_url, cfg.redis_url),
        "load average (1, 5, 15 min) at start / end": f"{load0} / {loadavg()}",
        "command": f"`{command}`",
        "method": f"{cfg.rounds} rounds x {cfg.seconds:g} s per run (after {cfg.warmup:g} s "
                  f"of warm-up), cached and uncached interleaved, {cfg.connections} "
                  f"connections; medians over the rounds",
    }  # fmt: skip
    notes += [
        "uncached: " + ("the same app without a QueryCache (plain SQLAlchemy)"
                        if cfg.baseline == "none" else
                        "the same app, its QueryCache disabled (SQLA_QUERYCACHE_DISABLED=1; "
                        "writes still bump versions)"),
        "cached: Redis regions (one per workload) + Redis versions, identity_region for "
        "session.get; the write endpoint's session.get goes through it too"
        + (f"; near cache: NearCache(max_staleness={args.near:g})" if args.near else ""),
        "ids: 80% of the requests on 20% of the rows (writes: products, skewed the same way)",
        "hit ratio: hits / (hits + misses + bypassed) of the workload's region in the "
        "cached runs (cache.stats() through the app's /_stats)",
        "cached/uncached: ratio of the median req/s (higher is better); beside it the "
        "lowest and highest per-round ratio",
        f"failed requests (socket errors, timeouts, non-2xx): {result.failed}",
        f"check: {result.compared} answers of the cached app (hot and cold ids, each page "
        f"twice) compared with the uncached app's after the runs: {len(result.differ)} differ"
        + (f" ({', '.join(result.differ[:5])})" if result.differ else ""),
        f"wall time {time.perf_counter() - started:.0f} s",
    ]  # fmt: skip
    if tool.note:
        notes.append(tool.note)
    print(render(rows, cfg, tool, notes, args.markdown, header))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
