"""Random reads: generated as plain JSON-able specs, built into statements on demand.

A spec is a dict with ``"k"`` (its kind) and parameters; :func:`gen_read`
draws one from a seeded ``random.Random``, :func:`run_read` executes it in a
session either tagged for the cache or not, and returns the outcome rendered
to plain comparable values (:func:`render`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import random
from typing import Any

from sqlalchemy import (
    Column,
    and_,
    exists,
    func,
    inspect,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.orm import (
    Load,
    aliased,
    defaultload,
    defer,
    immediateload,
    joinedload,
    lazyload,
    load_only,
    selectinload,
    subqueryload,
    with_expression,
    with_loader_criteria,
    with_polymorphic,
)

from sqla_querycache import FromCache, NoCache

from . import schema as S
from .schema import Alert, Audit, Client, Event, Item, Owner, Person, Staff, Tag

# ------------------------------------------------------------------ rendering


def render(value: Any) -> Any:
    """Plain values: rows of column values; entities as class, identity, loaded
    columns and loaded relationships (as sorted identities). Reads loaded state only."""
    if value is None:
        return None
    t = type(value)
    if hasattr(t, "_sa_class_manager"):
        return _entity(value)
    if isinstance(value, (Row, tuple, list)):
        return tuple(render(v) for v in value)
    if t is decimal.Decimal:
        return ("Decimal", str(value))
    if t is dt.datetime:
        return ("datetime", value.isoformat())
    if t is float:
        return ("float", repr(value))
    return (t.__name__, value)


def _flush_expired() -> frozenset[tuple[str, str]]:
    """(class name, attribute) of every column property a flush expires: SQL
    expressions (not plain columns) with ``expire_on_flush``."""
    out = set()
    for mapper in S.FuzzBase.registry.mappers:
        for p in mapper.column_attrs:
            if p.expire_on_flush and any(not isinstance(c, Column) for c in p.columns):
                out.add((mapper.class_.__name__, p.key))
    return frozenset(out)


def without_flush_expired(rendered: Any) -> Any:
    """``rendered`` (from :func:`render`) without the attributes a flush expires."""
    drop = _flush_expired()
    if isinstance(rendered, tuple):
        if len(rendered) == 5 and rendered[0] == "E":
            _, cls, ident, columns, related = rendered
            columns = tuple(c for c in columns if (cls, c[0]) not in drop)
            return ("E", cls, ident, columns, related)
        return tuple(without_flush_expired(v) for v in rendered)
    return rendered


def _ident(obj: Any) -> Any:
    state = inspect(obj)
    if state.key is not None:
        return (type(obj).__name__, tuple(state.key[1]))
    return (type(obj).__name__, "pending", state.dict.get("id"))


def _entity(obj: Any) -> Any:
    state = inspect(obj)
    loaded = state.dict
    columns = tuple(
        (p.key, render(loaded[p.key])) for p in state.mapper.column_attrs if p.key in loaded
    )
    related = []
    for r in state.mapper.relationships:
        if r.key not in loaded:
            continue
        v = loaded[r.key]
        if v is None:
            related.append((r.key, None))
        elif isinstance(v, (list, set, tuple)) or hasattr(v, "__iter__"):
            related.append((r.key, tuple(sorted((_ident(o) for o in v), key=repr))))
        else:
            related.append((r.key, _ident(v)))
    return ("E", *_ident(obj), columns, tuple(related))


# ----------------------------------------------------------------- generating

#: entity -> filters: name -> (draw a parameter, build the criterion on entity E)
FILTERS: dict[str, dict[str, Any]] = {
    "Owner": {
        "active": (lambda r: r.random() < 0.5, lambda E, p: E.active == p),
        "balance_gt": (lambda r: r.randrange(0, 50), lambda E, p: E.balance > p),
        "name_like": (lambda r: f"%{r.randrange(1, 7)}", lambda E, p: E.name.like(p)),
        "n_items_ge": (lambda r: r.randrange(0, 5), lambda E, p: E.n_items >= p),
        "parent_null": (
            lambda r: r.random() < 0.5,
            lambda E, p: E.parent_id.is_(None) if p else E.parent_id.isnot(None),
        ),
        "has_items": (lambda r: r.randrange(0, 5), lambda E, p: E.items.any(Item.qty > p)),
        "id_in": (lambda r: sorted(r.sample(range(1, 9), 3)), lambda E, p: E.id.in_(p)),
        "has_alert": (lambda r: None, lambda E, p: E.events.any(Event.kind == "alert")),
    },
    "Item": {
        "qty_gt": (lambda r: r.randrange(0, 6), lambda E, p: E.qty > p),
        "flag": (lambda r: r.random() < 0.5, lambda E, p: E.flag == p),
        "owner": (lambda r: r.randrange(1, 8), lambda E, p: E.owner_id == p),
        "price_lt": (lambda r: r.randrange(1, 9), lambda E, p: E.price < p),
        "has_tag": (lambda r: r.randrange(1, 6), lambda E, p: E.tags.any(Tag.id == p)),
        "owner_active": (lambda r: None, lambda E, p: E.owner.has(Owner.active.is_(True))),
        "audited": (
            lambda r: None,
            lambda E, p: exists().where(Audit.item_id == E.id).correlate(E),
        ),
    },  # fmt: skip
    "Tag": {
        "label_like": (lambda r: f"%{r.randrange(1, 6)}%", lambda E, p: E.label.like(p)),
        "used": (lambda r: None, lambda E, p: E.items.any()),
    },
    "Person": {
        "name_like": (lambda r: f"%{r.randrange(1, 7)}", lambda E, p: E.name.like(p)),
        "owner_null": (lambda r: None, lambda E, p: E.owner_id.is_(None)),
        "owner_in": (lambda r: sorted(r.sample(range(1, 7), 2)), lambda E, p: E.owner_id.in_(p)),
    },
    "Event": {
        "at_gt": (lambda r: r.randrange(0, 40), lambda E, p: E.at > S.T0 + dt.timedelta(hours=p)),
        "owner": (lambda r: r.randrange(1, 7), lambda E, p: E.owner_id == p),
        "severe": (lambda r: r.randrange(0, 4), lambda E, p: E.severity >= p),
    },
    "Audit": {
        "amount_gt": (lambda r: r.randrange(0, 16), lambda E, p: E.amount > p),
        "item_null": (lambda r: None, lambda E, p: E.item_id.is_(None)),
    },
}
FILTERS["Staff"] = {
    **FILTERS["Person"],
    "salary_gt": (lambda r: r.randrange(1000, 1400), lambda E, p: E.salary > p),
}
FILTERS["Client"] = {**FILTERS["Person"],
                     "tier": (lambda r: r.randrange(0, 3), lambda E, p: E.tier == p)}  # fmt: skip
FILTERS["Alert"] = FILTERS["Event"]
FILTERS["Reminder"] = FILTERS["Event"]

#: entity -> loader options: name -> build(E); names starting "jc_" are joined collections
OPTIONS: dict[str, dict[str, Any]] = {
    "Owner": {
        "jc_items": lambda E: joinedload(E.items),
        "s_items": lambda E: selectinload(E.items),
        "q_items": lambda E: subqueryload(E.items),
        "i_parent": lambda E: immediateload(E.parent),
        "j_parent": lambda E: joinedload(E.parent),
        "s_children": lambda E: selectinload(E.children),
        "jc_items_s_tags": lambda E: joinedload(E.items).selectinload(Item.tags),
        "q_items_j_tags": lambda E: subqueryload(E.items).joinedload(Item.tags),
        "s_children_s_items": lambda E: selectinload(E.children).selectinload(Owner.items),
        "lazy_items": lambda E: lazyload(E.items),
        "s_star": lambda E: selectinload("*"),
        "load_s_star": lambda E: Load(E).selectinload("*"),
        "s_events": lambda E: selectinload(E.events),
        "s_persons": lambda E: selectinload(E.persons),
        "s_persons_poly": lambda E: selectinload(E.persons.of_type(with_polymorphic(Person, "*"))),
        "s_items_s_audits": lambda E: selectinload(E.items).selectinload(Item.audits),
        "defer_balance": lambda E: defer(E.balance),
        "load_only_name": lambda E: load_only(E.name),
        "default_items_s_star": lambda E: defaultload(E.items).selectinload("*"),
    },
    "Item": {
        "j_owner": lambda E: joinedload(E.owner),
        "i_owner": lambda E: immediateload(E.owner),
        "s_tags": lambda E: selectinload(E.tags),
        "jc_tags": lambda E: joinedload(E.tags),
        "q_tags": lambda E: subqueryload(E.tags),
        "s_audits": lambda E: selectinload(E.audits),
        "jc_audits": lambda E: joinedload(E.audits),
        "j_owner_s_children": lambda E: joinedload(E.owner).selectinload(Owner.children),
        "s_star": lambda E: selectinload("*"),
        "load_lazy_star": lambda E: Load(E).lazyload("*"),
        "load_j_star": lambda E: Load(E).joinedload("*"),
        "with_expr": lambda E: with_expression(E.score, E.qty * 2 + 1),
    },
    "Tag": {
        "s_items": lambda E: selectinload(E.items),
        "jc_items": lambda E: joinedload(E.items),
        "s_items_j_owner": lambda E: selectinload(E.items).joinedload(Item.owner),
    },
    "Person": {"j_owner": lambda E: joinedload(E.owner),
                "s_owner_s_items": lambda E: selectinload(E.owner).selectinload(Owner.items)},
    "Event": {"j_owner": lambda E: joinedload(E.owner), "s_owner": lambda E: selectinload(E.owner)},
    "Audit": {},
}  # fmt: skip
for _sub, _base in (("Staff", "Person"), ("Client", "Person"), ("Alert", "Event"),
                    ("Reminder", "Event")):  # fmt: skip
    OPTIONS[_sub] = OPTIONS[_base]

ENTITY_WEIGHTS = {"Owner": 5, "Item": 6, "Tag": 2, "Person": 3, "Staff": 1, "Client": 1,
                  "Event": 2, "Alert": 1, "Reminder": 1, "Audit": 2}  # fmt: skip
PK_RANGE = 9  # ids drawn for session.get / filters: the data set's ids plus a few missing


def option_group(name: str) -> str:
    """Options of one group set the same relationship's strategy: never two of them."""
    if "star" in name and not name.startswith("default"):
        return "star"
    return name.split("_")[1]


