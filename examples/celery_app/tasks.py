"""A Celery worker that writes, and a web side that reads through the cache.

Both import this module; the worker's commits invalidate the web side's
cached reads through the shared Redis version store::

    export DATABASE_URL=postgresql+psycopg://user@host/db REDIS_URL=redis://host:6379/0
    celery -A tasks worker --pool=solo
    python -c "import tasks; tasks.init(); tasks.restock.delay(1, 5).get(); print(tasks.stock(1))"
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init
from dogpile.cache import make_region
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_querycache import FromCache, QueryCache

DATABASE_URL = os.environ["DATABASE_URL"]
REDIS_URL = os.environ["REDIS_URL"]
BROKER_URL = os.environ.get("BROKER_URL", REDIS_URL)

celery = Celery("tasks", broker=BROKER_URL, backend=BROKER_URL)


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "example_celery_product"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    stock: Mapped[int]


engine = create_engine(DATABASE_URL)
AppSession = type("AppSession", (Session,), {})
SessionLocal = sessionmaker(engine, class_=AppSession)
cache = QueryCache(
    regions={
        "default": make_region().configure(
            "dogpile.cache.redis", expiration_time=300, arguments={"url": REDIS_URL}
        )
    },
    versions=REDIS_URL,
    namespace="example_celery",
).install(SessionLocal)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    engine.dispose(close=False)  # a prefork child must not share its parent's connections


@celery.task
def restock(product_id: int, amount: int) -> int:
    """The worker's write: committed through an installed session, so it invalidates."""
    with SessionLocal() as s:
        product = s.get_one(Product, product_id)
        product.stock += amount
        s.commit()
        return product.stock


def stock(product_id: int) -> int:
    """The web side's read, cached."""
    with SessionLocal() as s:
        return s.scalars(
            select(Product.stock).where(Product.id == product_id).options(FromCache())
        ).one()


def init() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with SessionLocal() as s:
        s.add_all([Product(id=1, name="kettle", stock=3), Product(id=2, name="mug", stock=10)])
        s.commit()  # the cache is installed in this process: the DDL and these writes invalidate
