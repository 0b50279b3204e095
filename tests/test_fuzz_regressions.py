"""Regression tests for the failure classes the fuzzer (tests/fuzz) found.

One test per class, minimal, on the databases where it failed (each was an
``xfail(strict=True)`` until the library was fixed; the reason is the
comment above it).
Every test is the shrunk fuzzer trace rewritten on the shared fixtures:
a read is cached, a write commits, and a read that starts afterwards must
equal the database (or a volatile read must send SQL every time).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.orm import Load, Session

from sqla_querycache import FromCache, NoCache

from .models import Category, Product, Tag, product_tag

ISSUE = "issue 6: "


def on_databases(*dbs: str) -> Any:
    return pytest.mark.parametrize("engine", dbs, indirect=True)


def cached_and_db(engine: Any, stmt: Any) -> tuple[Any, Any]:
    """The tagged read in a fresh session, and the same read uncached in another."""
    with Session(engine) as s:
        cached = s.execute(stmt.options(FromCache())).all()
    with Session(engine) as s:
        plain = s.execute(stmt.options(NoCache())).all()
    return [tuple(r) for r in cached], [tuple(r) for r in plain]


# ----------------------------------------------------------------- volatile reads


@on_databases("sqlite", "postgresql", "mariadb")
def test_volatile_function_never_served_from_cache(engine: Any, sql: Any, cache: Any) -> None:
    rand = func.rand() if engine.dialect.name == "mysql" else func.random()
    for stmt in (select(rand), select(func.current_timestamp())):
        with Session(engine) as s:
            s.execute(stmt.options(FromCache())).all()
        mark = sql.count
        with Session(engine) as s:
            s.execute(stmt.options(FromCache())).all()
        assert sql.since(mark) == 1, f"{stmt} was served from the cache"


# ------------------------------------------------- AUTOCOMMIT with a textual BEGIN


@on_databases("sqlite", "postgresql", "mariadb")
def test_autocommit_textual_transaction(engine: Any, cache: Any) -> None:
    stmt = select(Category.id, Category.name).where(Category.id == 1)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("BEGIN")
        conn.execute(text("UPDATE category SET name = 'renamed' WHERE id = 1"))
        cached_and_db(engine, stmt)  # another session reads (and stores) the committed row
        conn.exec_driver_sql("COMMIT")
    cached, plain = cached_and_db(engine, stmt)
    assert plain == [(1, "renamed")]
    assert cached == plain


# --------------------------------------------- textual DELETE and ON DELETE CASCADE


@on_databases("sqlite", "postgresql", "mariadb")
def test_text_delete_cascades(engine: Any, cache: Any) -> None:
    stmt = select(product_tag.c.product_id, product_tag.c.tag_id).where(
        product_tag.c.product_id == 36
    ).order_by(product_tag.c.tag_id)  # fmt: skip
    before, _ = cached_and_db(engine, stmt)
    assert before, "product 36 has tags"
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            if not conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
                pytest.skip("SQLite without PRAGMA foreign_keys=ON cascades nothing")
    with Session(engine) as s:
        s.execute(text("DELETE FROM product WHERE id = 36"))  # product_tag rows go by CASCADE
        s.commit()
    cached, plain = cached_and_db(engine, stmt)
    assert plain == []
    assert cached == plain


# ------------------------------------------------ literal_column with a subquery


@on_databases("sqlite", "postgresql", "mariadb")
def test_literal_column_subquery_table(engine: Any, cache: Any) -> None:
    stmt = select(literal_column("(SELECT count(*) FROM tag)").label("n"))
    before, _ = cached_and_db(engine, stmt)
    with Session(engine) as s:
        s.add(Tag(id=99, label="new"))
        s.commit()
    cached, plain = cached_and_db(engine, stmt)
    assert plain == [(before[0][0] + 1,)]
    assert cached == plain


# --------------------------------------------------------- wildcard loader options


@on_databases("sqlite", "postgresql", "mariadb")
def test_wildcard_loader_tables(engine: Any, cache: Any) -> None:
    def read(tag: Any) -> list[Any]:
        with Session(engine) as s:
            stmt = select(Category).where(Category.id == 1).options(Load(Category).selectinload("*"))
            cats = s.execute(stmt.options(tag)).scalars().all()
            return [(c.id, sorted(p.id for p in c.__dict__["products"])) for c in cats]

    read(FromCache())
    with Session(engine) as s:
        s.execute(insert(Product.__table__).values(
            id=77, name="new", price=1, category_id=1, created=func.current_timestamp(),
            sku=uuid.UUID(int=77)))  # fmt: skip
        s.commit()
    plain = read(NoCache())
    assert 77 in plain[0][1]
    assert read(FromCache()) == plain


# --------------------------------------------------- data-modifying CTE (PostgreSQL)


@on_databases("postgresql")
def test_data_modifying_cte_is_a_write(engine: Any, cache: Any) -> None:
    stmt = select(Category.id, Category.name).where(Category.id == 2)
    cached_and_db(engine, stmt)
    t = Category.__table__
    upd = update(t).where(t.c.id == 2).values(name="via cte").returning(t.c.id).cte("u")
    with Session(engine) as s:
        s.execute(select(upd.c.id)).all()
        s.commit()
    cached, plain = cached_and_db(engine, stmt)
    assert plain == [(2, "via cte")]
    assert cached == plain


# ------------------------------------------------------ TRUNCATE ... CASCADE (PostgreSQL)


@on_databases("postgresql")
def test_truncate_cascade(engine: Any, cache: Any) -> None:
    stmt = select(func.count()).select_from(product_tag)
    before, _ = cached_and_db(engine, stmt)
    assert before[0][0] > 0
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE tag CASCADE"))
    cached, plain = cached_and_db(engine, stmt)
    assert plain == [(0,)]
    assert cached == plain


# ------------------------------------------- schema_translate_map and raw SQL (MariaDB)


@on_databases("mariadb")
def test_schema_translate_map_text_write(engine: Any, cache: Any) -> None:
    md = MetaData()
    t = Table("qc_translated", md, Column("id", Integer, primary_key=True),
              Column("note", String(20)), schema="fz2")  # fmt: skip
    second = f"{engine.url.database}_tr2"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {second}"))
    translated = engine.execution_options(schema_translate_map={"fz2": second})
    md.drop_all(translated)
    md.create_all(translated)
    try:
        with translated.begin() as conn:
            conn.execute(insert(t).values(id=1, note="old"))
        stmt = select(t.c.id, t.c.note)
        cached_and_db(translated, stmt)
        with Session(translated) as s:
            s.execute(text(f"UPDATE {second}.qc_translated SET note = 'new' WHERE id = 1"))
            s.commit()
        cached, plain = cached_and_db(translated, stmt)
        assert plain == [(1, "new")]
        assert cached == plain
    finally:
        md.drop_all(translated)



# ------------------------------------ a write the driver committed by itself (SQLite)

# seed 16516527: on a Core connection in begin(), ``WITH x AS (...) UPDATE fz_item``;
# sqlite3 opens no transaction before a statement starting with WITH, so the
# update was committed at once while the cache held it as pending, and the
# connection's rollback then discarded the bump: the old rows were served for
# good. (Every form of it: test_promise.py::test_sqlite_writes_the_driver_...)
@on_databases("sqlite")
def test_write_committed_by_the_driver_alone(engine: Any, cache: Any) -> None:
    stmt = select(Product.id, Product.name).where(Product.category_id == 2).order_by(Product.id)
    cached_and_db(engine, stmt)
    conn = engine.connect()
    try:
        conn.begin()
        conn.execute(text("WITH x AS (SELECT id FROM product WHERE category_id = 2) "
                          "UPDATE product SET name = 'renamed' WHERE id IN (SELECT id FROM x)"))
        conn.rollback()  # too late: the driver committed it
    finally:
        conn.close()
    cached, plain = cached_and_db(engine, stmt)
    assert {name for _, name in plain} == {"renamed"}
    assert cached == plain