def pick_options(r: random.Random, ent: str, n: int) -> list[str]:
    out: list[str] = []
    groups: set[str] = set()
    for name in r.sample(sorted(OPTIONS[ent]), len(OPTIONS[ent])):
        if len(out) >= n:
            break
        if option_group(name) not in groups:
            groups.add(option_group(name))
            out.append(name)
    return sorted(out)


def _orm_spec(r: random.Random) -> dict[str, Any]:
    ent = r.choices(list(ENTITY_WEIGHTS), list(ENTITY_WEIGHTS.values()))[0]
    filters = FILTERS[ent]
    names = r.sample(sorted(filters), min(len(filters), r.choice([0, 1, 1, 2])))
    filt = [[n, filters[n][0](r)] for n in names]
    opts = pick_options(r, ent, r.choice([0, 1, 1, 2]))
    spec: dict[str, Any] = {"k": "orm", "ent": ent, "filt": filt, "opts": opts,
                            "limit": r.choice([None, None, 2, 3]),
                            "desc": r.random() < 0.3,
                            "alias": r.random() < 0.15,
                            "wp": ent == "Person" and r.random() < 0.5,
                            "or": len(filt) == 2 and r.random() < 0.3}  # fmt: skip
    if ent in ("Owner", "Item", "Tag") and r.random() < 0.15:
        spec["lc"] = r.randrange(0, 5)  # with_loader_criteria(Item, Item.qty > lc)
    return spec


