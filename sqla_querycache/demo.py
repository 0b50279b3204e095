"""A shop schema, a deterministic data set and four read workloads to see the cache at work.

Used by ``sqla-querycache demo`` (or ``python -m sqla_querycache.demo``) and by the
benchmark in ``tests/benchmarks/bench.py``. The schema has its own
``DeclarativeBase`` and its tables are prefixed ``shop_`` so it can share a
database with an application (or the test suite) without touching its tables.

Each workload takes a :class:`~sqlalchemy.orm.Session`, returns plain values
(so a caller compares results, never ORM objects) and takes ``cache=``: a
region name (the statement is tagged ``FromCache(name)``), any other ORM
option object (used as is; the benchmark passes the dogpile recipe's option),
or ``None`` for no tagging.

Example::

    from sqla_querycache import demo
    rows = demo.run_demo()           # SQLite in memory, a memory region
    demo.render_table(rows)
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TextIO

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Numeric,
    String,
    create_engine,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)
from sqlalchemy.pool import StaticPool

from .options import FromCache

#: products shown by :func:`category_page`; every used category holds at least this many
PAGE_SIZE = 50

#: what ``cache=`` takes: a region name, an ORM option object, or None
CacheArg = Any


class Base(DeclarativeBase):
    """The demo's own declarative base (its metadata holds only the ``shop_`` tables)."""


class Category(Base):
    __tablename__ = "shop_category"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60))


class Product(Base):
    __tablename__ = "shop_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    category_id: Mapped[int] = mapped_column(ForeignKey("shop_category.id"), index=True)
    stock: Mapped[int]
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    category: Mapped[Category] = relationship()


class Customer(Base):
    __tablename__ = "shop_customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60))
    email: Mapped[str] = mapped_column(String(80))
    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id")


class Order(Base):
    __tablename__ = "shop_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("shop_customer.id"), index=True)
    placed: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    customer: Mapped[Customer] = relationship(back_populates="orders")
    items: Mapped[list[OrderItem]] = relationship(back_populates="order", order_by="OrderItem.id")


class OrderItem(Base):
    __tablename__ = "shop_order_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("shop_order.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("shop_product.id"), index=True)
    quantity: Mapped[int]
    unit_price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    order: Mapped[Order] = relationship(back_populates="items")
    product: Mapped[Product] = relationship()


# ------------------------------------------------------------------- data


