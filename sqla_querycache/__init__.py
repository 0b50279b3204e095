"""sqla_querycache: a SQLAlchemy 2.x query result cache that is never stale.

Cache the result sets of ORM SELECTs in dogpile.cache regions; every write
(ORM flush, bulk statement, Core DML, ``text()``, DDL) invalidates exactly
the entries that read the tables it wrote, in every process sharing the
version store. Hits rebuild ORM objects from plain values, attached to the
session, without any SQL.

Example::

    from dogpile.cache import make_region
    from sqla_querycache import QueryCache, FromCache

    cache = QueryCache(regions={
        "default": make_region().configure("dogpile.cache.memory", expiration_time=600),
    }).install(Session)
    rows = session.execute(select(Product).options(FromCache())).scalars().all()
"""

from .cache import QueryCache
from .exc import ConfigurationError, QueryCacheError, UnknownRegionError, UnknownTableError
from .near import NearCache
from .options import EXPIRATION_OPTION, REGION_OPTION, FromCache, NoCache
from .versions import LocalVersions, VersionStore

__all__ = [
    "EXPIRATION_OPTION",
    "REGION_OPTION",
    "ConfigurationError",
    "FromCache",
    "LocalVersions",
    "NearCache",
    "NoCache",
    "QueryCache",
    "QueryCacheError",
    "UnknownRegionError",
    "UnknownTableError",
    "VersionStore",
]
__version__ = "0.1.0"