#: column / aggregate / multi-entity ORM reads; each builds a statement and says if ordered
COLUMN_READS: dict[str, Any] = {
    "count_by_owner": lambda p: select(Item.owner_id, func.count(Item.id), func.sum(Item.qty))
    .group_by(Item.owner_id).having(func.count(Item.id) >= p % 3).order_by(Item.owner_id),
    "owner_n_items": lambda p: select(Owner.id, Owner.name, Owner.n_items)
    .where(Owner.n_items >= p % 4).order_by(Owner.id),
    "item_audit_join": lambda p: select(Item.id, Item.name, Audit.note, Audit.amount)
    .join(Audit, Audit.item_id == Item.id).where(Audit.amount > p).order_by(Item.id, Audit.id),
    "tags_per_owner": lambda p: select(Owner.id, func.count(Tag.id))
    .join(Owner.items).join(Item.tags).group_by(Owner.id).order_by(Owner.id),
    "count_persons": lambda p: select(func.count()).select_from(Person),
    "max_event": lambda p: select(func.max(Event.at), func.count(Event.id)).where(Event.owner_id != p),
    "staff_salary": lambda p: select(Staff.name, Staff.salary)
    .where(Staff.salary > 1000 + p * 50).order_by(Staff.id),
    "owner_item_pairs": lambda p: select(Owner, Item).join(Owner.items)
    .where(Item.qty > p % 5).order_by(Owner.id, Item.id),
    "item_owner_name": lambda p: select(Item, Owner.name).join(Item.owner)
    .where(Owner.id <= p % 6 + 1).order_by(Item.id),
    "literal_count": lambda p: select(Item.id, literal_column("(SELECT count(*) FROM fz_tag)")
                                      .label("ntags")).where(Item.id <= p + 2).order_by(Item.id),
    "literal_link_count": lambda p: select(
        literal_column("(SELECT count(*) FROM fz_item_tag)").label("links")),
    "owners_with_events": lambda p: select(Owner.id)
    .where(exists().where(Event.owner_id == Owner.id)).order_by(Owner.id),
    "union_ids": lambda p: select(Item.id).where(Item.qty > p % 5)
    .union(select(Audit.item_id).where(Audit.item_id.isnot(None))).order_by("id"),
    "poly_count": lambda p: select(Person.kind, func.count(Person.id))
    .group_by(Person.kind).order_by(Person.kind),
    "sti_count": lambda p: select(func.count(Alert.id)),
    "child_parent": lambda p: _child_parent(p),
    "scalar_subq": lambda p: select(Tag.id, select(func.count()).select_from(S.item_tag)
                                    .where(S.item_tag.c.tag_id == Tag.id).scalar_subquery()
                                    .label("n")).order_by(Tag.id),
    "distinct_owner": lambda p: select(Owner).join(Owner.items).where(Item.flag.is_(True))
    .distinct().order_by(Owner.id),
    "entity_and_audit": lambda p: select(Item, Audit).join(Audit, Audit.item_id == Item.id)
    .order_by(Audit.id),
    "with_poly_tuple": lambda p: _wp_tuple(p),
}  # fmt: skip


