"""The fuzzer's own schema (never tests/models.py) and its data set.

Tables are prefixed ``fz_`` so they can live beside other tests' tables.

- ``fz_owner``: self-referential parent/children (``ON DELETE SET NULL``), a
  ``column_property`` counting its items with a correlated subquery over ``fz_item``
- ``fz_item``: belongs to an owner (``ON DELETE CASCADE``), many-to-many with
  ``fz_tag`` through ``fz_item_tag`` (both sides ``ON DELETE CASCADE``), a
  ``query_expression``
- ``fz_person`` / ``fz_staff`` / ``fz_client``: joined-table inheritance, the
  person's owner ``ON DELETE SET NULL``
- ``fz_event``: single-table inheritance (``Alert``, ``Reminder``), owner ``ON DELETE CASCADE``
- ``fz2.fz_audit``: a table in a second schema (PostgreSQL schema ``fz2``,
  MariaDB database ``<run's database>_fz2`` through ``schema_translate_map``, SQLite an
  ATTACHed file named ``fz2``); joined to items by a view-only relationship

Every relationship whose rows the database removes or nulls itself is
``passive_deletes=True``. Values are Numeric, DateTime (whole seconds, naive),
String, Boolean and Integer: comparable on every database.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    Sequence,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    column_property,
    foreign,
    mapped_column,
    query_expression,
    relationship,
)

SECOND_SCHEMA = "fz2"
#: the MariaDB database standing in for the second schema: named after the
#: run's own database by ``make_engine`` (two runs on two databases never share it)
MARIADB_SECOND_DB = "test_fz2"


def mariadb_second_db(url: str) -> str:
    """The second schema's database for a run on ``url``: ``<database>_fz2``."""
    from sqlalchemy.engine import make_url

    return f"{make_url(url).database or 'test'}_fz2"


class FuzzBase(DeclarativeBase):
    pass


item_tag = Table(
    "fz_item_tag",
    FuzzBase.metadata,
    Column("item_id", ForeignKey("fz_item.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("fz_tag.id", ondelete="CASCADE"), primary_key=True),
)


class Owner(FuzzBase):
    __tablename__ = "fz_owner"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    active: Mapped[bool] = mapped_column(Boolean)
    balance: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
    created: Mapped[dt.datetime] = mapped_column(DateTime)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("fz_owner.id", ondelete="SET NULL"), nullable=True
    )
    parent: Mapped[Owner | None] = relationship(
        back_populates="children", remote_side="Owner.id"
    )
    children: Mapped[list[Owner]] = relationship(
        back_populates="parent", passive_deletes=True
    )
    items: Mapped[list[Item]] = relationship(
        back_populates="owner", passive_deletes=True, cascade="all, delete-orphan"
    )
    events: Mapped[list[Event]] = relationship(
        back_populates="owner", passive_deletes=True, cascade="all, delete-orphan"
    )
    persons: Mapped[list[Person]] = relationship(back_populates="owner", passive_deletes=True)


class Tag(FuzzBase):
    __tablename__ = "fz_tag"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(30))
    items: Mapped[list[Item]] = relationship(
        secondary=item_tag, back_populates="tags", passive_deletes=True
    )


class Item(FuzzBase):
    __tablename__ = "fz_item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner_id: Mapped[int] = mapped_column(ForeignKey("fz_owner.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(40))
    qty: Mapped[int] = mapped_column(Integer)
    price: Mapped[decimal.Decimal] = mapped_column(Numeric(8, 2))
    flag: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[int | None] = query_expression()
    owner: Mapped[Owner] = relationship(back_populates="items")
    tags: Mapped[list[Tag]] = relationship(
        secondary=item_tag, back_populates="items", passive_deletes=True
    )
    audits: Mapped[list[Audit]] = relationship(
        primaryjoin="Item.id == foreign(Audit.item_id)", viewonly=True
    )


class Person(FuzzBase):
    """Joined-table inheritance."""

    __tablename__ = "fz_person"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("fz_owner.id", ondelete="SET NULL"), nullable=True
    )
    owner: Mapped[Owner | None] = relationship(back_populates="persons")
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}


