"""Differential corpus: a cached result equals the uncached one, on a miss and on a hit.

Every corpus case is a query (a statement plus the Result API calls that
consume it, or a function of a session) run three times, each in a fresh
Session, on every database and both region kinds:

(a) uncached: the query without a caching tag (the cache is installed but unused);
(b) cached, first run: tagged (``FromCache()``), a miss that runs the SQL and stores;
(c) cached, second run: tagged, a hit that must not emit any SQL.

The outcomes are rendered to plain values (:func:`render`) and must be equal:
the same rows in the same order, the same Python type for every value
(``Decimal`` stays ``Decimal``, datetimes keep their tzinfo and UTC offset,
``UUID``, JSON ``dict``), and for ORM objects the same class, identity,
loaded column values and loaded relationship graph.

A case that fails because of a bug in the extension stays as it is and is
marked ``xfail(strict=True)``; the diagnoses are the ``BUG_*`` strings below.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import (
    Enum,
    Integer,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    inspect,
    lambda_stmt,
    literal_column,
    select,
    text,
    tuple_,
    union,
    union_all,
)
from sqlalchemy.engine import Result, Row, RowMapping
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import (
    Bundle,
    Session,
    aliased,
    contains_eager,
    defer,
    immediateload,
    joinedload,
    load_only,
    raiseload,
    selectin_polymorphic,
    selectinload,
    subqueryload,
    undefer,
    with_loader_criteria,
    with_polymorphic,
)

from sqla_querycache import FromCache

from .models import (
    Category,
    Customer,
    Employee,
    Engineer,
    Kind,
    Manager,
    Memo,
    Note,
    Order,
    OrderItem,
    Product,
    Tag,
)

# ------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class Rendered:
    """What a case rendered itself (it had to: its session was closed in between)."""

    value: Any


def render(value: Any) -> Any:
    """A plain, comparable rendering of a query outcome; reads only loaded state (no SQL)."""
    return _plain(value, set())


def _plain(value: Any, seen: set[int]) -> Any:
    if value is None:
        return None
    if isinstance(value, Rendered):
        return value.value
    t = type(value)
    if hasattr(t, "_sa_class_manager"):
        return _entity(value, seen)
    if isinstance(value, Row):
        return ("Row", value._fields, [_plain(v, seen) for v in value])
    if isinstance(value, RowMapping):
        return ("RowMapping", [(_key(k), _plain(v, seen)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (t.__name__, [_plain(v, seen) for v in value])
    if isinstance(value, dict):
        return (t.__name__, [(k, _plain(v, seen)) for k, v in value.items()])
    if t is dt.datetime:
        return (t.__name__, value.isoformat(), value.utcoffset(), repr(value.tzinfo))
    if t is decimal.Decimal or t is float:
        return (t.__name__, repr(value))  # exact digits and exponent
    return (t.__name__, value)


def _key(key: Any) -> Any:
    return key if isinstance(key, str) else repr(key)


def _entity(obj: Any, seen: set[int]) -> Any:
    """Class, identity, session state, loaded columns and loaded relationships of an object."""
    state = inspect(obj)
    head = (type(obj).__name__, tuple(_plain(v, seen) for v in state.identity))
    if id(obj) in seen:  # drawn already: a back reference, or the same object twice
        return ("ref", *head)
    seen.add(id(obj))
    loaded = state.dict
    columns = [(p.key, _plain(loaded[p.key], seen))
               for p in state.mapper.column_attrs if p.key in loaded]  # fmt: skip
    related = [(r.key, _plain(loaded[r.key], seen))
               for r in state.mapper.relationships if r.key in loaded]  # fmt: skip
    status = (
        "persistent" if state.persistent else "not persistent",
        "modified" if state.modified else "clean",
    )
    return ("entity", *head, status, columns, related)


def raises(fn: Callable[[], Any]) -> Any:
    """Call ``fn``: its value, or the name of the InvalidRequestError it raised."""
    try:
        return fn()
    except InvalidRequestError as err:
        return ("raised", type(err).__name__)


# ---------------------------------------------------------------- the corpus

#: adds the caching tag to a statement or a legacy Query (or, uncached, returns it as is)
Tagger = Callable[[Any], Any]


@dataclass(frozen=True)
class Case:
    """One corpus entry: ``run(session, tag)`` returns what the Result API gave."""

    name: str
    run: Callable[[Session, Tagger], Any]
    #: how the cached runs are tagged: ``FromCache()``, ``FromCache("hot")``,
    #: or the ``cache_region`` execution option
    tag: str = "from_cache"
    #: False when the second cached run may emit SQL (then only the results must agree)
    hit: bool = True
    #: the diagnosis of a known extension bug this case shows
    xfail: str | None = None

    @property
    def region(self) -> str:
        return "hot" if self.tag == "hot" else "default"

    def tagger(self) -> Tagger:
        if self.tag == "from_cache":
            return lambda q: q.options(FromCache())
        if self.tag == "hot":
            return lambda q: q.options(FromCache("hot"))
        assert self.tag == "execution_option", self.tag
        return lambda q: q.execution_options(cache_region="default")


CORPUS: list[Case] = []


def statement(
    name: str, build: Callable[[], Any], fetch: Callable[[Result[Any]], Any], **kw: Any
) -> None:
    """Add a case: ``fetch(session.execute(tag(build())))``."""

    def run(session: Session, tag: Tagger) -> Any:
        return fetch(session.execute(tag(build())))

    CORPUS.append(Case(name, run, **kw))


def session_case(name: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add a case written as a function of ``(session, tag)``."""

    def register(fn: Callable[[Session, Tagger], Any]) -> Callable[[Session, Tagger], Any]:
        CORPUS.append(Case(name, fn, **kw))
        return fn

    return register


