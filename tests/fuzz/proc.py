"""The second process (``--processes 2``): driven over a pipe, it writes and reads
with its own engine and its own QueryCache sharing the parent's Redis versions
and regions (same namespace), so the parent's fresh reads check that another
process's commits invalidate its entries, and the child's reads check the parent's.
"""

from __future__ import annotations

import multiprocessing
from typing import Any


class OtherProcess:
    def __init__(self, db_url: str, redis_url: str):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, db_url, redis_url), daemon=True)
        self.process.start()

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.conn.send(msg)
        if not self.conn.poll(60):
            raise RuntimeError("the other process did not answer within 60 s")
        reply: dict[str, Any] = self.conn.recv()
        if "crash" in reply:
            raise RuntimeError(f"the other process crashed:\n{reply['crash']}")
        return reply

    def close(self) -> None:
        try:
            self.conn.send({"op": "quit"})
        except Exception:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()


def _serve(pipe: Any, db_url: str, redis_url: str) -> None:
    import traceback

    from dogpile.cache import make_region
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session

    from sqla_querycache import QueryCache

    from . import reads as R
    from . import schema as S
    from . import writes as W

    class ChildSession(Session):
        pass

    engine = S.make_engine(db_url)
    kind = S.db_kind(engine)
    cache = None
    while True:
        msg = pipe.recv()
        op = msg["op"]
        try:
            if op == "quit":
                break
            if op == "reset":
                if cache is not None:
                    cache.close()
                engine.dispose()

                def region() -> Any:
                    return make_region().configure(
                        "dogpile.cache.redis", expiration_time=600, arguments={"url": redis_url})

                cache = QueryCache(regions={"default": region(), "hot": region()},
                                   versions=redis_url, namespace=msg["ns"],
                                   identity_region="default").install(ChildSession)  # fmt: skip
                pipe.send({"ok": True})
            elif op == "w":
                w = msg["w"]
                try:
                    if w["t"] in ("core_upd", "core_del", "core_ins", "text", "driver"):
                        with engine.begin() as conn:
                            W.run_core_write(conn, w, kind)
                    else:
                        with ChildSession(engine) as s:
                            W.run_orm_write(s, w)
                            s.commit()
                    pipe.send({"ok": True})
                except SQLAlchemyError as err:
                    pipe.send({"ok": False, "error": type(err).__name__})
            elif op == "r":
                try:
                    with ChildSession(engine) as s:
                        cached = R.run_read(s, msg["r"], kind, True, "df")
                    with ChildSession(engine) as s:
                        plain = R.run_read(s, msg["r"], kind, False, "df")
                    pipe.send({"cached": cached, "plain": plain})
                except SQLAlchemyError as err:
                    pipe.send({"error": type(err).__name__})
        except Exception:
            pipe.send({"crash": traceback.format_exc()})
    if cache is not None:
        cache.close()
    engine.dispose()
