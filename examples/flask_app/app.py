"""A Flask-SQLAlchemy app with a Redis region and Redis versions.

The views read through the cache; a CLI command (``flask --app app rename 1 pear``,
another process in real life) writes, and the next page view shows it::

    export DATABASE_URL=postgresql+psycopg://user@host/db REDIS_URL=redis://host:6379/0
    flask --app app init && flask --app app run
"""

from __future__ import annotations

import os

import click
from dogpile.cache import make_region
from flask import Flask, abort, jsonify
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_querycache import FromCache, QueryCache


class Base(DeclarativeBase):
    pass


# Flask-SQLAlchemy's sessions are of a class of its own: install the cache on a
# subclass of it, given to SQLAlchemy(session_options=...), so only this app's
# sessions are touched
class AppSession(FlaskSession):
    pass


db = SQLAlchemy(model_class=Base, session_options={"class_": AppSession})


class Note(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "example_flask_note"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


def create_app(database_url: str | None = None, redis_url: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url or os.environ["DATABASE_URL"]
    redis_url = redis_url or os.environ["REDIS_URL"]
    db.init_app(app)
    cache = QueryCache(
        regions={
            "default": make_region().configure(
                "dogpile.cache.redis", expiration_time=300, arguments={"url": redis_url}
            )
        },
        versions=redis_url,
        namespace="example_flask",
    ).install(AppSession)
    app.extensions["querycache"] = cache

    @app.get("/notes/<int:note_id>")
    def show(note_id: int):  # type: ignore[no-untyped-def]
        note = db.session.scalars(
            select(Note).where(Note.id == note_id).options(FromCache())
        ).first()
        if note is None:
            abort(404)
        return jsonify(id=note.id, text=note.text)

    @app.post("/notes/<int:note_id>/<text>")
    def edit(note_id: int, text: str):  # type: ignore[no-untyped-def]
        db.session.get_one(Note, note_id).text = text
        db.session.commit()
        return jsonify(id=note_id, text=text)

    @app.get("/stats")
    def stats():  # type: ignore[no-untyped-def]
        return jsonify(cache.stats())

    @app.cli.command("init")
    def init() -> None:
        db.drop_all()
        db.create_all()
        db.session.add_all([Note(id=1, text="buy milk"), Note(id=2, text="call mum")])
        db.session.commit()  # DDL and writes of this process are seen: they invalidate

    @app.cli.command("rename")
    @click.argument("note_id", type=int)
    @click.argument("text")
    def rename(note_id: int, text: str) -> None:
        db.session.get_one(Note, note_id).text = text
        db.session.commit()
        click.echo(f"note {note_id}: {text}")

    return app
