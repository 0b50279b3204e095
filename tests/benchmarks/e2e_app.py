"""The demo shop as a small Starlette app, for the end-to-end benchmark (``e2e.py``).

Served by uvicorn (one worker); configured by environment variables, read at import:

- ``QC_E2E_DB``: the database URL (the ``shop_`` tables of ``sqla_querycache.demo``,
  filled by ``demo.populate``);
- ``QC_E2E_MODE``: ``cached`` (a QueryCache on Redis regions and Redis versions,
  installed on the app's sessions), ``none`` (no QueryCache at all: plain SQLAlchemy)
  or ``disabled`` (the same QueryCache as ``cached``, built with
  ``SQLA_QUERYCACHE_DISABLED=1``: the kill switch);
- ``QC_E2E_REDIS``, ``QC_E2E_NAMESPACE``: the cache's Redis URL and namespace;
- ``QC_E2E_POOL``: the engine's pool size.

Routes (plain ``def`` endpoints: Starlette runs them in its thread pool, as a
FastAPI app with synchronous endpoints does; one Session per request):

- ``GET /category/{id}``: the category page (50 products), ``demo.category_page``;
- ``GET /customer/{id}/orders``: a customer's orders with their items (eager graph),
  ``demo.customer_orders``;
- ``GET /product/{id}``: product detail by primary key, ``session.get`` (served by
  the identity cache, ``identity_region``, when cached);
- ``GET /revenue``: revenue per category (GROUP BY), ``demo.revenue_report``;
- ``POST /product/{id}/price?cents=N``: the write: ``session.get``, set the price,
  commit (ORM);
- ``GET /mix/{workload}/{a}/{b}``: a read or a write chosen by the server from two
  random numbers of 0..999999 (for load generators without scripting, see
  ``e2e.py``);
- ``GET /_stats``, ``GET /_written``, ``POST /_replay``, ``GET /_health``: for the
  harness.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import flag_modified
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sqla_querycache import NoCache, QueryCache, demo

from . import e2e_pick

MODE = os.environ.get("QC_E2E_MODE", "cached")
if MODE not in ("cached", "none", "disabled"):
    raise SystemExit(f"QC_E2E_MODE must be cached, none or disabled, got {MODE!r}")
DB_URL = os.environ["QC_E2E_DB"]
POOL = int(os.environ.get("QC_E2E_POOL", "12"))
#: region of each read workload (one per workload, so that stats() is per workload)
REGIONS = ("category_page", "customer_orders", "product", "revenue_report")

if DB_URL.startswith("sqlite"):
    engine = demo.make_engine(DB_URL)
else:  # a pool as large as the load's connections, so no request waits for one
    engine = create_engine(DB_URL, pool_size=POOL, max_overflow=8)
# a session class of the app's own: installing touches only this app's sessions
AppSession = type("AppSession", (Session,), {})
SessionLocal: sessionmaker[Session] = sessionmaker(engine, class_=AppSession)

cache: QueryCache | None = None
#: products updated by this app when it has no cache (see /_written and /_replay)
written: set[int] = set()
_written_lock = threading.Lock()
if MODE != "none":
    from dogpile.cache import make_region

    from sqla_querycache import NearCache

    redis_url = os.environ["QC_E2E_REDIS"]
    #: QC_E2E_NEAR: the cached app's NearCache(max_staleness=...) in seconds (unset: strict)
    NEAR = os.environ.get("QC_E2E_NEAR")
    if MODE == "disabled":
        os.environ["SQLA_QUERYCACHE_DISABLED"] = "1"
    cache = QueryCache(
        regions={
            name: make_region().configure(
                "dogpile.cache.redis", expiration_time=600, arguments={"url": redis_url}
            )
            for name in REGIONS
        },
        versions=redis_url,
        namespace=os.environ.get("QC_E2E_NAMESPACE", "qce2e"),
        identity_region="product",
        near=NearCache(max_staleness=float(NEAR)) if NEAR else None,
    )
    cache.install(SessionLocal)
#: the region a read workload tags its statement with (None: untagged)
TAG = (lambda name: name) if cache is not None else (lambda name: None)


def plain(value: Any) -> Any:
    """JSON-ready: Decimal -> str, datetime -> ISO text, tuples and lists -> lists."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def category_page(category_id: int) -> JSONResponse:
    with SessionLocal() as s:
        return JSONResponse(plain(demo.category_page(s, category_id, cache=TAG("category_page"))))


def customer_orders(customer_id: int) -> JSONResponse:
    with SessionLocal() as s:
        return JSONResponse(
            plain(demo.customer_orders(s, customer_id, cache=TAG("customer_orders")))
        )


