"""Random writes: ORM changes through a session, bulk statements, Core and textual DML.

Write specs are plain dicts (``"t"`` is the kind). ORM kinds need a session;
Core and textual kinds run on a connection (a session's, a shared one, or an
AUTOCOMMIT one). A write whose target row is missing does nothing.
"""

from __future__ import annotations

import datetime as dt
import decimal
import random
from typing import Any

from sqlalchemy import delete, insert, text, update

from . import schema as S
from .schema import Alert, Audit, Client, Event, Item, Owner, Person, Reminder, Staff, Tag

MOD_ATTRS = {
    "Owner": ["name", "active", "balance", "created"],
    "Item": ["qty", "price", "flag", "name"],
    "Tag": ["label"],
    "Person": ["name"],
    "Staff": ["salary", "name"],
    "Client": ["tier"],
    "Event": ["title", "severity", "at"],
    "Alert": ["severity"],
    "Audit": ["note", "amount", "item_id"],
}
BULK_SYNC = [False, "evaluate", "fetch", "auto"]


def _value(r: random.Random, attr: str) -> Any:
    n = r.randrange(0, 60)
    if attr in ("name", "label", "title", "note"):
        return f"{attr} {n}"
    if attr == "active" or attr == "flag":
        return r.random() < 0.5
    if attr in ("balance", "price", "salary", "amount"):
        return f"{n}.{r.randrange(100):02d}"  # a Decimal, as str to stay JSON-able
    if attr in ("created", "at"):
        return n
    if attr in ("qty", "tier", "severity", "item_id"):
        return n % 9
    raise AssertionError(attr)


def _py(attr: str, v: Any) -> Any:
    if attr in ("balance", "price", "salary", "amount"):
        return decimal.Decimal(v)
    if attr in ("created", "at"):
        return S.T0 + dt.timedelta(hours=v)
    return v


class Ids:
    """New primary keys for inserts (per trace, deterministic)."""

    def __init__(self) -> None:
        self.n = 100

    def __call__(self) -> int:
        self.n += 1
        return self.n


def _id(r: random.Random) -> int:
    return r.randrange(1, 9)


def gen_orm_write(r: random.Random, ids: Ids) -> dict[str, Any]:
    x = r.randrange(100)
    if x < 10:
        w = {"t": "add_item", "id": ids(), "owner": _id(r), "qty": r.randrange(6),
             "tags": sorted(r.sample(range(1, 6), r.randrange(3)))}  # fmt: skip
    elif x < 15:
        w = {"t": "add_owner", "id": ids(), "parent": r.choice([None, _id(r)])}
    elif x < 19:
        w = {"t": "add_person", "id": ids(), "cls": r.choice(["Staff", "Client", "Person"]),
             "owner": r.choice([None, _id(r)])}  # fmt: skip
    elif x < 23:
        w = {"t": "add_event", "id": ids(), "cls": r.choice(["Event", "Alert", "Reminder"]),
             "owner": _id(r)}  # fmt: skip
    elif x < 26:
        w = {"t": "add_audit", "id": ids(), "item": r.randrange(1, 15)}
    elif x < 45:
        ent = r.choice(sorted(MOD_ATTRS))
        attr = r.choice(MOD_ATTRS[ent])
        ident = r.randrange(1, 15) if ent == "Item" else _id(r)
        w = {"t": "mod", "ent": ent, "id": ident, "attr": attr, "v": _value(r, attr)}
    elif x < 53:
        ent = r.choice(["Owner", "Item", "Item", "Tag", "Person", "Staff", "Event", "Audit"])
        w = {"t": "del", "ent": ent, "id": r.randrange(1, 15) if ent == "Item" else _id(r)}
    elif x < 60:
        w = {"t": "move_item", "id": r.randrange(1, 15), "owner": _id(r)}
    elif x < 65:
        w = {"t": "move_child", "id": _id(r), "parent": r.choice([None, _id(r)])}
    elif x < 75:
        w = {"t": "m2m", "item": r.randrange(1, 15), "tag": r.randrange(1, 6),
             "add": r.random() < 0.5}  # fmt: skip
    elif x < 80:
        w = {"t": "append", "owner": _id(r), "id": ids()}
    elif x < 88:
        ent = r.choice(["Item", "Owner", "Staff", "Event", "Alert", "Audit"])
        w = {"t": "bulk_upd", "ent": ent, "p": r.randrange(0, 6), "sync": r.choice(BULK_SYNC)}
    elif x < 94:
        ent = r.choice(["Item", "Event", "Audit", "Tag", "Owner"])
        w = {"t": "bulk_del", "ent": ent, "id": r.randrange(1, 15) if ent == "Item" else _id(r),
             "sync": r.choice(BULK_SYNC)}  # fmt: skip
    else:
        w = {"t": "bulk_ins", "id": ids()}
    w["flush"] = r.random() < 0.6
    return w


