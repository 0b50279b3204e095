"""The deterministic replayer and the oracle.

:class:`Env` is one database + version store kind (an engine that lives across
runs). :func:`replay` resets the data, installs a fresh :class:`QueryCache`
(its own namespace) on :class:`FuzzSession`, and executes a trace step by
step, checking after every step:

- in-context: each read runs tagged for the cache, then with ``NoCache()`` (or,
  for ``text()``, on the session's connection), in the same session and
  transaction; the rendered outcomes must be equal;
- fresh: a read in a new session tagged, the same read in another new session
  uncached (equal), then tagged again in a third new session: equal again, and
  counted as a hit when it sent no SQL (the hit ratio);
- after every ``commit()`` (session, connection, AUTOCOMMIT, TRUNCATE, the other
  process) its probes run the fresh check;
- volatile reads (``now()``, ``random()``, a sequence, ``FOR UPDATE``, a
  data-modifying CTE) must send SQL every time.

The first violated check ends the replay with a :class:`Failure`.
"""

from __future__ import annotations

import gc
import itertools
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from dogpile.cache import make_region
from sqlalchemy import event, inspect, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from sqla_querycache import FromCache, QueryCache

from . import reads as R
from . import schema as S
from . import writes as W


class FuzzSession(Session):
    """The Session class the fuzzer's QueryCache is installed on."""


@dataclass
class Failure:
    check: str  # e.g. "fresh-mismatch"
    detail: str  # the read / op kind
    step: int
    message: str

    @property
    def signature(self) -> str:
        return f"{self.check}:{self.detail}"


@dataclass
class Outcome:
    failure: Failure | None = None
    steps_run: int = 0
    hit_attempts: int = 0
    hits: int = 0
    compared: int = 0
    skipped_errors: int = 0
    #: in-session pairs not compared: the first read's autoflush deleted what the
    #: second would read by identity
    order_skipped: int = 0
    log: list[str] = field(default_factory=list)


class Stop(Exception):
    def __init__(self, failure: Failure):
        self.failure = failure


_ns = itertools.count()


class Env:
    """A database (engine kept across runs) and a version store kind."""

    def __init__(self, url: str, store: str, redis_url: str | None = None):
        self.url = url
        self.store = store
        self.redis_url = redis_url or S.DEFAULT_REDIS
        self.engine = S.make_engine(url)
        self.kind = S.db_kind(self.engine)
        S.create_schema(self.engine)
        self.count = 0
        event.listen(self.engine.engine if hasattr(self.engine, "engine") else self.engine,
                     "before_cursor_execute", self._count)  # fmt: skip

    def _count(self, *args: Any) -> None:
        self.count += 1

    def new_cache(self) -> QueryCache:
        ns = f"fz{os.getpid()}n{next(_ns)}"
        if self.store == "redis":
            def region() -> Any:
                return make_region().configure(
                    "dogpile.cache.redis", expiration_time=600,
                    arguments={"url": self.redis_url, "redis_expiration_time": 900})  # fmt: skip

            cache = QueryCache(regions={"default": region(), "hot": region()},
                               versions=self.redis_url, namespace=ns,
                               identity_region="default")  # fmt: skip
        else:
            def region() -> Any:
                return make_region().configure("dogpile.cache.memory", expiration_time=600)

            cache = QueryCache(regions={"default": region(), "hot": region()}, namespace=ns,
                               identity_region="default")  # fmt: skip
        return cache.install(FuzzSession)

    def cleanup_redis(self, ns: str) -> None:
        if self.store != "redis":
            return
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"*{ns}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i:i + 500])
        finally:
            client.close()

    def close(self) -> None:
        self.engine.dispose()


_BY_IDENTITY = ("get", "lazy")


def _key_of(obj_or_key: Any) -> Any:
    """An object's (or an identity key's) class and primary key, without the token."""
    key = obj_or_key if isinstance(obj_or_key, tuple) else inspect(obj_or_key).key
    return key[:2] if key is not None else None


def _is_db_error(err: BaseException) -> bool:
    return isinstance(err, (DBAPIError, SQLAlchemyError))


