"""Rolling back a session whose connection was invalidated must not raise.

SQLAlchemy test: test/orm/test_transaction.py::TransactionConnectionsTest::
test_invalidated_connection. ``Connection.rollback()`` dispatches the
``rollback`` event before it checks whether the DBAPI connection is still
valid (sqlalchemy/engine/base.py ``_rollback_impl``); the extension's
listener (events.py ``on_rollback``: ``cache._on_rollback(conn.info)``) reads
``Connection.info``, which on an invalidated connection tries to revalidate
and raises PendingRollbackError: the rollback that would clear that state
fails. Happens with the cache merely installed (no region needed), for
sessions and plain connections. Prints OK or FAIL.
"""

from dogpile.cache import make_region
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from sqla_querycache import QueryCache

engine = create_engine("sqlite://")
cache = QueryCache(regions={"default": make_region().configure("dogpile.cache.memory")})
cache.install(Session)

ok = True
for label in ("Session.rollback()", "Connection.rollback()"):
    try:
        if label.startswith("Session"):
            sess = Session(engine)
            sess.connection().invalidate()
            sess.rollback()
        else:
            with engine.connect() as conn:
                conn.execute(text("select 1"))
                conn.invalidate()
                conn.rollback()
        print(f"{label} after invalidate(): fine")
    except Exception as err:
        ok = False
        print(f"{label} after invalidate(): {type(err).__name__}: {str(err)[:90]}")
print("OK" if ok else "FAIL")