def gen_core_write(r: random.Random, ids: Ids, kind: str) -> dict[str, Any]:
    x = r.randrange(100)
    if x < 30:
        table = r.choice(["fz_item", "fz_owner", "fz_event", "fz_audit", "fz_staff", "fz_tag"])
        return {"t": "core_upd", "table": table, "id": _id(r), "v": r.randrange(50)}
    if x < 45:
        table = r.choice(["fz_owner", "fz_item", "fz_tag", "fz_person", "fz_event", "fz_audit"])
        return {"t": "core_del", "table": table, "id": _id(r)}
    if x < 52:
        return {"t": "core_ins", "id": ids(), "item": r.randrange(1, 15)}
    sqls = text_writes(kind)
    return {"t": r.choice(["text", "text", "driver"]), "q": r.choice(sorted(sqls)), "id": _id(r),
            "v": r.randrange(50)}  # fmt: skip


def text_writes(kind: str) -> dict[str, str]:
    audit = S.audit_sql_name(kind)
    out = {
        "item_qty": "UPDATE fz_item SET qty = qty + 1 WHERE id = {id}",
        "del_owner": "DELETE FROM fz_owner WHERE id = {id}",
        "audit_note": f"UPDATE {audit} SET note = 'n{{v}}' WHERE id = {{id}}",
        "del_tag": "DELETE FROM fz_tag WHERE id = {id}",
        "ins_link": "INSERT INTO fz_item_tag (item_id, tag_id) VALUES ({i14}, {t5})",
        "unparent": "UPDATE fz_owner SET parent_id = NULL WHERE id = {id}",
        "lower_event": "update fz_event set title = 'x{v}' where id = {id}",
        "del_person": "DELETE FROM fz_person WHERE id = {id}",
        "del_audit": f"DELETE FROM {audit} WHERE id = {{id}}",
        "staff_salary": "UPDATE fz_staff SET salary = salary + {v} WHERE id = {id}",
        "comment_first": "/* maintenance */ UPDATE fz_item SET price = price + 1 WHERE id = {id}",
        "del_link": "DELETE FROM fz_item_tag WHERE tag_id = {t5}",
    }
    if kind != "mariadb":
        out["cte_update"] = ("WITH x AS (SELECT id FROM fz_item WHERE qty > {v5}) "
                             "UPDATE fz_item SET flag = NOT flag WHERE id IN (SELECT id FROM x)")  # fmt: skip
    if kind == "postgresql":
        out["ins_returning"] = ("INSERT INTO fz_tag (id, label) VALUES ({v} + 500 + {id} * 50, 'r') "
                                "ON CONFLICT DO NOTHING RETURNING id")  # fmt: skip
    return out


# ---------------------------------------------------------------- executing


def _ent_table(name: str) -> Any:
    return S.TABLES[name]