class Replay:
    def __init__(self, env: Env, trace: list[dict[str, Any]], proc: Any = None,
                 verbose: bool = False):  # fmt: skip
        self.env = env
        self.kind = env.kind
        self.trace = trace
        self.proc = proc
        self.verbose = verbose
        self.out = Outcome()
        self.ctx: dict[str, Any] = {}
        self.step = -1

    # ----------------------------------------------------------- contexts

    def session(self, name: str) -> Any:
        s = self.ctx.get(name)
        if s is not None:
            return s
        if name == "A":
            s = FuzzSession(self.env.engine, info={"cache_region": "default"})
        elif name == "B":
            s = FuzzSession(self.env.engine)
        elif name == "C":
            conn = self.env.engine.connect()
            conn.begin()
            self.ctx["C.conn"] = conn
            s = FuzzSession(bind=conn)
        else:
            raise AssertionError(name)
        self.ctx[name] = s
        return s

    def conn_of(self, name: str) -> Any:
        if name == "C":
            self.session("C")
            return self.ctx["C.conn"]
        return self.session(name).connection()

    def end(self, name: str, commit: bool) -> None:
        s = self.ctx.pop(name, None)
        if s is None:
            return
        try:
            if name == "C":
                conn = self.ctx.pop("C.conn")
                try:
                    if commit:
                        s.flush()
                        s.commit()
                        if conn.in_transaction():
                            conn.commit()
                    else:
                        s.rollback()
                        if conn.in_transaction():
                            conn.rollback()
                finally:
                    s.close()
                    conn.close()
            elif commit:
                s.commit()
            else:
                s.rollback()
        finally:
            s.close()

    def abort(self, name: str) -> None:
        """A context hit a database error: roll it back and forget it."""
        try:
            self.end(name, commit=False)
        except Exception:
            self.ctx.pop(name, None)
            self.ctx.pop("C.conn", None)

    def close_all(self) -> None:
        for name in ("A", "B", "C"):
            self.abort(name)

    # ------------------------------------------------------------- checks

    def fail(self, check: str, detail: str, message: str) -> None:
        raise Stop(Failure(check, detail, self.step, message))

    def note(self, msg: str) -> None:
        if self.verbose:
            print(f"  [{self.step}] {msg}")
        self.out.log.append(f"[{self.step}] {msg}")

    def _exec(self, fn: Any) -> tuple[Any, BaseException | None, int]:
        mark = self.env.count
        try:
            return fn(), None, self.env.count - mark
        except Exception as err:
            return None, err, self.env.count - mark

    def in_context(self, name: str, spec: dict[str, Any], mode: str) -> None:
        """Tagged, then uncached, in the same session (same transaction).

        Both reads must see the same session: the identity map holds clean
        objects weakly, and an object kept only by a reference cycle (an owner
        and its loaded items) lives until the cycle collector happens to run,
        so one read could find it, attributes loaded, and the next a fresh
        copy (seed 11519731). The objects the session holds are kept, and the
        collector paused, for the pair."""
        s = self.session(name)
        held = list(s.identity_map.values())
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._pair(s, name, spec, mode)
        finally:
            if collecting:
                gc.enable()
            del held

    def _pair(self, s: Session, name: str, spec: dict[str, Any], mode: str) -> None:
        label = spec["k"] if spec["k"] != "volatile" else f"volatile:{spec['q']}"
        # The cached read goes first; if it autoflushes, the flush expires the
        # SQL-expression column properties of the objects it touched, so the
        # uncached read after it reloads them while the cached one may have
        # returned them from the identity map before the flush. That order
        # effect is SQLAlchemy's, with or without a cache: compare such
        # attributes only when no flush was pending.
        pending = bool(s.autoflush and (s.new or s.dirty or s.deleted))
        # Likewise, a read by identity (get, and the lazy load on its object) of an
        # object deleted but not flushed yet finds it in the identity map; if the
        # first read's autoflush (its lazy load's) deletes it, the second finds
        # nothing, whichever of the two goes first (seed 2105251)
        deleting = {_key_of(o) for o in s.deleted} if pending and spec["k"] in _BY_IDENTITY else ()
        cached, err, n = self._exec(lambda: R.run_read(s, spec, self.kind, True, mode))
        if err is not None:
            if not _is_db_error(err):
                self.fail("cached-raised", label, f"in {name}: {R.describe(spec)}\n"
                          + "".join(traceback.format_exception(err)))  # fmt: skip
            self.note(f"cached read raised {type(err).__name__}; {name} rolled back")
            self.out.skipped_errors += 1
            self.abort(name)
            return
        if deleting:
            target = _key_of(s.identity_key(S.MODELS[spec["ent"]], spec["id"]))
            if target in deleting and not any(_key_of(o) == target for o in s.deleted):
                self.note(f"{name}: the read's autoflush deleted {target}: the pair is not comparable")
                self.out.order_skipped += 1
                return
        if R.is_volatile(spec):
            if n == 0:
                self.fail("volatile-cached", label, f"in {name}: {R.describe(spec)} sent no SQL")
            return
        plain, err, _ = self._exec(lambda: R.run_read(s, spec, self.kind, False, mode))
        if err is not None:
            if not _is_db_error(err):
                raise err
            self.note(f"uncached read raised {type(err).__name__}; {name} rolled back")
            self.out.skipped_errors += 1
            self.abort(name)
            return
        self.out.compared += 1
        if pending:
            cached, plain = R.without_flush_expired(cached), R.without_flush_expired(plain)
        if cached != plain:
            self.fail("ctx-mismatch", label,
                      f"in {name} ({mode}): {R.describe(spec)}\n cached:   {cached}\n uncached: {plain}")  # fmt: skip

    def fresh(self, spec: dict[str, Any], mode: str, why: str) -> None:
        """Tagged in a new session, uncached in another, tagged again in a third."""
        if mode == "session":
            mode = "df"
        label = spec["k"] if spec["k"] != "volatile" else f"volatile:{spec['q']}"

        def run(cached: bool) -> tuple[Any, BaseException | None, int]:
            def go() -> Any:
                with FuzzSession(self.env.engine) as s:
                    return R.run_read(s, spec, self.kind, cached, mode)

            return self._exec(go)

        first, err1, n1 = run(True)
        if err1 is not None and not _is_db_error(err1):
            self.fail("cached-raised", label, f"fresh ({why}): {R.describe(spec)}\n"
                      + "".join(traceback.format_exception(err1)))  # fmt: skip
        if R.is_volatile(spec):
            again, err3, n3 = run(True)
            if (err1 is None and n1 == 0) or (err3 is None and n3 == 0):
                self.fail("volatile-cached", label, f"fresh ({why}): {R.describe(spec)} sent no SQL")
            return
        plain, err2, _ = run(False)
        if err1 is not None or err2 is not None:
            self.note(f"fresh read raised {type(err1 or err2).__name__}")
            self.out.skipped_errors += 1
            return
        self.out.compared += 1
        if first != plain:
            self.fail("fresh-mismatch", label,
                      f"fresh ({why}, {mode}): {R.describe(spec)}\n cached:   {first}\n uncached: {plain}")  # fmt: skip
        again, err3, n3 = run(True)
        if err3 is not None:
            if not _is_db_error(err3):
                self.fail("cached-raised", label, "".join(traceback.format_exception(err3)))
            return
        self.out.hit_attempts += 1
        if n3 == 0:
            self.out.hits += 1
        if again != plain:
            self.fail("hit-mismatch" if n3 == 0 else "fresh-mismatch", label,
                      f"fresh repeat ({why}, {mode}, {n3} statements): {R.describe(spec)}\n"
                      f" cached:   {again}\n uncached: {plain}")  # fmt: skip

    def probes(self, step: dict[str, Any], why: str) -> None:
        for spec in step.get("probes", ()):
            self.fresh(spec, "df", why)

    # --------------------------------------------------------------- steps

    def write(self, name: str, w: dict[str, Any]) -> None:
        try:
            if w["t"] in ("core_upd", "core_del", "core_ins", "text", "driver"):
                if name == "C":
                    res = W.run_core_write(self.conn_of("C"), w, self.kind)
                else:
                    s = self.session(name)
                    if w["t"] == "text" and w["v"] % 2:
                        s.execute(text(W.text_writes(self.kind)[w["q"]].format(**W._fmt(w))))
                        res = "ok"
                    else:
                        res = W.run_core_write(s.connection(), w, self.kind)
            else:
                res = W.run_orm_write(self.session(name), w)
            self.note(f"{name}: {res}")
        except Exception as err:
            if not _is_db_error(err):
                raise
            self.note(f"{name}: write raised {type(err).__name__}; rolled back")
            self.abort(name)

    def run_step(self, step: dict[str, Any]) -> None:
        op = step["op"]
        if op == "read":
            if step["ctx"] == "fresh":
                self.fresh(step["r"], step["mode"], "read")
            else:
                self.in_context(step["ctx"], step["r"], step["mode"])
        elif op == "w":
            self.write(step["ctx"], step["w"])
        elif op == "commit":
            if step["ctx"] not in self.ctx:
                return
            try:
                self.end(step["ctx"], commit=True)
            except Exception as err:
                if not _is_db_error(err):
                    raise
                self.note(f"commit raised {type(err).__name__}")
                self.abort(step["ctx"])
                return
            self.probes(step, f"after commit of {step['ctx']}")
        elif op == "rollback":
            self.abort(step["ctx"])
        elif op == "sp":
            self.savepoint(step)
        elif op == "ac":
            self.autocommit(step)
        elif op == "cte":
            s = self.session(step["ctx"])
            mark = self.env.count
            try:
                s.execute(R.cte_update_stmt(step["id"]).options(FromCache())).all()
            except Exception as err:
                if not _is_db_error(err):
                    raise
                self.abort(step["ctx"])
                return
            if self.env.count == mark:
                self.fail("volatile-cached", "cte_update",
                          "a SELECT over a data-modifying CTE was served from the cache")  # fmt: skip
        elif op == "truncate":
            self.close_all()
            try:
                with self.env.engine.begin() as conn:
                    conn.execute(text(f"TRUNCATE {step['table']} CASCADE"))
            except Exception as err:
                if not _is_db_error(err):
                    raise
                self.note(f"truncate raised {type(err).__name__}")
                return
            self.probes(step, f"after TRUNCATE {step['table']} CASCADE")
        elif op == "proc":
            self.other_process(step)
        else:
            raise AssertionError(op)

    def savepoint(self, step: dict[str, Any]) -> None:
        name = step["ctx"]
        s = self.session(name)
        try:
            sp = s.begin_nested()
        except Exception as err:
            if not _is_db_error(err):
                raise
            self.abort(name)
            return
        for w in step["ws"]:
            self.write(name, w)
            if name not in self.ctx:
                return
        self.in_context(name, step["r"], step["mode"])
        if name not in self.ctx:
            return
        try:
            if step["end"] == "rollback":
                sp.rollback()
            else:
                sp.commit()
        except Exception as err:
            if not _is_db_error(err):
                raise
            self.abort(name)
            return
        self.in_context(name, step["r"], step["mode"])

    def autocommit(self, step: dict[str, Any]) -> None:
        engine = self.env.engine
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            began = False
            try:
                if step["begin"]:
                    conn.exec_driver_sql("BEGIN")
                    began = True
                for w in step["ws"]:
                    W.run_core_write(conn, w, self.kind)
            except Exception as err:
                if not _is_db_error(err):
                    raise
                self.note(f"autocommit write raised {type(err).__name__}")
                if began:
                    try:
                        conn.exec_driver_sql("ROLLBACK")
                    except Exception:
                        pass
                return
            with FuzzSession(bind=conn) as s:
                self.ctx["AC"] = s
                try:
                    self.in_context("AC", step["r"], step["mode"])
                finally:
                    self.ctx.pop("AC", None)
            # a read of the others while the textual transaction is open
            self.fresh(step["r"], "df", "autocommit connection inside its textual transaction"
                       if began else "after autocommit writes")  # fmt: skip
            if began:
                try:
                    conn.exec_driver_sql(step["end"].upper())
                except Exception as err:
                    if not _is_db_error(err):
                        raise
                    return
        self.probes(step, f"after AUTOCOMMIT {'textual ' + step['end'] if began else 'writes'}")

    def other_process(self, step: dict[str, Any]) -> None:
        if self.proc is None:
            return
        if step["what"] == "w":
            self.proc.call({"op": "w", "w": step["w"]})
            self.probes(step, "after the other process's commit")
        else:
            reply = self.proc.call({"op": "r", "r": step["r"]})
            if reply.get("error") or R.is_volatile(step["r"]):
                return  # (volatile values differ by nature; the parent checks those for SQL)
            self.out.compared += 1
            if reply["cached"] != reply["plain"]:
                self.fail("fresh-mismatch", step["r"]["k"],
                          f"other process: {R.describe(step['r'])}\n cached:   {reply['cached']}\n"
                          f" uncached: {reply['plain']}")  # fmt: skip

    # ----------------------------------------------------------------- run

    def run(self) -> Outcome:
        S.reset_data(self.env.engine)
        cache = self.env.new_cache()
        if self.proc is not None:
            self.proc.call({"op": "reset", "ns": cache.namespace})
        try:
            for i, step in enumerate(self.trace):
                self.step = i
                if self.verbose:
                    print(f"step {i}: {describe_step(step, self.kind)}")
                self.run_step(step)
                self.out.steps_run = i + 1
        except Stop as stop:
            self.out.failure = stop.failure
        except Exception as err:  # the fuzzer itself, or the library raising oddly
            self.out.failure = Failure("crash", type(err).__name__, self.step,
                                       "".join(traceback.format_exception(err)))  # fmt: skip
        finally:
            self.close_all()
            cache.close()
            self.env.engine.dispose()
            self.env.cleanup_redis(cache.namespace)
        return self.out


