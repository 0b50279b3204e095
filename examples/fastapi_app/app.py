"""A FastAPI app on async SQLAlchemy with Redis regions and Redis versions.

Run two workers (or two servers) against one PostgreSQL and one Redis; a write
through either is seen by the next read through the other::

    export DATABASE_URL=postgresql+asyncpg://user@host/db REDIS_URL=redis://host:6379/0
    python app.py init                        # create and fill the table
    uvicorn app:app --workers 2 --port 8000

Routes: ``GET /items``, ``GET /items/{id}``, ``PUT /items/{id}`` (``{"name": ...}``),
``GET /stats`` (this process's cache counters).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dogpile.cache import make_region
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_querycache import FromCache, QueryCache

DATABASE_URL = os.environ["DATABASE_URL"]
REDIS_URL = os.environ["REDIS_URL"]


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "example_fastapi_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class ItemIn(BaseModel):
    name: str


engine = create_async_engine(DATABASE_URL)
# a session class of the app's own, so that installing touches only this app's sessions
AppSession = type("AppSession", (AsyncSession,), {})
Session = async_sessionmaker(engine, class_=AppSession, expire_on_commit=False)
cache = QueryCache(
    regions={
        "default": make_region().configure(
            "dogpile.cache.redis", expiration_time=300, arguments={"url": REDIS_URL}
        )
    },
    versions=REDIS_URL,  # shared by every worker: a commit anywhere invalidates everywhere
    namespace="example_fastapi",
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    cache.install(Session)
    yield
    cache.close()
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/items")
async def list_items() -> list[dict[str, object]]:
    async with Session() as s:
        items = (await s.scalars(select(Item).order_by(Item.id).options(FromCache()))).all()
        return [{"id": i.id, "name": i.name} for i in items]


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, object]:
    async with Session() as s:
        item = (
            await s.scalars(select(Item).where(Item.id == item_id).options(FromCache()))
        ).first()
        if item is None:
            raise HTTPException(404)
        return {"id": item.id, "name": item.name, "pid": os.getpid()}


@app.put("/items/{item_id}")
async def rename_item(item_id: int, body: ItemIn) -> dict[str, object]:
    async with Session() as s:
        item = await s.get(Item, item_id)
        if item is None:
            raise HTTPException(404)
        item.name = body.name
        await s.commit()  # invalidates the cached reads of the table, in every process
        return {"id": item.id, "name": item.name, "pid": os.getpid()}


@app.get("/stats")
async def stats() -> dict[str, object]:
    return {"pid": os.getpid(), "regions": cache.stats()}


async def init() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    async with Session() as s:
        s.add_all([Item(id=1, name="apple"), Item(id=2, name="banana")])
        await s.commit()
    cache.invalidate(Item)  # init() runs before install(): the cache did not see these writes
    cache.close()
    await engine.dispose()


if __name__ == "__main__" and sys.argv[1:] == ["init"]:
    asyncio.run(init())