def one_by_one(session: Session, *queries: Callable[[], Any]) -> Rendered:
    """Run several queries, each rendered and followed by ``session.close()``.

    A fresh transaction and identity map per query: MariaDB's REPEATABLE READ
    makes the extension bypass the cache for a second read in one transaction,
    and a result holding objects the session loaded before is never stored.
    """
    out = []
    for query in queries:
        out.append(render(query()))
        session.close()
    return Rendered(out)


# Result API calls; each returns what render() draws


def rows(r: Result[Any]) -> Any:
    return list(r.keys()), r.all()


def scalars(r: Result[Any]) -> Any:
    return r.scalars().all()


def unique_scalars(r: Result[Any]) -> Any:
    return r.unique().scalars().all()


def one(r: Result[Any]) -> Any:
    return r.one()


def first(r: Result[Any]) -> Any:
    return r.first()


def scalar(r: Result[Any]) -> Any:
    return r.scalar()


def mappings(r: Result[Any]) -> Any:
    return r.mappings().all()


def columns(*keys: Any) -> Callable[[Result[Any]], Any]:
    """``result.columns(*keys).all()``."""

    def fetch(r: Result[Any]) -> Any:
        return r.columns(*keys).all()

    return fetch


def by_mapping_key(*keys: Any) -> Callable[[Result[Any]], Any]:
    """``row._mapping[key]`` for each row and key (a class, a column, a name)."""

    def fetch(r: Result[Any]) -> Any:
        return [[row._mapping[k] for k in keys] for row in r]

    return fetch


def by_attribute(*names: str) -> Callable[[Result[Any]], Any]:
    """``row.<name>`` for each row and name."""

    def fetch(r: Result[Any]) -> Any:
        return [[getattr(row, n) for n in names] for row in r]

    return fetch


def products(*criteria: Any) -> Any:
    return select(Product).where(*criteria).order_by(Product.id)


# Known extension bugs (each shown by one case below, on every database and region kind)

BUG_NULL_FIRST_ROW = (
    "hydrate.dehydrate() decides entity-vs-value per column from the first row only; a NULL "
    "(outer-joined) entity there makes the result NotStorable, so the second run is a miss"
)
BUG_LOADER_OPTIONS_LOST = (
    "hydrate._attach_new() restores none of the per-object loader state loader options set "
    "(state.callables, load_options, load_path): a hit loses raiseload(), the access runs SQL"
)
BUG_COLUMN_RAISELOAD_LOST = (
    "hydrate._Layout.expire marks the columns load_only()/defer() left out as expired instead "
    "of restoring their per-object deferred loaders: raiseload=True is lost, the access runs SQL"
)
BUG_TEXT_FROM_STATEMENT = (
    "events.install.do_orm_execute calls the cache only if orm_state.is_select, which "
    "SQLAlchemy sets False for from_statement(text()): never cached (keys.py expects it)"
)
BUG_LOAD_OPTIONS_NOT_KEYED = (
    "cache._on_execute/_plan key only the statement: Query.only_return_tuples() (a load "
    "option passed as an execution option) shares the entry and shape of the plain Query"
)
BUG_BUNDLE_NOT_STORED = (
    "hydrate.dehydrate() stores a Bundle's value (a Row) as a plain value; "
    "codec.packb() has no encoding for Row, so a Bundle result is never stored"
)
BUG_ENUM_VALUE_NOT_STORED = (
    "codec._default() has no encoding for Enum members: a result holding one (an Enum "
    "column) raises Unencodable in cache._miss(), so it is never stored"
)
BUG_ENUM_PARAMETER_NOT_KEYED = (
    "codec._default() has no encoding for Enum members: an Enum bound parameter makes "
    "keys.entry_key() raise Unencodable, so cache._on_execute() never caches the statement"
)