def replay(env: Env, trace: list[dict[str, Any]], proc: Any = None, verbose: bool = False) -> Outcome:
    return Replay(env, trace, proc, verbose).run()


def describe_step(step: dict[str, Any], kind: str) -> str:
    op = step["op"]
    if op == "read":
        return f"{step['ctx']}: read [{step['mode']}] {R.describe(step['r'])}"
    if op == "w":
        return f"{step['ctx']}: write {W.describe(step['w'], kind)}"
    if op == "commit":
        return f"{step['ctx']}: commit(); probes: " + "; ".join(R.describe(p) for p in step["probes"])
    if op == "rollback":
        return f"{step['ctx']}: rollback()"
    if op == "sp":
        return (f"{step['ctx']}: begin_nested(); " + "; ".join(W.describe(w, kind) for w in step["ws"])
                + f"; read [{step['mode']}] {R.describe(step['r'])}; savepoint {step['end']}")  # fmt: skip
    if op == "ac":
        return (f"AUTOCOMMIT conn: {'BEGIN; ' if step['begin'] else ''}"
                + "; ".join(W.describe(w, kind) for w in step["ws"])
                + f"; read {R.describe(step['r'])}; {step['end'].upper() if step['begin'] else ''}"
                + "; probes: " + "; ".join(R.describe(p) for p in step["probes"]))  # fmt: skip
    if op == "cte":
        return f"{step['ctx']}: select(update(fz_item).where(id == {step['id']}).returning(...).cte()) [FromCache]"
    if op == "truncate":
        return f"TRUNCATE {step['table']} CASCADE; probes: " + "; ".join(R.describe(p) for p in step["probes"])
    if op == "proc":
        if step["what"] == "w":
            return f"other process: write {W.describe(step['w'], kind)}; commit"
        return f"other process: read {R.describe(step['r'])}"
    return repr(step)


def elapsed(t0: float) -> str:
    return f"{time.monotonic() - t0:.1f}s"