def populate(
    engine: Engine,
    products: int = 5000,
    categories: int = 100,
    customers: int = 500,
    orders_per_customer: int = 4,
    items_per_order: int = 3,
    seed: int = 20240501,
) -> dict[str, int]:
    """(Re)create the ``shop_`` tables and fill them with a deterministic data set.

    Drops and recreates only the demo's own tables. Products are dealt round
    robin over as many categories as can hold a full page of
    :data:`PAGE_SIZE` products each (all of them with the defaults: 50 per
    category), so :func:`category_page` of category 1 always returns a full
    page when ``products >= PAGE_SIZE``. Rows go in with executemany inserts,
    one transaction. Returns the row count per table.
    """
    if min(products, categories, customers) < 1 or orders_per_customer < 0 or items_per_order < 0:
        raise ValueError("populate() needs at least one product, category and customer")
    rng = random.Random(seed)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    used = max(1, min(categories, products // PAGE_SIZE))
    cat_rows = [{"id": c, "name": f"Category {c:03d}"} for c in range(1, categories + 1)]
    prices = [Decimal(rng.randrange(199, 50000)).scaleb(-2) for _ in range(products)]
    product_rows = [
        {
            "id": i + 1,
            "name": f"Product {i + 1:05d}",
            "price": prices[i],
            "category_id": i % used + 1,
            "stock": rng.randrange(0, 500),
            "created": start + dt.timedelta(minutes=37 * i),
        }
        for i in range(products)
    ]
    customer_rows = [
        {"id": c, "name": f"Customer {c:04d}", "email": f"customer{c}@example.com"}
        for c in range(1, customers + 1)
    ]
    order_rows: list[dict[str, Any]] = []
    item_rows: list[dict[str, Any]] = []
    for c in range(1, customers + 1):
        for _ in range(orders_per_customer):
            order_id = len(order_rows) + 1
            placed = start + dt.timedelta(hours=rng.randrange(0, 24 * 365))
            order_rows.append({"id": order_id, "customer_id": c, "placed": placed})
            for _ in range(items_per_order):
                pid = rng.randrange(1, products + 1)
                item_rows.append({
                    "id": len(item_rows) + 1, "order_id": order_id, "product_id": pid,
                    "quantity": rng.randrange(1, 6), "unit_price": prices[pid - 1],
                })  # fmt: skip
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    counts = {}
    with engine.begin() as conn:
        for model, rows in (
            (Category, cat_rows), (Product, product_rows), (Customer, customer_rows),
            (Order, order_rows), (OrderItem, item_rows),
        ):  # fmt: skip
            if rows:
                conn.execute(insert(Base.metadata.tables[model.__tablename__]), rows)
            counts[model.__tablename__] = len(rows)
    if engine.dialect.name in ("sqlite", "postgresql"):
        with engine.begin() as conn:  # fresh planner statistics for the new data
            conn.execute(text("ANALYZE"))
    return counts


# -------------------------------------------------------------- workloads


def _tag(stmt: Any, cache: CacheArg) -> Any:
    """Tag a statement: a region name -> ``FromCache(name)``, an option -> as is."""
    if cache is None:
        return stmt
    return stmt.options(FromCache(cache) if isinstance(cache, str) else cache)


def category_page(session: Session, category_id: int = 1, *, cache: CacheArg = None) -> list[Any]:
    """The first :data:`PAGE_SIZE` products of a category, by id: ``[(id, name, price, stock)]``."""
    stmt = (
        select(Product)
        .where(Product.category_id == category_id)
        .order_by(Product.id)
        .limit(PAGE_SIZE)
    )
    return [(p.id, p.name, p.price, p.stock) for p in session.scalars(_tag(stmt, cache))]


def customer_orders(session: Session, customer_id: int = 1, *, cache: CacheArg = None) -> Any:
    """A customer with its orders and their items, eagerly loaded (three SELECTs uncached).

    Returns ``(id, name, [(order id, placed, [(product id, quantity, unit price)])])``.
    """
    stmt = (
        select(Customer)
        .where(Customer.id == customer_id)
        .options(selectinload(Customer.orders).selectinload(Order.items))
    )
    c = session.scalars(_tag(stmt, cache)).one()
    return (
        c.id,
        c.name,
        [
            (o.id, o.placed, [(i.product_id, i.quantity, i.unit_price) for i in o.items])
            for o in c.orders
        ],
    )


def lookup_ids(products: int = 5000) -> list[int]:
    """Five product ids spread over ``1..products`` (the ids :func:`lookup_5` asks for)."""
    return sorted({max(1, min(products, round(products * f))) for f in (0.001, 0.2, 0.45, 0.7, 1)})


def lookup_5(
    session: Session, ids: Sequence[int] | None = None, *, cache: CacheArg = None
) -> list[Any]:
    """Products by a list of five ids: ``[(id, name, price, stock)]`` by id."""
    stmt = select(Product).where(Product.id.in_(list(ids or lookup_ids())))
    rows = [(p.id, p.name, p.price, p.stock) for p in session.scalars(_tag(stmt, cache))]
    return sorted(rows)


def revenue_report(session: Session, *, cache: CacheArg = None) -> list[Any]:
    """Revenue per category: ``[(category id, name, sum(quantity * unit_price))]``."""
    revenue = func.sum(OrderItem.quantity * OrderItem.unit_price).label("revenue")
    stmt = (
        select(Category.id, Category.name, revenue)
        .join(Product, Product.category_id == Category.id)
        .join(OrderItem, OrderItem.product_id == Product.id)
        .group_by(Category.id, Category.name)
        .order_by(Category.id)
    )
    return [tuple(row) for row in session.execute(_tag(stmt, cache))]


#: name -> workload; each is called as ``fn(session, cache=...)``
WORKLOADS: dict[str, Callable[..., Any]] = {
    "category_page": category_page,
    "customer_orders": customer_orders,
    "lookup_5": lookup_5,
    "revenue_report": revenue_report,
}


# -------------------------------------------------------------------- run


def make_engine(url: str = "sqlite://") -> Engine:
    """An engine for ``url``; plain ``sqlite://`` is one shared in-memory database."""
    if url in ("sqlite://", "sqlite:///:memory:"):
        return create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    return create_engine(url)


def _timed(fn: Callable[[], Any], samples: list[float]) -> None:
    t0 = time.perf_counter()
    fn()
    samples.append(time.perf_counter() - t0)


def run_demo(
    url: str = "sqlite://",
    rounds: int = 60,
    sizes: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Populate a database, run each workload uncached and cached; one row per workload.

    A :class:`~sqla_querycache.QueryCache` with one memory region per workload
    (named after it, so ``stats()`` is per workload) is installed on its own
    sessionmaker; the uncached calls use another sessionmaker without it (the
    extension's engine-level write listeners are process-wide, so "uncached"
    is an untagged query in an application that has the cache installed;
    ``tests/benchmarks/bench.py`` measures against plain SQLAlchemy).
    Every call gets a fresh Session. The first cached call of a workload is
    the miss that stores the entry; then ``rounds`` rounds alternate
    uncached and cached calls (order flipped every round). Cached results are
    checked equal to uncached ones.

    Row keys: ``workload``, ``uncached_ms``, ``cached_ms`` (medians),
    ``ratio`` (cached / uncached), ``hit_ratio`` (from ``cache.stats()``).
    """
    from dogpile.cache import make_region

    from .cache import QueryCache

    engine = make_engine(url)
    try:
        populate(engine, **dict(sizes or {}))
        n_products = dict(sizes or {}).get("products", 5000)
        args: dict[str, tuple[Any, ...]] = {"lookup_5": (lookup_ids(n_products),)}
        regions = {
            name: make_region().configure("dogpile.cache.memory", expiration_time=600)
            for name in WORKLOADS
        }
        plain = sessionmaker(engine)
        cached = sessionmaker(engine)
        cache = QueryCache(regions=regions).install(cached)
        try:
            rows = []
            for name, fn in WORKLOADS.items():
                extra = args.get(name, ())

                def run_plain(fn: Callable[..., Any] = fn, extra: tuple[Any, ...] = extra) -> Any:
                    with plain() as s:
                        return fn(s, *extra)

                def run_cached(
                    fn: Callable[..., Any] = fn, extra: tuple[Any, ...] = extra, name: str = name
                ) -> Any:
                    with cached() as s:
                        return fn(s, *extra, cache=name)

                expected = run_plain()
                if run_cached() != expected or run_cached() != expected:  # miss, then hit
                    raise AssertionError(f"{name}: cached result differs from the database")
                t_plain: list[float] = []
                t_cached: list[float] = []
                for r in range(rounds):
                    pair = [(run_plain, t_plain), (run_cached, t_cached)]
                    for call, samples in pair if r % 2 else pair[::-1]:
                        _timed(call, samples)
                unc = statistics.median(t_plain)
                hit = statistics.median(t_cached)
                rows.append({
                    "workload": name,
                    "uncached_ms": unc * 1e3,
                    "cached_ms": hit * 1e3,
                    "ratio": hit / unc,
                    "hit_ratio": cache.stats()[name]["hit_ratio"],
                })  # fmt: skip
            return rows
        finally:
            cache.uninstall()
    finally:
        engine.dispose()


HEADERS = ("workload", "uncached", "cached hit", "ratio", "speedup", "hit ratio")
TITLE = "sqla_querycache demo (medians, fresh Session per call)"
CAPTION = "ratio = cached hit / uncached; hit ratio from cache.stats()"


def _cells(row: Mapping[str, Any]) -> list[str]:
    hr = row["hit_ratio"]
    return [
        row["workload"],
        f"{row['uncached_ms']:.3f} ms",
        f"{row['cached_ms']:.3f} ms",
        f"{row['ratio']:.2f}",
        f"{1 / row['ratio']:.1f}x" if row["ratio"] else "-",
        "-" if hr is None else f"{hr:.0%}",
    ]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`run_demo` as an aligned plain-text table."""
    body = [list(HEADERS)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(HEADERS))]
    lines = []
    for n, line in enumerate(body):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_table(rows: Sequence[Mapping[str, Any]], file: TextIO | None = None) -> None:
    """Print the rows of :func:`run_demo`: a ``rich`` table if rich is installed, else text."""
    out = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(TITLE, format_table(rows), CAPTION, sep="\n", file=out)
        return
    table = Table(title=TITLE, caption=CAPTION)
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*_cells(row))
    Console(file=out).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """``sqla-querycache demo [--url URL] [--rounds N]``: run the demo, print the table."""
    import argparse

    parser = argparse.ArgumentParser(prog="sqla-querycache demo", description=main.__doc__)
    parser.add_argument("--url", default="sqlite://",
                        help="database URL (default: SQLite in memory); only shop_* tables "
                             "are dropped and recreated")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=60, help="timed calls per variant")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run_demo(args.url, rounds=args.rounds)
    render_table(rows)
    url = make_url(args.url).render_as_string(hide_password=True)
    print(f"{args.rounds} rounds per workload in {time.perf_counter() - started:.1f} s "
          f"(database: {url})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