def _child_parent(p: int) -> Any:
    parent = aliased(Owner)
    return (select(Owner.id, parent.name).join(parent, Owner.parent)
            .order_by(Owner.id))  # fmt: skip


def _wp_tuple(p: int) -> Any:
    wp = with_polymorphic(Person, [Staff, Client])
    return select(wp, Owner.name).outerjoin(wp.owner).order_by(wp.id)


CORE_READS: dict[str, Any] = {
    "items": lambda p: select(S.item_t.c.id, S.item_t.c.qty, S.item_t.c.price)
    .where(S.item_t.c.qty >= p % 6).order_by(S.item_t.c.id),
    "links": lambda p: select(S.item_tag).order_by(S.item_tag.c.item_id, S.item_tag.c.tag_id),
    "link_join": lambda p: select(S.tag_t.c.label, func.count(S.item_tag.c.item_id))
    .select_from(S.tag_t.outerjoin(S.item_tag)).group_by(S.tag_t.c.label)
    .order_by(S.tag_t.c.label),
    "audits": lambda p: select(S.audit_t).where(S.audit_t.c.amount > p).order_by(S.audit_t.c.id),
    "staff_join": lambda p: select(S.person_t.c.id, S.person_t.c.name, S.staff_t.c.salary)
    .select_from(S.person_t.join(S.staff_t)).order_by(S.person_t.c.id),
    "events": lambda p: select(S.event_t.c.id, S.event_t.c.kind, S.event_t.c.at)
    .where(S.event_t.c.owner_id != p % 7).order_by(S.event_t.c.id),
    "owner_children": lambda p: select(S.owner_t.c.id, S.owner_t.c.parent_id)
    .order_by(S.owner_t.c.id),
    "clients": lambda p: select(S.client_t).order_by(S.client_t.c.id),
}  # fmt: skip