class Staff(Person):
    __tablename__ = "fz_staff"
    id: Mapped[int] = mapped_column(
        ForeignKey("fz_person.id", ondelete="CASCADE"), primary_key=True
    )
    salary: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
    __mapper_args__ = {"polymorphic_identity": "staff"}


class Client(Person):
    __tablename__ = "fz_client"
    id: Mapped[int] = mapped_column(
        ForeignKey("fz_person.id", ondelete="CASCADE"), primary_key=True
    )
    tier: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"polymorphic_identity": "client"}


class Event(FuzzBase):
    """Single-table inheritance."""

    __tablename__ = "fz_event"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(40))
    at: Mapped[dt.datetime] = mapped_column(DateTime)
    owner_id: Mapped[int] = mapped_column(ForeignKey("fz_owner.id", ondelete="CASCADE"))
    severity: Mapped[int | None] = mapped_column(Integer, nullable=True)
    owner: Mapped[Owner] = relationship(back_populates="events")
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "event"}


class Alert(Event):
    __mapper_args__ = {"polymorphic_identity": "alert"}


class Reminder(Event):
    __mapper_args__ = {"polymorphic_identity": "reminder"}


class Audit(FuzzBase):
    """A table in the second schema (no foreign key: SQLite cannot reference across files)."""

    __tablename__ = "fz_audit"
    __table_args__ = {"schema": SECOND_SCHEMA}
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    item_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str] = mapped_column(String(40))
    amount: Mapped[decimal.Decimal] = mapped_column(Numeric(8, 2))


Owner.n_items = column_property(  # type: ignore[attr-defined]
    select(func.count(Item.id)).where(Item.owner_id == Owner.id).correlate_except(Item)
    .scalar_subquery()
)

_ = foreign  # used in the string primaryjoin above

#: PostgreSQL only: a sequence whose next value must never come from a cache
SEQUENCE = Sequence("fz_seq")

MODELS = {c.__name__: c for c in (Owner, Tag, Item, Person, Staff, Client, Event, Alert, Reminder, Audit)}
TABLES = {t.name: t for t in FuzzBase.metadata.sorted_tables}
owner_t, item_t, tag_t = Owner.__table__, Item.__table__, Tag.__table__
person_t, staff_t, client_t = Person.__table__, Staff.__table__, Client.__table__
event_t, audit_t = Event.__table__, Audit.__table__

# ------------------------------------------------------------------ engines

DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://root@127.0.0.1:5432/test_fuzz",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test_fuzz",
}
URL_ENV = {"postgresql": "QC_PG_URL", "mariadb": "QC_MARIADB_URL"}
DEFAULT_REDIS = "redis://127.0.0.1:6379/1"


def cli_url(db: str, sqlite_dir: str) -> str:
    """The CLI's URL for ``db``: the environment, else the fuzzer's own databases."""
    if db == "sqlite":
        return f"sqlite:///{os.path.join(sqlite_dir, 'fuzz.db')}"
    return os.environ.get(URL_ENV[db]) or DEFAULT_URLS[db]


def db_kind(engine: Any) -> str:
    name = engine.dialect.name
    return {"mysql": "mariadb"}.get(name, name)