# --- entities: where / order / limit / offset, and the Result API on them

statement("entity_where_order", lambda: products(Product.category_id == 2), scalars)
statement(
    "entity_limit_offset",
    lambda: select(Product).order_by(Product.price.desc()).limit(5).offset(3),
    scalars,
)
statement("entity_all_rows", lambda: products(Product.id < 5), rows)
statement("entity_one", lambda: products(Product.id == 7), one)
statement("entity_scalar_one", lambda: products(Product.id == 7), lambda r: r.scalar_one())
statement(
    "entity_scalar_one_or_none_empty",
    lambda: products(Product.id == 999),
    lambda r: r.scalar_one_or_none(),
)
statement("entity_first", lambda: select(Product).order_by(Product.name.desc()), first)
statement("entity_first_empty", lambda: products(Product.id > 999), first)
statement("entity_scalar", lambda: products(Product.price > 20), scalar)
statement("entity_empty", lambda: products(Product.id > 999), scalars)
statement("entity_mappings", lambda: products(Product.id < 4), mappings)
statement("entity_row_mapping_by_class", lambda: products(Product.id < 4), by_mapping_key(Product))
statement("entity_row_attribute", lambda: products(Product.id < 4), by_attribute("Product"))
statement(
    "entity_partitions",
    lambda: products(Product.id <= 7),
    lambda r: [list(p) for p in r.scalars().partitions(3)],
)
statement(
    "entity_fetchmany_then_rest",
    lambda: products(Product.id <= 7),
    lambda r: [r.fetchmany(2), r.fetchone(), r.all()],
)
statement("entity_iterate_rows", lambda: products(Product.id <= 3), list)
statement(
    "entity_params_uuid_decimal",
    lambda: products(
        Product.sku.in_([uuid.UUID(int=3), uuid.UUID(int=9)])
        | Product.price.between(decimal.Decimal("20.20"), decimal.Decimal("22.5"))
    ),
    scalars,
)
statement("entity_tagged_hot_region", lambda: products(Product.id < 3), scalars, tag="hot")
statement(
    "entity_tagged_execution_option",
    lambda: products(Product.id < 3),
    scalars,
    tag="execution_option",
)


@session_case("session_scalar")
def _session_scalar(s: Session, tag: Tagger) -> Any:
    return s.scalar(tag(products(Product.id == 12)))


@session_case("session_scalars")
def _session_scalars(s: Session, tag: Tagger) -> Any:
    return s.scalars(tag(products(Product.category_id == 3))).all()


# --- columns only


def _manager() -> Any:
    """An Enum-typed column expression (the models map no Enum column)."""
    return literal_column("'manager'", Enum(Kind, native_enum=False))


def typed_columns() -> Any:
    return (
        select(Product.id, Product.name, Product.price, Product.created, Product.sku, Product.attrs)
        .order_by(Product.id)
        .limit(8)
    )