def run_orm_write(session: Any, w: dict[str, Any]) -> str:
    """Apply an ORM write spec in ``session``; returns what happened (for the trace log)."""
    t = w["t"]
    if t == "add_item":
        item = Item(id=w["id"], owner_id=w["owner"], name=f"new {w['id']}", qty=w["qty"],
                    price=decimal.Decimal("1.50"), flag=True)  # fmt: skip
        tags = [session.get(Tag, i) for i in w["tags"]]
        item.tags = [x for x in tags if x is not None]
        session.add(item)
    elif t == "add_owner":
        session.add(Owner(id=w["id"], name=f"new {w['id']}", active=True,
                          balance=decimal.Decimal("3.00"), created=S.T0, parent_id=w["parent"]))  # fmt: skip
    elif t == "add_person":
        cls = {"Staff": Staff, "Client": Client, "Person": Person}[w["cls"]]
        extra = {"Staff": {"salary": decimal.Decimal("999.00")}, "Client": {"tier": 1}}.get(w["cls"], {})
        session.add(cls(id=w["id"], name=f"new {w['id']}", owner_id=w["owner"], **extra))
    elif t == "add_event":
        cls = {"Event": Event, "Alert": Alert, "Reminder": Reminder}[w["cls"]]
        session.add(cls(id=w["id"], title=f"new {w['id']}", at=S.T0, owner_id=w["owner"],
                        severity=2 if w["cls"] == "Alert" else None))  # fmt: skip
    elif t == "add_audit":
        session.add(Audit(id=w["id"], item_id=w["item"], note="new", amount=decimal.Decimal("1.00")))
    elif t == "mod":
        obj = session.get(S.MODELS[w["ent"]], w["id"])
        if obj is None:
            return "missing"
        setattr(obj, w["attr"], _py(w["attr"], w["v"]))
    elif t == "del":
        obj = session.get(S.MODELS[w["ent"]], w["id"])
        if obj is None:
            return "missing"
        session.delete(obj)
    elif t == "move_item":
        item, owner = session.get(Item, w["id"]), session.get(Owner, w["owner"])
        if item is None or owner is None:
            return "missing"
        item.owner = owner
    elif t == "move_child":
        child = session.get(Owner, w["id"])
        parent = session.get(Owner, w["parent"]) if w["parent"] is not None else None
        if child is None or (w["parent"] is not None and parent is None) or parent is child:
            return "missing"
        child.parent = parent
    elif t == "m2m":
        item, tag = session.get(Item, w["item"]), session.get(Tag, w["tag"])
        if item is None or tag is None:
            return "missing"
        if w["add"] and tag not in item.tags:
            item.tags.append(tag)
        elif not w["add"] and tag in item.tags:
            item.tags.remove(tag)
        else:
            return "noop"
    elif t == "append":
        owner = session.get(Owner, w["owner"])
        if owner is None:
            return "missing"
        owner.items.append(Item(id=w["id"], name=f"appended {w['id']}", qty=1,
                                price=decimal.Decimal("2.25"), flag=False))  # fmt: skip
    elif t == "bulk_upd":
        session.execute(_bulk_update(w), execution_options={"synchronize_session": w["sync"]})
    elif t == "bulk_del":
        cls = S.MODELS[w["ent"]]
        session.execute(delete(cls).where(cls.id == w["id"]),
                        execution_options={"synchronize_session": w["sync"]})  # fmt: skip
    elif t == "bulk_ins":
        session.execute(insert(Tag), [{"id": w["id"], "label": "bulk"}, {"id": w["id"] + 5000, "label": "bulk2"}])
    else:
        raise AssertionError(t)
    if w.get("flush"):
        session.flush()
    return "ok"


def _bulk_update(w: dict[str, Any]) -> Any:
    p = w["p"]
    ent = w["ent"]
    if ent == "Item":
        return update(Item).where(Item.qty >= p).values(qty=Item.qty + 1)
    if ent == "Owner":
        return update(Owner).where(Owner.id <= p + 1).values(balance=Owner.balance + 1)
    if ent == "Staff":
        return update(Staff).where(Staff.id <= p).values(salary=Staff.salary + 10)
    if ent == "Event":
        return update(Event).where(Event.owner_id == p + 1).values(title="bulk")
    if ent == "Alert":
        return update(Alert).values(severity=p)
    if ent == "Audit":
        return update(Audit).where(Audit.id <= p).values(amount=Audit.amount + 1)
    raise AssertionError(ent)


def run_core_write(conn: Any, w: dict[str, Any], kind: str) -> str:
    """Apply a Core / textual write spec on ``conn``."""
    t = w["t"]
    if t == "core_upd":
        table = _ent_table(w["table"])
        col, value = {
            "fz_item": ("qty", w["v"] % 7), "fz_owner": ("name", f"core {w['v']}"),
            "fz_event": ("title", f"core {w['v']}"), "fz_audit": ("amount", w["v"]),
            "fz_staff": ("salary", w["v"] + 1000), "fz_tag": ("label", f"core {w['v']}"),
        }[w["table"]]  # fmt: skip
        conn.execute(update(table).where(table.c.id == w["id"]).values({col: value}))
    elif t == "core_del":
        table = _ent_table(w["table"])
        conn.execute(delete(table).where(table.c.id == w["id"]))
    elif t == "core_ins":
        conn.execute(insert(S.audit_t).values(id=w["id"], item_id=w["item"], note="core",
                                              amount=decimal.Decimal("4.50")))  # fmt: skip
    elif t in ("text", "driver"):
        sql = text_writes(kind)[w["q"]].format(**_fmt(w))
        if t == "text":
            result = conn.execute(text(sql))
        else:
            result = conn.exec_driver_sql(sql)
        if result.returns_rows:
            result.all()
    else:
        raise AssertionError(t)
    return "ok"


def _fmt(w: dict[str, Any]) -> dict[str, Any]:
    return {"id": w["id"], "v": w["v"], "i14": w["v"] % 14 + 1, "t5": w["id"] % 5 + 1,
            "v5": w["v"] % 5}


def describe(w: dict[str, Any], kind: str = "postgresql") -> str:
    t = w["t"]
    if t in ("text", "driver"):
        sql = text_writes(kind).get(w["q"], w["q"]).format(**_fmt(w))
        return f"{'execute(text' if t == 'text' else 'exec_driver_sql('}({sql!r})"
    return repr(w)
