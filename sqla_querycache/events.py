"""The only module that calls ``event.listen`` / ``event.remove``.

Session-side hooks go on the class or sessionmaker given to ``install()``;
connection-side hooks (every statement, commit, rollback, two-phase commit,
pool check-in) go on the ``Engine`` and ``Pool`` classes, because writes made
outside any Session (Core, ``text()``, migrations) must invalidate too. The
listeners only route to the read path (:mod:`.readpath`) and the write path
(:mod:`.writepath`); neither imports this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, Session, sessionmaker
from sqlalchemy.pool import Pool

from . import tracking
from .exc import ConfigurationError
from .options import FromCache
from .readpath import EXPLAIN_OPTION, Explained, is_select

if TYPE_CHECKING:
    from .readpath import ReadPath
    from .writepath import WritePath


def _session_target(target: Any) -> Any:
    """A Session class / sessionmaker, or the sync side of an async one."""
    try:
        from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
    except ImportError:  # pragma: no cover
        AsyncSession = async_sessionmaker = None  # type: ignore[assignment,misc]
    if isinstance(target, type) and issubclass(target, Session):
        return target
    if isinstance(target, sessionmaker):
        return target
    if AsyncSession is not None:
        if isinstance(target, type) and issubclass(target, AsyncSession):
            return target.sync_session_class
        if isinstance(target, async_sessionmaker):
            return target.kw.get("sync_session_class") or target.class_.sync_session_class
    raise ConfigurationError(
        f"install() takes a Session class or subclass, a sessionmaker, an AsyncSession class "
        f"or an async_sessionmaker; got {target!r}"
    )


log = logging.getLogger("sqla_querycache")

# ------------------------------------------------ sessions not installed
# A statement tagged FromCache() on a session class no QueryCache is installed
# on is silently uncached: warn once per such class. The check is a listener on
# the Session base class, present only while an installation hooks a narrower
# target (a subclass, a sessionmaker); on installed classes it costs one dict
# lookup per statement.

#: the session targets of the live installations (classes, sessionmakers)
_targets: list[Any] = []
#: session class -> whether an installation covers it
_covered: dict[type, bool] = {}
_warned: set[type] = set()


def _class_of(target: Any) -> Any:
    return target.class_ if isinstance(target, sessionmaker) else target


def _check_installed(orm_state: Any) -> None:
    cls = type(orm_state.session)
    covered = _covered.get(cls)
    if covered is None:
        covered = _covered[cls] = any(issubclass(cls, _class_of(t)) for t in _targets)
    if covered or cls in _warned:
        return
    for opt in orm_state.user_defined_options:
        if isinstance(opt, FromCache):
            _warned.add(cls)
            log.warning("a statement tagged FromCache() ran on %s.%s, which "
                        "no QueryCache is installed on: not cached (install() that class or "
                        "its sessionmaker)", cls.__module__, cls.__qualname__)  # fmt: skip
            return


def _track(target: Any, add: bool) -> None:
    if add:
        _targets.append(target)
    else:
        _targets.remove(target)
    _covered.clear()
    _warned.clear()  # once per class while the installations stay as they are
    needed = bool(_targets) and Session not in _targets
    listening = event.contains(Session, "do_orm_execute", _check_installed)
    if needed and not listening:
        # first: never one of the hooks "after ours" the read path runs itself
        event.listen(Session, "do_orm_execute", _check_installed, insert=True)
    elif listening and not needed:
        event.remove(Session, "do_orm_execute", _check_installed)


class Installation:
    """The listeners one ``install()`` added; ``remove()`` takes them all away."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._target: Any = None
        #: what install() was given (a sessionmaker keeps its bind)
        self.source: Any = None

    def listen(self, target: Any, name: str, fn: Callable[..., Any], **kw: Any) -> None:
        event.listen(target, name, fn, **kw)
        self._listeners.append((target, name, fn))

    def remove(self) -> None:
        if self._target is not None:
            _track(self._target, add=False)
            self._target = None
        while self._listeners:
            target, name, fn = self._listeners.pop()
            if event.contains(target, name, fn):
                event.remove(target, name, fn)


def _info(conn: Any) -> dict[str, Any] | None:
    """``conn.info``, or None for a connection that is closed or invalidated."""
    try:
        return conn.info  # type: ignore[no-any-return]
    except Exception:
        return None