statement("columns_typed_all", typed_columns, rows)
statement("columns_mappings", typed_columns, mappings)
statement("columns_scalars_by_index", typed_columns, lambda r: r.scalars(1).all())
statement("columns_one", lambda: typed_columns().where(Product.id == 6), one)
statement("columns_columns_by_name", typed_columns, columns("price", "id"))
statement("columns_columns_by_index", typed_columns, columns(2, 0))
statement("columns_columns_by_attribute", typed_columns, columns(Product.sku, Product.id))
statement("columns_row_mapping_by_attribute", typed_columns, by_mapping_key(Product.price, "name"))
statement("columns_row_attributes", typed_columns, by_attribute("created", "sku", "attrs"))
statement(
    "columns_scalars",
    lambda: select(Product.name).where(Product.id > 30).order_by(Product.id),
    scalars,
)
statement("columns_scalar", lambda: select(Product.price).where(Product.id == 11), scalar)
statement(
    "columns_dates",
    lambda: (
        select(Order.id, Order.placed).where(Order.placed >= dt.date(2024, 2, 2)).order_by(Order.id)
    ),
    rows,
)
statement(
    "columns_expressions",
    lambda: (
        select(
            Product.id,
            (Product.price > 20).label("pricey"),
            func.upper(Product.name).label("upper"),
            case((Product.price > 30, "high"), else_="low").label("band"),
            cast(Product.price, Integer).label("whole"),
            (Product.price * 3).label("triple"),
            func.coalesce(Product.attrs["color"].as_string(), "none").label("color"),
        )
        .where(Product.id.in_([1, 3, 24, 35]))
        .order_by(Product.id)
    ),
    rows,
)
statement(
    "columns_tuple_in",
    lambda: (
        select(Product.id, Product.category_id)
        .where(tuple_(Product.category_id, Product.id).in_([(1, 4), (2, 5), (3, 5)]))
        .order_by(Product.id)
    ),
    rows,
)
statement(
    "columns_bundle",
    lambda: (
        select(Bundle("item", Product.id, Product.name), Product.price)
        .where(Product.id < 4)
        .order_by(Product.id)
    ),
    rows,
    xfail=BUG_BUNDLE_NOT_STORED,
)
statement(
    "columns_enum_value",
    lambda: select(Product.id, _manager().label("kind")).where(Product.id < 3).order_by(Product.id),
    rows,
    xfail=None,
)
statement(
    "entity_enum_parameter",
    lambda: products(Product.id < 3, _manager() == Kind.manager),
    scalars,
    xfail=None,
)

# --- entities mixed with columns


def product_with_category() -> Any:
    return (
        select(Product, Category).join(Product.category).where(Product.id < 9).order_by(Product.id)
    )


statement(
    "mixed_entity_and_column",
    lambda: (
        select(Product, Category.name)
        .join(Product.category)
        .where(Product.id < 6)
        .order_by(Product.id)
    ),
    rows,
)
statement(
    "mixed_column_then_entity",
    lambda: (
        select(Category.name, Product)
        .join(Product.category)
        .where(Product.id < 6)
        .order_by(Product.id)
    ),
    rows,
)
statement("mixed_two_entities", product_with_category, rows)
statement("mixed_two_entities_by_class", product_with_category, by_mapping_key(Category, Product))
statement(
    "mixed_two_entities_by_attribute", product_with_category, by_attribute("Category", "Product")
)
statement(
    "mixed_mappings",
    lambda: (
        select(Order, Customer.name.label("who"))
        .join(Order.customer)
        .where(Customer.id < 3)
        .order_by(Order.id)
    ),
    mappings,
)
statement(
    "mixed_columns_of_entity_row",
    lambda: (
        select(Product, Category.name, Product.price)
        .join(Product.category)
        .where(Product.id < 4)
        .order_by(Product.id)
    ),
    columns(2, 0),
)
statement(
    "mixed_entity_and_hybrid_label",
    lambda: (
        select(Product, Product.price_with_tax.label("gross"))
        .where(Product.id < 4)
        .order_by(Product.id)
    ),
    rows,
)

# --- joins


def _self_join() -> Any:
    other = aliased(Product, name="other")
    return (
        select(Product, other)
        .join(other, and_(other.category_id == Product.category_id, other.id == Product.id + 4))
        .where(Product.id < 5)
        .order_by(Product.id)
    )


def _outer_join(entity: Any, price: str, *order: Any) -> Any:
    """Categories outer-joined to their products dearer than ``price`` (NULL for most)."""
    matching = and_(Product.category_id == Category.id, Product.price > decimal.Decimal(price))
    return select(Category, entity).outerjoin(Product, matching).order_by(*order)