def text_reads(kind: str) -> dict[str, str]:
    """Textual SELECTs (``:p`` is the parameter) on this database."""
    audit = S.audit_sql_name(kind)
    out = {
        "items": "SELECT id, name, qty FROM fz_item WHERE qty > :p ORDER BY id",
        "cte": "WITH t AS (SELECT owner_id, count(*) AS n FROM fz_item GROUP BY owner_id) "
        "SELECT o.id, o.name, t.n FROM fz_owner o JOIN t ON t.owner_id = o.id "
        "WHERE t.n >= :p ORDER BY o.id",
        "cte_links": "WITH x AS (SELECT tag_id FROM fz_item_tag) "
        "SELECT tag_id, count(*) FROM x GROUP BY tag_id HAVING count(*) > :p ORDER BY tag_id",
        "audit_join": f"SELECT i.id, a.note FROM fz_item i JOIN {audit} a "
        "ON a.item_id = i.id WHERE a.amount > :p ORDER BY a.id",
        "audit_plain": f"SELECT id, amount FROM {audit} WHERE id > :p ORDER BY id",
        "lower": "select /* c */ id, name from fz_person where owner_id is null or id > :p "
        "order by id",
        "sub": "SELECT * FROM (SELECT e.id, e.title FROM fz_event e WHERE e.id > :p) s ORDER BY s.id",
        "count_links": "SELECT count(*) FROM fz_item_tag WHERE tag_id > :p",
        "staff": "SELECT p.id, s.salary FROM fz_person p JOIN fz_staff s ON s.id = p.id "
        "WHERE p.id > :p ORDER BY p.id",
    }
    if kind != "sqlite":
        out["paren"] = "(SELECT id, label FROM fz_tag WHERE id > :p) ORDER BY id"
        out["paren_union"] = ("(SELECT id FROM fz_item WHERE qty > :p) UNION "
                              "(SELECT item_id FROM fz_item_tag) ORDER BY 1")  # fmt: skip
        out["for_update"] = "SELECT id, qty FROM fz_item WHERE id = :p FOR UPDATE"
    return out


#: reads whose result may differ between executions: they must never be served from a cache
VOLATILE = ("now", "random", "text_now", "sequence", "cte_update", "for_update_orm")


def volatile_reads(kind: str) -> list[str]:
    out = ["now", "random", "text_now", "for_update_orm"]
    if kind == "postgresql":
        out.append("sequence")
    return out