def install(reader: ReadPath, writer: WritePath, target: Any) -> Installation:
    session_target = _session_target(target)
    inst = Installation()
    key = writer.info_key

    def do_orm_execute(orm_state: Any) -> Any:
        if reader.passes(orm_state):
            return None
        if is_select(orm_state):
            return reader.on_execute(orm_state)
        if EXPLAIN_OPTION in orm_state.execution_options:  # QueryCache.explain: never run it
            raise Explained(None, not_select=True)
        return None

    def after_begin(session: Session, transaction: Any, connection: Any) -> None:
        tracker = session.info.get(key)
        if tracker is None:
            tracker = session.info[key] = tracking.SessionTracker()
        info = _info(connection)
        if info is not None:
            ct = writer.tracker(info)
            ct.in_session = True
            if ct not in tracker.conns:
                tracker.conns.append(ct)
            if tracker.commit_began:  # begun by the flush inside commit()
                ct.commit_began = tracker.commit_began

    def before_commit(session: Session) -> None:
        tracker = session.info.get(key)
        # the outermost commit only: a SAVEPOINT's release commits nothing yet
        if tracker is not None and not session.in_nested_transaction():
            tracker.committing()

    def after_commit(session: Session) -> None:
        tracker = session.info.get(key)
        if tracker is not None:
            for ct in tracker.conns:
                writer.settle_tracker(ct)

    def after_transaction_end(session: Session, transaction: Any) -> None:
        if transaction.parent is None:  # the session keeps no tracker between transactions
            session.info.pop(key, None)

    def before_cursor_execute(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        writer.on_statement(conn, context, statement)

    def after_cursor_execute(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        writer.after_statement(conn)

    def handle_error(exception_context: Any) -> None:
        conn = exception_context.connection
        if conn is not None and not conn.closed and not conn.invalidated:
            writer.after_statement(conn)

    def on_commit(conn: Any) -> None:
        writer.before_commit(conn)
        info = _info(conn)
        if info is not None:
            writer.tracker(info).end_transaction()

    def on_rollback(conn: Any) -> None:
        info = _info(conn)
        if info is not None:
            writer.on_rollback(info)

    def on_begin(conn: Any) -> None:
        info = _info(conn)
        if info is not None:
            writer.settle(info)  # a Core commit() returned earlier; finish it now
            ct = info.get(key)
            if ct is not None:
                ct.end_transaction()

    def on_commit_twophase(conn: Any, xid: Any, is_prepared: bool) -> None:
        writer.settle(_info(conn))

    def before_row_write(mapper: Any, connection: Any, target: Any) -> None:
        info = _info(connection)
        if info is not None:
            writer.hint(info, mapper, target)

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            info = record.info
            writer.settle(info)
            writer.on_rollback(info)  # the pool's reset rolled back the rest
            ct = info.get(key)
            if ct is not None and ct.idle():  # nothing to carry to the next checkout
                del info[key]

    inst.listen(session_target, "do_orm_execute", do_orm_execute)
    inst.listen(session_target, "after_begin", after_begin)
    inst.listen(session_target, "before_commit", before_commit)
    inst.listen(session_target, "after_commit", after_commit)
    inst.listen(session_target, "after_transaction_end", after_transaction_end)
    inst.listen(Engine, "before_cursor_execute", before_cursor_execute)
    inst.listen(Engine, "after_cursor_execute", after_cursor_execute)
    inst.listen(Engine, "handle_error", handle_error)
    inst.listen(Engine, "commit", on_commit)
    inst.listen(Engine, "rollback", on_rollback)
    inst.listen(Engine, "begin", on_begin)
    inst.listen(Engine, "commit_twophase", on_commit_twophase)
    inst.listen(Pool, "checkin", on_checkin)
    inst.listen(Mapper, "before_update", before_row_write)
    inst.listen(Mapper, "before_delete", before_row_write)
    inst._target = session_target
    inst.source = target
    _track(session_target, add=True)
    return inst


def covers(inst: Installation, session: Any) -> bool:
    """Do the listeners of ``inst`` see the statements of ``session``?"""
    target = inst._target
    return target is not None and isinstance(session, _class_of(target))