statement(
    "join_explicit_on",
    lambda: (
        select(Product)
        .join(Category, Category.id == Product.category_id)
        .where(Category.name == "cat 2")
        .order_by(Product.id)
    ),
    scalars,
)
statement(
    "join_relationship",
    lambda: (
        select(Order).join(Order.customer).where(Customer.name == "customer 3").order_by(Order.id)
    ),
    scalars,
)
statement(
    "join_many_to_many",
    lambda: select(Product).join(Product.tags).where(Tag.label == "tag2").order_by(Product.id),
    scalars,
)
statement("join_self_aliased", _self_join, by_attribute("Product", "other"))
statement(
    "outer_join_null_entity_in_middle",
    lambda: _outer_join(Product, "38", Category.id),
    rows,
)
statement(
    "outer_join_null_entity_in_first_row",
    lambda: _outer_join(Product, "39.5", Category.id.desc()),
    rows,
    xfail=None,
)
statement(
    "outer_join_null_column",
    lambda: _outer_join(Product.name, "38", Category.id),
    rows,
)

# --- aggregates


statement("agg_count", lambda: select(func.count(Product.id)), scalar)
statement("agg_count_star_select_from", lambda: select(func.count()).select_from(Product), scalar)
statement(
    "agg_sum_avg_min_max",
    lambda: (
        select(
            func.sum(Product.price),
            func.avg(Product.price),
            func.min(Product.price),
            func.max(Product.created),
            func.sum(OrderItem.quantity),
        )
        .select_from(Product)
        .join(OrderItem, OrderItem.product_id == Product.id)
    ),
    one,
)
statement(
    "agg_group_by_having",
    lambda: (
        select(
            Product.category_id,
            func.count(Product.id).label("n"),
            func.sum(Product.price).label("total"),
            func.avg(Product.price).label("mean"),
        )
        .group_by(Product.category_id)
        .having(func.sum(Product.price) > 200)
        .order_by(Product.category_id)
    ),
    rows,
)
statement(
    "agg_group_by_join",
    lambda: (
        select(Category.name, func.count(Product.id).label("n"))
        .join(Category.products)
        .group_by(Category.id, Category.name)
        .order_by(Category.id)
    ),
    mappings,
)

# --- subqueries, CTEs, EXISTS


def _max_price() -> Any:
    return (
        select(func.max(Product.price))
        .where(Product.category_id == Category.id)
        .scalar_subquery()
        .label("max_price")
    )


def _per_category() -> Any:
    sub = (
        select(
            Product.category_id,
            func.count(Product.id).label("n"),
            func.sum(Product.price).label("total"),
        )
        .group_by(Product.category_id)
        .subquery()
    )
    return (
        select(Category, sub.c.n, sub.c.total)
        .join(sub, sub.c.category_id == Category.id)
        .order_by(Category.id)
    )


def _sold_cte() -> Any:
    sold = (
        select(OrderItem.product_id, func.sum(OrderItem.quantity).label("qty"))
        .group_by(OrderItem.product_id)
        .cte("sold")
    )
    return (
        select(Product.name, sold.c.qty)
        .join(sold, sold.c.product_id == Product.id)
        .order_by(Product.id)
    )


def _recursive_cte() -> Any:
    nums = select(literal_column("1", Integer).label("n")).cte("nums", recursive=True)
    nums = nums.union_all(select(nums.c.n + 1).where(nums.c.n < 5))
    return select(Product).join(nums, nums.c.n == Product.id).order_by(Product.id)


statement(
    "subquery_scalar_in_select",
    lambda: select(Category.name, _max_price()).order_by(Category.id),
    rows,
)
statement(
    "subquery_scalar_in_where",
    lambda: products(Product.price > select(func.avg(Product.price)).scalar_subquery()),
    scalars,
)
statement("subquery_in_from", _per_category, rows)
statement("cte", _sold_cte, rows)
statement("cte_recursive", _recursive_cte, scalars)
statement(
    "exists_in_where",
    lambda: (
        select(Customer)
        .where(exists().where(Order.customer_id == Customer.id, Order.id.in_([21, 32])))
        .order_by(Customer.id)
    ),
    scalars,
)
statement("exists_true_scalar", lambda: select(exists().where(Product.price > 39)), scalar)
statement("exists_false_scalar", lambda: select(exists().where(Product.price > 999)), scalar)
statement(
    "exists_relationship_any_has",
    lambda: products(Product.tags.any(Tag.label == "tag1"), Product.category.has(name="cat 2")),
    scalars,
)

# --- IN lists, and parameter values that must give distinct entries


statement("in_list", lambda: products(Product.id.in_([3, 5, 8])), scalars)
statement("in_empty_list", lambda: products(Product.id.in_([])), scalars)
statement("not_in_empty_list", lambda: products(Product.id.not_in([])).limit(3), scalars)
statement(
    "in_empty_list_columns",
    lambda: select(Product.id, Product.name).where(Product.id.in_([])),
    rows,
)