def gen_read(r: random.Random, kind: str) -> dict[str, Any]:
    """One random read spec for a database of ``kind``."""
    x = r.random()
    if x < 0.45:
        return _orm_spec(r)
    if x < 0.62:
        return {"k": "cols", "q": r.choice(sorted(COLUMN_READS)), "p": r.randrange(0, 6)}
    if x < 0.70:
        return {"k": "core", "q": r.choice(sorted(CORE_READS)), "p": r.randrange(0, 6)}
    if x < 0.82:
        return {"k": "text", "q": r.choice(sorted(text_reads(kind))), "p": r.randrange(0, 4)}
    if x < 0.93:
        ent = r.choice(["Owner", "Item", "Tag", "Person", "Staff", "Event", "Alert", "Audit"])
        opts = pick_options(r, ent, r.choice([0, 0, 1]))
        return {"k": "get", "ent": ent, "id": r.randrange(1, PK_RANGE), "opts": opts}
    if x < 0.96:  # the identity cache: a plain get, then a lazy load from it
        ent, rel = r.choice(LAZY)
        return {"k": "lazy", "ent": ent, "id": r.randrange(1, PK_RANGE), "rel": rel}
    return {"k": "volatile", "q": r.choice(volatile_reads(kind))}


#: (entity, relationship) pairs read lazily after a plain session.get
LAZY = [("Owner", None), ("Item", None), ("Owner", "parent"), ("Owner", "children"),
        ("Owner", "items"), ("Owner", "events"), ("Owner", "persons"), ("Item", "owner"),
        ("Item", "tags"), ("Item", "audits"), ("Person", "owner"), ("Event", "owner"),
        ("Staff", None)]  # fmt: skip


def is_volatile(spec: dict[str, Any]) -> bool:
    return spec["k"] == "volatile" or (spec["k"] == "text" and spec["q"] == "for_update")


# ------------------------------------------------------------------- running


def _orm_stmt(spec: dict[str, Any]) -> tuple[Any, bool]:
    """The statement of an ``orm`` spec, and whether its result needs ``unique()``."""
    cls = S.MODELS[spec["ent"]]
    if spec.get("wp"):
        E = with_polymorphic(cls, "*")
    elif spec.get("alias"):
        E = aliased(cls)
    else:
        E = cls
    crit = [FILTERS[spec["ent"]][n][1](E, p) for n, p in spec["filt"]]
    stmt = select(E)
    if crit:
        stmt = stmt.where(or_(*crit) if spec.get("or") else and_(*crit))
    order = E.id.desc() if spec.get("desc") else E.id
    stmt = stmt.order_by(order)
    if spec.get("limit"):
        stmt = stmt.limit(spec["limit"])
    opts = [OPTIONS[spec["ent"]][n](E) for n in spec["opts"]]
    if "lc" in spec:
        opts.append(with_loader_criteria(Item, Item.qty > spec["lc"], include_aliases=True))
    if opts:
        stmt = stmt.options(*opts)
    unique = any(n.startswith("jc_") or n == "load_j_star" for n in spec["opts"])
    return stmt, unique


def _volatile_stmt(q: str, kind: str) -> Any:
    if q == "now":
        return select(func.current_timestamp())
    if q == "random":
        return select(func.rand() if kind == "mariadb" else func.random())
    if q == "text_now":
        return text("SELECT CURRENT_TIMESTAMP")
    if q == "sequence":
        return select(S.SEQUENCE.next_value())
    if q == "for_update_orm":
        return select(Item).where(Item.id == 1).with_for_update()
    raise AssertionError(q)


def cte_update_stmt(item_id: int) -> Any:
    """PostgreSQL: a SELECT whose CTE updates rows (it must run every time)."""
    t = S.item_t
    upd = (update(t).where(t.c.id == item_id).values(qty=t.c.qty + 10)
           .returning(t.c.id, t.c.qty).cte("u"))  # fmt: skip
    return select(upd.c.id, upd.c.qty)


def tag_of(mode: str) -> Any:
    """How a cached read is tagged: ``FromCache()``, ``FromCache("hot")``, an option."""
    if mode == "hot":
        return lambda q: q.options(FromCache("hot"))
    if mode == "opt":
        return lambda q: q.execution_options(cache_region="default")
    if mode == "session":  # the session's own region does it
        return lambda q: q
    return lambda q: q.options(FromCache())


