"""Models every test shares: a shop, an inheritance hierarchy, a many-to-many."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid

from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Numeric,
    String,
    Table,
    Text,
    Uuid,
    func,
    select,
)  # fmt: skip
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship


class Base(AsyncAttrs, DeclarativeBase):
    pass


product_tag = Table(
    "product_tag",
    Base.metadata,
    Column("product_id", ForeignKey("product.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tag.id"), primary_key=True),
)


class Category(Base):
    __tablename__ = "category"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    products: Mapped[list[Product]] = relationship(back_populates="category", order_by="Product.id")


class Tag(Base):
    __tablename__ = "tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(30))


class Product(Base):
    __tablename__ = "product"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    price: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
    category_id: Mapped[int] = mapped_column(ForeignKey("category.id"))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    sku: Mapped[uuid.UUID] = mapped_column(Uuid)
    attrs: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True, deferred=True)
    category: Mapped[Category] = relationship(back_populates="products")
    tags: Mapped[list[Tag]] = relationship(secondary=product_tag, order_by=Tag.id)

    @hybrid_property
    def price_with_tax(self) -> decimal.Decimal:
        return self.price * decimal.Decimal("1.20")


class Customer(Base):
    __tablename__ = "customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(80))
    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
    placed: Mapped[dt.date] = mapped_column(Date)
    customer: Mapped[Customer] = relationship(back_populates="orders")
    items: Mapped[list[OrderItem]] = relationship(
        back_populates="order", order_by="OrderItem.id", cascade="all, delete-orphan"
    )


class OrderItem(Base):
    __tablename__ = "order_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("product.id"))
    quantity: Mapped[int]
    order: Mapped[Order] = relationship(back_populates="items")
    product: Mapped[Product] = relationship()


Category.product_count = column_property(
    select(func.count(Product.id)).where(Product.category_id == Category.id).scalar_subquery(),
    deferred=True,
)


class Kind(enum.Enum):
    staff = "staff"
    manager = "manager"


class Employee(Base):
    __tablename__ = "employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    type: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class Engineer(Employee):
    __tablename__ = "engineer"
    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(30))
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Manager(Employee):
    __tablename__ = "manager"
    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    budget: Mapped[int]
    __mapper_args__ = {"polymorphic_identity": "manager"}


class Note(Base):
    """Single-table inheritance."""

    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    body: Mapped[str] = mapped_column(String(100))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "note"}


class Memo(Note):
    __mapper_args__ = {"polymorphic_identity": "memo"}


UTC = dt.timezone.utc


def populate(session) -> None:  # type: ignore[no-untyped-def]
    """A small deterministic data set."""
    cats = [Category(id=i, name=f"cat {i}") for i in range(1, 5)]
    tags = [Tag(id=i, label=f"tag{i}") for i in range(1, 6)]
    products = []
    for i in range(1, 41):
        p = Product(
            id=i,
            name=f"Product {i:02d}" + (" special" if i % 7 == 0 else ""),
            price=decimal.Decimal(f"{i}.{i % 100:02d}"),
            category_id=(i % 4) + 1,
            created=dt.datetime(2024, 1, 1 + i % 28, 12, i % 60, 30, tzinfo=UTC),
            sku=uuid.UUID(int=i),
            attrs={"color": ["red", "blue"][i % 2], "sizes": [1, 2, i]} if i % 3 else None,
            description=f"about product {i}",
        )
        p.tags = [tags[j] for j in range(5) if (i + j) % 3 == 0]
        products.append(p)
    customers = [Customer(id=i, name=f"customer {i}", email=f"c{i}@example.com") for i in range(1, 6)]
    orders, items = [], []
    n = 0
    for c in customers:
        for k in range(3):
            o = Order(id=c.id * 10 + k, customer_id=c.id, placed=dt.date(2024, 2, 1 + k))
            orders.append(o)
            for j in range(2):
                n += 1
                items.append(OrderItem(id=n, order_id=o.id, product_id=(n % 40) + 1, quantity=j + 1))
    emps = [
        Engineer(id=1, name="ada", language="python"),
        Manager(id=2, name="bob", budget=100),
        Employee(id=3, name="cy"),
        Engineer(id=4, name="dee", language="rust"),
    ]
    notes = [Note(id=1, body="plain"), Memo(id=2, body="memo one"), Memo(id=3, body="memo two")]
    session.add_all(cats + tags + products + customers + orders + items + emps + notes)
    session.commit()