@session_case("in_expanding_param_two_values")
def _in_expanding(s: Session, tag: Tagger) -> Any:
    stmt = tag(products(Product.id.in_(bindparam("ids", expanding=True))))
    return one_by_one(
        s,
        lambda: s.scalars(stmt, {"ids": [2, 3]}).all(),
        lambda: s.scalars(stmt, {"ids": [5]}).all(),
    )


@session_case("limit_two_values")
def _limit_values(s: Session, tag: Tagger) -> Any:
    return one_by_one(
        s,
        lambda: s.scalars(tag(products().limit(2))).all(),
        lambda: s.scalars(tag(products().limit(3))).all(),
    )


@session_case("lambda_stmt_two_closure_values")
def _lambda_values(s: Session, tag: Tagger) -> Any:
    def query(bound: int) -> Any:
        base = tag(select(Product))
        stmt = lambda_stmt(lambda: base.where(Product.id < bound).order_by(Product.id))
        return s.scalars(stmt).all()

    return one_by_one(s, lambda: query(3), lambda: query(5))


# --- eager loading


def _loader_criteria(s: Session, tag: Tagger, option: Callable[[Any], Any]) -> Any:
    """Categories with products eagerly loaded under two price bounds, one after the other."""

    def query(bound: int) -> Any:
        stmt = select(Category).options(*option(bound)).order_by(Category.id)
        return s.scalars(tag(stmt)).all()

    return one_by_one(s, lambda: query(35), lambda: query(30))


def _with_category(product: Product) -> Any:
    return [product, raises(lambda: product.category)]


def _with_price(product: Product) -> Any:
    return [product, raises(lambda: product.price)]


statement(
    "joinedload_collection_unique",
    lambda: select(Category).options(joinedload(Category.products)).order_by(Category.id),
    unique_scalars,
)
statement(
    "joinedload_collection_unique_mappings",
    lambda: (
        select(Category)
        .options(joinedload(Category.products))
        .where(Category.id < 3)
        .order_by(Category.id)
    ),
    lambda r: r.unique().mappings().all(),
)
statement(
    "joinedload_collection_without_unique_raises",
    lambda: select(Category).options(joinedload(Category.products)),
    lambda r: raises(r.scalars().all),
)
statement(
    "joinedload_many_to_one",
    lambda: products(Product.id < 6).options(joinedload(Product.category)),
    scalars,
)
statement(
    "joinedload_many_to_many_unique",
    lambda: products(Product.id < 8).options(joinedload(Product.tags)),
    unique_scalars,
)
statement(
    "selectinload_three_levels",
    lambda: (
        select(Customer)
        .options(
            selectinload(Customer.orders).selectinload(Order.items).selectinload(OrderItem.product)
        )
        .order_by(Customer.id)
    ),
    scalars,
)
statement(
    "selectinload_then_joinedload",
    lambda: (
        select(Customer)
        .where(Customer.id.in_([2, 4]))
        .options(
            selectinload(Customer.orders).joinedload(Order.items).joinedload(OrderItem.product)
        )
        .order_by(Customer.id)
    ),
    scalars,
)
statement(
    "selectinload_many_to_many",
    lambda: products(Product.id <= 6).options(selectinload(Product.tags)),
    scalars,
)
statement(
    "subqueryload_collection",
    lambda: (
        select(Customer)
        .where(Customer.id < 4)
        .options(subqueryload(Customer.orders))
        .order_by(Customer.id)
    ),
    scalars,
)
statement(
    "joinedload_and_selectinload_mixed",
    lambda: (
        select(OrderItem)
        .where(OrderItem.id <= 6)
        .options(
            joinedload(OrderItem.product).selectinload(Product.tags), joinedload(OrderItem.order)
        )
        .order_by(OrderItem.id)
    ),
    scalars,
)
statement(
    "contains_eager",
    lambda: (
        select(Order)
        .join(Order.customer)
        .options(contains_eager(Order.customer))
        .where(Customer.id == 2)
        .order_by(Order.id)
    ),
    scalars,
)
statement(
    "immediateload_many_to_one",
    lambda: products(Product.id < 4).options(immediateload(Product.category)),
    scalars,
)


@session_case("selectinload_relationship_criteria_two_values")
def _relationship_criteria(s: Session, tag: Tagger) -> Any:
    return _loader_criteria(
        s, tag, lambda bound: [selectinload(Category.products.and_(Product.price > bound))]
    )