def product(product_id: int) -> JSONResponse:
    with SessionLocal() as s:
        p = s.get(demo.Product, product_id)
        if p is None:
            return JSONResponse({"error": "no such product"}, status_code=404)
        return JSONResponse(plain([p.id, p.name, p.price, p.stock, p.category_id, p.created]))


def revenue() -> JSONResponse:
    with SessionLocal() as s:
        return JSONResponse(plain(demo.revenue_report(s, cache=TAG("revenue_report"))))


def set_price(product_id: int, cents: int) -> JSONResponse:
    with SessionLocal() as s:
        p = s.get(demo.Product, product_id)
        if p is None:
            return JSONResponse({"error": "no such product"}, status_code=404)
        price = p.price = Decimal(cents).scaleb(-2)
        s.commit()
    if cache is None:
        with _written_lock:
            written.add(product_id)
    return JSONResponse({"id": product_id, "price": plain(price)})


def _int(request: Request, name: str) -> int:
    return int(request.path_params[name])


READS = {
    "category_page": lambda i: category_page(i),
    "customer_orders": lambda i: customer_orders(i),
    "product": lambda i: product(i),
    "revenue_report": lambda i: revenue(),
}


def r_category(request: Request) -> JSONResponse:
    return category_page(_int(request, "id"))


def r_orders(request: Request) -> JSONResponse:
    return customer_orders(_int(request, "id"))


def r_product(request: Request) -> JSONResponse:
    return product(_int(request, "id"))


def r_revenue(request: Request) -> JSONResponse:
    return revenue()


def r_price(request: Request) -> JSONResponse:
    return set_price(_int(request, "id"), int(request.query_params.get("cents", "999")))


def r_mix(request: Request) -> JSONResponse:
    """A read of ``workload`` or a write, picked from ``a`` and ``b`` like the wrk script."""
    workload = request.path_params["workload"]
    spec = e2e_pick.SPECS.get(workload)
    if spec is None:
        return JSONResponse({"error": f"unknown workload {workload!r}"}, status_code=404)
    ratio = float(request.query_params.get("writes", "0"))
    a, b = _int(request, "a"), _int(request, "b")
    if a < ratio * 1_000_000:
        pid = e2e_pick.skewed(b, e2e_pick.SPECS["product"])
        return set_price(pid, 199 + (a * 7919 + b) % 49800)
    return READS[workload](e2e_pick.skewed(b, spec))


def r_stats(request: Request) -> JSONResponse:
    if cache is None:
        return JSONResponse({"mode": MODE, "regions": {}})
    return JSONResponse({"mode": MODE, "enabled": cache.enabled, "regions": cache.stats()})


def r_written(request: Request) -> JSONResponse:
    """The products this app (without a cache) updated since the last call."""
    with _written_lock:
        ids = sorted(written)
        written.clear()
    return JSONResponse(ids)


async def r_replay(request: Request) -> JSONResponse:
    """Write again the products another app updated, so this app's cache sees those writes.

    The baseline app has no cache: its writes do not reach this one's versions.
    Replaying them as ORM updates (the same price, the column flagged as changed)
    invalidates what this app's own writes would have (the rows, their category's
    page), batch by batch of at most 200 rows a transaction (above 256 rows one
    transaction would invalidate all of the table's rows).
    """
    ids = [int(i) for i in await request.json()]
    await run_in_threadpool(_replay, ids)
    return JSONResponse({"mode": MODE, "replayed": len(ids)})


def _replay(ids: list[int]) -> None:
    for start in range(0, len(ids), 200):
        with SessionLocal() as s:
            stmt = select(demo.Product).where(demo.Product.id.in_(ids[start : start + 200]))
            for p in s.scalars(stmt.options(NoCache())):
                flag_modified(p, "price")
            s.commit()


def r_health(request: Request) -> JSONResponse:
    return JSONResponse({"mode": MODE, "pid": os.getpid()})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    if cache is not None:
        cache.close()
    engine.dispose()


app = Starlette(
    routes=[
        Route("/category/{id:int}", r_category),
        Route("/customer/{id:int}/orders", r_orders),
        Route("/product/{id:int}", r_product),
        Route("/revenue", r_revenue),
        Route("/product/{id:int}/price", r_price, methods=["POST"]),
        Route("/mix/{workload}/{a:int}/{b:int}", r_mix),
        Route("/_stats", r_stats),
        Route("/_written", r_written),
        Route("/_replay", r_replay, methods=["POST"]),
        Route("/_health", r_health),
    ],
    lifespan=lifespan,
)