def make_engine(url: str) -> Any:
    """An engine with the fuzzer's connection set-up.

    SQLite: foreign keys on (the cascades are the database's), a short busy
    timeout (two sessions writing at once fail fast instead of waiting), the
    second schema ATTACHed as ``fz2``. PostgreSQL: a short ``lock_timeout``.
    MariaDB: ``innodb_lock_wait_timeout=1`` and the second schema translated
    to the database ``<database>_fz2``. A lock conflict between the fuzzer's own
    sessions is then an error it handles, never a hang.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        second = os.path.join(os.path.dirname(path) or ".", "fz2.db")
        engine = create_engine(url, connect_args={"timeout": 0.05})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"ATTACH DATABASE '{second}' AS {SECOND_SCHEMA}")
            cur.close()

        return engine
    if url.startswith("postgresql"):
        return create_engine(url, connect_args={"options": "-c lock_timeout=300"})
    global MARIADB_SECOND_DB
    MARIADB_SECOND_DB = mariadb_second_db(url)
    engine = create_engine(url, pool_recycle=3600).execution_options(
        schema_translate_map={SECOND_SCHEMA: MARIADB_SECOND_DB}
    )

    @event.listens_for(engine.engine, "connect")
    def _mariadb_connect(dbapi_conn: Any, record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        cur.close()

    return engine


def audit_sql_name(kind: str) -> str:
    """How raw SQL names the second-schema table on this database."""
    return f"{MARIADB_SECOND_DB}.fz_audit" if kind == "mariadb" else f"{SECOND_SCHEMA}.fz_audit"


def create_schema(engine: Any) -> None:
    """Create the second schema, the tables and (PostgreSQL) the sequence, if missing."""
    kind = db_kind(engine)
    with engine.begin() as conn:
        if kind == "postgresql":
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SECOND_SCHEMA}"))
        elif kind == "mariadb":
            conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {MARIADB_SECOND_DB}"))
    FuzzBase.metadata.create_all(engine)
    if kind == "postgresql":
        with engine.begin() as conn:
            SEQUENCE.create(conn, checkfirst=True)


# --------------------------------------------------------------------- data

T0 = dt.datetime(2024, 3, 1, 9, 0, 0)


def rows() -> dict[str, list[dict[str, Any]]]:
    """The deterministic starting data set."""
    owners = [
        dict(id=i, name=f"owner {i}", active=i % 3 != 0,
             balance=decimal.Decimal(f"{i * 17 % 50}.{i * 7 % 100:02d}"),
             created=T0 + dt.timedelta(days=i, seconds=i * 61),
             parent_id={2: 1, 3: 1, 4: 2, 6: 4}.get(i))
        for i in range(1, 7)
    ]  # fmt: skip
    items = [
        dict(id=i, owner_id=(i % 5) + 1, name=f"item {i}", qty=i % 6,
             price=decimal.Decimal(f"{i % 9}.{(i * 13) % 100:02d}"), flag=i % 2 == 0)
        for i in range(1, 15)
    ]  # fmt: skip
    tags = [dict(id=i, label=f"tag {i}") for i in range(1, 6)]
    links = [dict(item_id=i, tag_id=t) for i in range(1, 15) for t in range(1, 6) if (i + t) % 4 == 0]
    persons = [
        dict(id=i, name=f"person {i}", kind=k, owner_id=None if i == 6 else (i % 4) + 1)
        for i, k in enumerate(["staff", "staff", "staff", "client", "client", "person"], 1)
    ]
    staff = [dict(id=i, salary=decimal.Decimal(f"{1000 + i * 111}.50")) for i in (1, 2, 3)]
    clients = [dict(id=i, tier=i % 3) for i in (4, 5)]
    events = [
        dict(id=i, kind=["event", "alert", "reminder"][i % 3], title=f"event {i}",
             at=T0 + dt.timedelta(hours=i * 5), owner_id=(i % 6) + 1,
             severity=i % 4 if i % 3 == 1 else None)
        for i in range(1, 8)
    ]  # fmt: skip
    audits = [
        dict(id=i, item_id=i * 2 if i != 5 else None, note=f"audit {i}",
             amount=decimal.Decimal(f"{i * 3}.25"))
        for i in range(1, 6)
    ]  # fmt: skip
    return {
        "fz_owner": owners, "fz_item": items, "fz_tag": tags, "fz_item_tag": links,
        "fz_person": persons, "fz_staff": staff, "fz_client": clients, "fz_event": events,
        "fz_audit": audits,
    }  # fmt: skip


def reset_data(engine: Any) -> None:
    """Delete every row and insert the starting data (one transaction)."""
    data = rows()
    with engine.begin() as conn:
        for table in reversed(FuzzBase.metadata.sorted_tables):
            conn.execute(delete(table))
        for table in FuzzBase.metadata.sorted_tables:
            if data[table.name]:
                conn.execute(insert(table), data[table.name])