@session_case("with_loader_criteria_two_values")
def _with_loader_criteria(s: Session, tag: Tagger) -> Any:
    return _loader_criteria(
        s,
        tag,
        lambda bound: [
            selectinload(Category.products),
            with_loader_criteria(Product, lambda cls: cls.price > bound),
        ],
    )


statement(
    "raiseload_relationship_still_raises",
    lambda: products(Product.id == 1).options(raiseload(Product.category)),
    lambda r: _with_category(r.scalar_one()),
    xfail=None,
)
statement(
    "load_only_raiseload_still_raises",
    lambda: products(Product.id == 1).options(load_only(Product.name, raiseload=True)),
    lambda r: _with_price(r.scalar_one()),
    xfail=None,
)

# --- inheritance


def _with_polymorphic_all() -> Any:
    wp = with_polymorphic(Employee, [Engineer, Manager])
    return select(wp).order_by(wp.id)


def _with_polymorphic_filter() -> Any:
    wp = with_polymorphic(Employee, "*")
    return select(wp).where(wp.Engineer.language == "rust")


statement("joined_inheritance_polymorphic", lambda: select(Employee).order_by(Employee.id), scalars)
statement(
    "joined_inheritance_subclass",
    lambda: select(Engineer).where(Engineer.language == "python"),
    scalars,
)
statement("joined_inheritance_with_polymorphic", _with_polymorphic_all, scalars)
statement("joined_inheritance_with_polymorphic_filter", _with_polymorphic_filter, scalars)
statement(
    "joined_inheritance_selectin_polymorphic",
    lambda: (
        select(Employee)
        .options(selectin_polymorphic(Employee, [Engineer, Manager]))
        .order_by(Employee.id)
    ),
    scalars,
)
statement(
    "joined_inheritance_subclass_columns",
    lambda: select(Engineer.name, Engineer.language).order_by(Engineer.id),
    rows,
)
statement("single_table_inheritance_base", lambda: select(Note).order_by(Note.id), scalars)
statement("single_table_inheritance_subclass", lambda: select(Memo).order_by(Memo.id), scalars)
statement(
    "single_table_inheritance_columns",
    lambda: select(Memo.id, Memo.body, Memo.kind).order_by(Memo.id),
    rows,
)

# --- hybrid property, deferred columns, column_property


statement(
    "hybrid_in_where",
    lambda: products(Product.price_with_tax > decimal.Decimal(45)),
    scalars,
)
statement(
    "hybrid_in_select",
    lambda: select(Product.id, Product.price_with_tax).where(Product.id < 5).order_by(Product.id),
    rows,
)
statement("deferred_not_loaded", lambda: products(Product.id < 4), scalars)
statement(
    "deferred_undefer",
    lambda: products(Product.id < 4).options(undefer(Product.description)),
    scalars,
)
statement(
    "deferred_load_only",
    lambda: products(Product.id < 4).options(load_only(Product.name)),
    scalars,
)
statement(
    "deferred_defer_option",
    lambda: products(Product.id < 4).options(defer(Product.price), defer(Product.attrs)),
    scalars,
)
statement(
    "deferred_column_selected",
    lambda: select(Product.id, Product.description).where(Product.id < 4).order_by(Product.id),
    rows,
)
statement(
    "column_property_undefer",
    lambda: select(Category).options(undefer(Category.product_count)).order_by(Category.id),
    scalars,
)
statement(
    "column_property_in_select",
    lambda: select(Category.name, Category.product_count).order_by(Category.id),
    rows,
)
statement(
    "column_property_in_where",
    lambda: select(Category).where(Category.product_count >= 10).order_by(Category.id),
    scalars,
)

# --- JSON


statement(
    "json_values_and_nulls",
    lambda: select(Product.id, Product.attrs).order_by(Product.id).limit(7),
    rows,
)
statement("json_scalar", lambda: select(Product.attrs).where(Product.id == 4), scalar)
statement(
    "json_path_filter",
    lambda: (
        select(Product.id, Product.attrs)
        .where(Product.attrs["color"].as_string() == "red")
        .order_by(Product.id)
        .limit(5)
    ),
    rows,
)

# --- DISTINCT, UNION, from_statement


def _union_columns() -> Any:
    low = select(Product.id, Product.name).where(Product.id < 3)
    high = select(Product.id, Product.name).where(Product.id > 38)
    return union(low, high).order_by("id")


