"""Options that tag queries for caching: ``FromCache`` and ``NoCache``.

Both are SQLAlchemy ``UserDefinedOption`` objects, so they ride along with a
statement (``select(...).options(FromCache("hot"))``) and with legacy
``Query.options()``. They are small data objects; the decisions are made in
:mod:`sqla_querycache.cache`.
"""

from __future__ import annotations

from sqlalchemy.orm.interfaces import UserDefinedOption

from .admission import check_mode
from .exc import ConfigurationError

#: execution option naming the region a statement or a session caches in
REGION_OPTION = "cache_region"
#: execution option overriding the expiration time (seconds) of an entry
EXPIRATION_OPTION = "cache_expiration_time"
#: execution option: what, beyond the bind, makes this connection's results
#: differ (a tenant id set with SET on the connection, a role...): part of the key
SCOPE_OPTION = "cache_scope"


class FromCache(UserDefinedOption):
    """Cache this query's result in the region ``region`` (default ``"default"``).

    Example::

        stmt = select(Product).where(Product.category_id == 3)
        session.execute(stmt.options(FromCache("hot", expiration_time=5)))

    ``admission`` pins whether the cache is consulted for this statement:
    ``"always"``, ``"never"`` or ``"adaptive"`` (only while its expected saving
    is positive); None (the default) follows the region's setting
    (``QueryCache(admission=...)``).
    """

    propagate_to_loaders = False

    def __init__(
        self,
        region: str = "default",
        *,
        expiration_time: float | None = None,
        admission: str | None = None,
    ):
        if not isinstance(region, str) or not region:
            raise ConfigurationError(f"FromCache region must be a non-empty str, got {region!r}")
        if expiration_time is not None and (
            isinstance(expiration_time, bool)
            or not isinstance(expiration_time, (int, float))
            or expiration_time <= 0
        ):
            raise ConfigurationError(
                f"FromCache expiration_time must be a positive number, got {expiration_time!r}"
            )
        if admission is not None:
            check_mode("FromCache admission", admission)
        self.region = region
        self.expiration_time = expiration_time
        #: pins the statement's admission ("always", "never", "adaptive"); None: the
        #: region's (QueryCache(admission=...))
        self.admission = admission
        super().__init__(payload=(region, expiration_time))

    def __repr__(self) -> str:
        ttl = "" if self.expiration_time is None else f", expiration_time={self.expiration_time}"
        adm = "" if self.admission is None else f", admission={self.admission!r}"
        return f"FromCache({self.region!r}{ttl}{adm})"


class NoCache(UserDefinedOption):
    """Never cache this query, even if its session or statement asks for a region.

    Example::

        session.execute(select(Product).options(NoCache()))
    """

    propagate_to_loaders = True  # the objects' lazy loads bypass too

    def __init__(self) -> None:
        super().__init__(payload=None)

    def __repr__(self) -> str:
        return "NoCache()"
