"""The trace generator: a seeded, deterministic list of steps (plain JSON-able dicts).

Step kinds (``"op"``):

- ``read``: a read in a context (``A``, ``B``: long-lived sessions, A with a
  session-wide region; ``C``: a Session bound to a shared Connection; ``fresh``:
  new sessions), with a tagging mode
- ``w``: a write in a context (ORM writes in A/B/C's session, Core/text on
  C's connection or through a session's connection)
- ``commit`` / ``rollback`` of a context; ``commit`` carries ``probes``: reads
  checked in fresh sessions right after ``commit()`` returned
- ``sp``: a savepoint (``begin_nested``) with writes and a read, rolled back or released
- ``ac``: an AUTOCOMMIT connection's writes, optionally inside textual
  ``BEGIN`` ... ``COMMIT``/``ROLLBACK``, with a read on a Session bound to it
- ``cte`` (PostgreSQL): a SELECT over a data-modifying CTE, tagged for the cache
- ``truncate`` (PostgreSQL): ``TRUNCATE ... CASCADE`` once every context ended
- ``proc``: a write (or read) in the second process (``--processes 2``)

The generator keeps one writer at a time (it ends the previous writer's
transaction first) so the fuzzer's own sessions rarely wait on each other's locks.
"""

from __future__ import annotations

import random
from typing import Any

from . import reads as R
from . import writes as W

SESSION_CTX = ("A", "B", "C")


#: what ``without=`` can switch off (to look past a failure class already found)
FEATURES = ("volatile", "ac_begin", "autocommit", "savepoint", "cte", "truncate", "text_read",
            "text_write", "other_schema", "literal", "wildcard")


def generate(seed: int, steps: int, kind: str, processes: int = 1,
             without: frozenset[str] = frozenset()) -> list[dict[str, Any]]:  # fmt: skip
    """A trace of ``steps`` steps for a database of ``kind``.

    SQLite gets no savepoints: pysqlite's default transaction handling commits
    when the outermost SAVEPOINT is released (a driver quirk SQLAlchemy documents).
    """
    r = random.Random(seed)
    ids = W.Ids()
    if kind == "sqlite":
        without = without | {"savepoint"}

    def new_read() -> dict[str, Any]:
        while True:
            spec = R.gen_read(r, kind)
            if "volatile" in without and R.is_volatile(spec):
                continue
            if "text_read" in without and spec["k"] == "text":
                continue
            if "other_schema" in without and "audit" in repr(spec).lower():
                continue
            if "literal" in without and "literal" in repr(spec):
                continue
            if "wildcard" in without and "star" in repr(spec):
                continue
            return spec

    def core_write() -> dict[str, Any]:
        while True:
            w = W.gen_core_write(r, ids, kind)
            if "text_write" in without and w["t"] in ("text", "driver"):
                continue
            if "other_schema" in without and "audit" in repr(w).lower():
                continue
            return w

    pool = [new_read() for _ in range(24)]

    def read() -> dict[str, Any]:
        return r.choice(pool) if r.random() < 0.75 else new_read()

    def mode(ctx: str) -> str:
        modes = ["df", "df", "hot", "opt"] + (["session", "session"] if ctx == "A" else [])
        return r.choice(modes)

    def probes() -> list[dict[str, Any]]:
        return [read() for _ in range(r.choice([1, 2, 2, 3]))]

    out: list[dict[str, Any]] = []
    writer: str | None = None
    open_ctx: set[str] = set()

    def end(ctx: str) -> None:
        nonlocal writer
        if r.random() < 0.8:
            out.append({"op": "commit", "ctx": ctx, "probes": probes()})
        else:
            out.append({"op": "rollback", "ctx": ctx})
        open_ctx.discard(ctx)
        if writer == ctx:
            writer = None

    while len(out) < steps:
        x = r.random()
        if processes > 1 and r.random() < 0.15:
            x = 0.985  # a step of the other process
        if x < 0.40:
            ctx = r.choice(["A", "A", "B", "B", "C", "fresh"])
            out.append({"op": "read", "ctx": ctx, "r": read(), "mode": mode(ctx)})
            if ctx != "fresh":
                open_ctx.add(ctx)
        elif x < 0.68:
            ctx = writer if writer and r.random() < 0.8 else r.choice(SESSION_CTX)
            if writer and writer != ctx:
                end(writer)
            if ctx == "C" and r.random() < 0.5:
                w = core_write()
            elif r.random() < 0.12:
                w = core_write()  # through the session's connection
            else:
                w = W.gen_orm_write(r, ids)
            out.append({"op": "w", "ctx": ctx, "w": w})
            writer = ctx
            open_ctx.add(ctx)
        elif x < 0.82:
            if open_ctx:
                end(r.choice(sorted(open_ctx)))
            else:
                out.append({"op": "read", "ctx": "fresh", "r": read(), "mode": mode("fresh")})
        elif x < 0.87 and "savepoint" not in without:
            ctx = writer or r.choice(["A", "B"])
            if ctx == "C":
                ctx = "A"
            if writer and writer != ctx:
                end(writer)
            ws = [W.gen_orm_write(r, ids) for _ in range(r.randrange(1, 3))]
            out.append({"op": "sp", "ctx": ctx, "ws": ws, "r": read(), "mode": mode(ctx),
                        "end": r.choice(["rollback", "release"])})  # fmt: skip
            writer = ctx
            open_ctx.add(ctx)
        elif x < 0.93 and "autocommit" not in without:
            if writer:
                end(writer)
            begin = r.random() < 0.6 and "ac_begin" not in without
            out.append({"op": "ac", "begin": begin,
                        "ws": [core_write() for _ in range(r.randrange(1, 3))],
                        "r": read(), "mode": mode("C"),
                        "end": r.choice(["commit", "commit", "rollback"]) if begin else "commit",
                        "probes": probes()})  # fmt: skip
        elif x < 0.96 and kind == "postgresql":
            if r.random() < 0.7 and "cte" not in without:
                ctx = writer or r.choice(["A", "B"])
                if ctx == "C":
                    ctx = "A"
                if writer and writer != ctx:
                    end(writer)
                out.append({"op": "cte", "ctx": ctx, "id": r.randrange(1, 15)})
                writer = ctx
                open_ctx.add(ctx)
            elif r.random() < 0.4 and "truncate" not in without:
                for ctx in sorted(open_ctx):
                    end(ctx)
                table = r.choice(["fz_tag", "fz_tag", "fz_event", "fz_person", "fz_owner"])
                out.append({"op": "truncate", "table": table, "probes": probes()})
        elif processes > 1 and 0.98 <= x < 0.99:
            if r.random() < 0.5:
                if writer:
                    end(writer)
                out.append({"op": "proc", "what": "w",
                            "w": core_write() if r.random() < 0.5
                            else W.gen_orm_write(r, ids), "probes": probes()})  # fmt: skip
            else:
                out.append({"op": "proc", "what": "r", "r": read()})
        else:
            out.append({"op": "read", "ctx": "fresh", "r": read(), "mode": mode("fresh")})
    return out[:steps]