def _union_entities() -> Any:
    both = union_all(
        select(Product).where(Product.id < 3), select(Product).where(Product.id > 38)
    ).subquery()
    product = aliased(Product, both)
    return select(product).order_by(product.id)


statement(
    "distinct_column",
    lambda: select(Product.category_id).distinct().order_by(Product.category_id),
    scalars,
)
statement(
    "distinct_entity",
    lambda: (
        select(Category)
        .join(Category.products)
        .where(Product.price > 30)
        .distinct()
        .order_by(Category.id)
    ),
    scalars,
)
statement("union_columns", _union_columns, rows)
statement("union_entities_via_aliased", _union_entities, scalars)
statement(
    "from_statement_select",
    lambda: select(Product).from_statement(products(Product.id.in_([2, 4]))),
    scalars,
)
statement(
    "from_statement_text",
    lambda: select(Product).from_statement(
        text(
            "SELECT id, name, price, category_id, created, sku, attrs FROM product "
            "WHERE id IN (2, 4) ORDER BY id"
        )
    ),
    scalars,
    xfail=None,
)

# --- legacy Query


@session_case("legacy_query_all")
def _legacy_all(s: Session, tag: Tagger) -> Any:
    return tag(s.query(Product)).filter(Product.price > 30).order_by(Product.id).all()


@session_case("legacy_query_first")
def _legacy_first(s: Session, tag: Tagger) -> Any:
    return tag(s.query(Product)).filter(Product.category_id == 3).order_by(Product.id).first()


@session_case("legacy_query_one")
def _legacy_one(s: Session, tag: Tagger) -> Any:
    return tag(s.query(Product)).filter(Product.id == 9).one()


@session_case("legacy_query_count", hit=False)
def _legacy_count(s: Session, tag: Tagger) -> Any:
    return tag(s.query(Product)).filter(Product.price > 30).count()


@session_case("legacy_query_columns")
def _legacy_columns(s: Session, tag: Tagger) -> Any:
    return tag(s.query(Product.id, Product.price)).filter(Product.id < 4).order_by(Product.id).all()


@session_case("legacy_query_entity_and_column")
def _legacy_mixed(s: Session, tag: Tagger) -> Any:
    query = tag(s.query(Product, Category.name)).join(Product.category)
    return query.filter(Product.id < 4).order_by(Product.id).all()


@session_case("legacy_query_scalar")
def _legacy_scalar(s: Session, tag: Tagger) -> Any:
    return tag(s.query(func.sum(Product.price))).filter(Product.category_id == 1).scalar()


@session_case("legacy_query_joinedload_uniqued")
def _legacy_joinedload(s: Session, tag: Tagger) -> Any:
    return tag(s.query(Category)).options(joinedload(Category.products)).order_by(Category.id).all()


@session_case("legacy_query_only_return_tuples")
def _legacy_tuples(s: Session, tag: Tagger) -> Any:
    def query() -> Any:
        return tag(s.query(Product)).filter(Product.id < 3).order_by(Product.id)

    return one_by_one(s, lambda: query().all(), lambda: query().only_return_tuples(True).all())


# ---------------------------------------------------------------------- tests


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


def test_corpus_names_are_unique() -> None:
    names = [c.name for c in CORPUS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", [_param(c) for c in CORPUS])
def test_cached_result_equals_uncached(case: Case, engine: Any, sql: Any, cache: Any) -> None:
    def run(tag: Tagger) -> Any:
        with Session(engine) as session:
            return render(case.run(session, tag))

    def counters() -> dict[str, Any]:
        return cache.stats()[case.region]

    # (a) uncached: the cache is installed but the query is not tagged
    expected = run(lambda q: q)
    assert counters()["hits"] == counters()["misses"] == 0, "the untagged run used the cache"

    # (b) cached, first run: a miss, whose result is the database's
    mark = sql.count
    miss = run(case.tagger())
    assert sql.since(mark) > 0 and counters()["misses"] > 0, "the tagged run was not a miss"
    assert miss == expected

    # (c) cached, second run in a fresh session: a hit without SQL, the same result
    mark = sql.count
    hit = run(case.tagger())
    emitted = sql.statements[mark:]
    assert hit == expected
    if case.hit:
        assert emitted == [], f"SQL on what should be a hit; {case.region}: {counters()}"
        assert counters()["hits"] > 0