def run_read(session: Any, spec: dict[str, Any], kind: str, cached: bool, mode: str) -> Any:
    """Execute ``spec`` in ``session``: tagged for the cache (``mode``) or with ``NoCache()``
    (text: on the session's connection, past the ORM); the outcome rendered."""
    k = spec["k"]
    tag = tag_of(mode) if cached else (lambda q: q.options(NoCache()))
    if k == "orm":
        stmt, unique = _orm_stmt(spec)
        result = session.execute(tag(stmt))
        if unique:
            result = result.unique()
        return render(result.scalars().all())
    if k == "cols":
        stmt = COLUMN_READS[spec["q"]](spec["p"])
        result = session.execute(tag(stmt))
        if spec["q"] in ("owner_item_pairs", "item_owner_name", "entity_and_audit",
                         "with_poly_tuple"):  # fmt: skip
            return render([tuple(r) for r in result.all()])
        return render(result.all())
    if k == "core":
        stmt = CORE_READS[spec["q"]](spec["p"])
        return render(session.execute(tag(stmt)).all())
    if k == "text":
        stmt = text(text_reads(kind)[spec["q"]]).bindparams(p=spec["p"])
        if cached:
            opts = (
                {} if mode == "session" else {"cache_region": "hot" if mode == "hot" else "default"}
            )
            return render(session.execute(stmt, execution_options=opts).all())
        return render(session.connection().execute(stmt).all())
    if k == "get":
        cls = S.MODELS[spec["ent"]]
        opts = [OPTIONS[spec["ent"]][n](cls) for n in spec["opts"]]
        if cached:
            region = "hot" if mode == "hot" else "default"
            opts.append(FromCache(region))
        else:
            opts.append(NoCache())
        return render(session.get(cls, spec["id"], options=opts))
    if k == "lazy":
        # cached: through the identity region (no option at all); uncached:
        # NoCache, which the object's lazy loads inherit
        cls = S.MODELS[spec["ent"]]
        obj = session.get(cls, spec["id"]) if cached else session.get(
            cls, spec["id"], options=[NoCache()])  # fmt: skip
        if obj is None or spec["rel"] is None:
            return render(obj)
        return render([obj, getattr(obj, spec["rel"])])
    if k == "volatile":
        stmt = _volatile_stmt(spec["q"], kind)
        if spec["q"] == "text_now":
            if cached:
                return render(
                    session.execute(stmt, execution_options={"cache_region": "default"}).all()
                )
            return render(session.connection().execute(stmt).all())
        return render(session.execute(tag(stmt)).all())
    raise AssertionError(k)


def describe(spec: dict[str, Any]) -> str:
    """A one-line Python-ish rendering of a read spec (for traces)."""
    k = spec["k"]
    if k == "orm":
        ent = spec["ent"]
        wrap = (
            f"with_polymorphic({ent}, '*')"
            if spec.get("wp")
            else (f"aliased({ent})" if spec.get("alias") else ent)
        )
        parts = [f"select({wrap})"]
        if spec["filt"]:
            joiner = " | " if spec.get("or") else ", "
            parts.append(f".where({joiner.join(f'{n}({p!r})' for n, p in spec['filt'])})")
        parts.append(f".order_by(id{' desc' if spec.get('desc') else ''})")
        if spec.get("limit"):
            parts.append(f".limit({spec['limit']})")
        if spec["opts"] or "lc" in spec:
            opts = list(spec["opts"])
            if "lc" in spec:
                opts.append(f"with_loader_criteria(Item, Item.qty > {spec['lc']})")
            parts.append(f".options({', '.join(opts)})")
        return "".join(parts)
    if k in ("cols", "core", "text"):
        return f"{k}:{spec['q']}(p={spec['p']})"
    if k == "get":
        return f"session.get({spec['ent']}, {spec['id']}, options={spec['opts']})"
    if k == "lazy":
        rel = f".{spec['rel']}" if spec["rel"] else ""
        return f"session.get({spec['ent']}, {spec['id']}){rel}  # identity cache"
    return f"volatile:{spec['q']}"
