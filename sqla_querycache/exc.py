"""Exceptions raised at configuration time.

At run time the extension fails open (a cache problem costs speed, never an
exception in the user's query), so these are only raised by constructors,
``install()`` and the manual invalidation API when given bad input.
"""

from __future__ import annotations


class QueryCacheError(Exception):
    """Base class of every exception this package raises."""


class ConfigurationError(QueryCacheError, ValueError):
    """A region, option or version store was configured wrongly."""


class UnknownRegionError(ConfigurationError, KeyError):
    """A query or session named a region the QueryCache does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class UnknownTableError(ConfigurationError, KeyError):
    """``invalidate()`` was given a table name no known ``MetaData`` declares."""

    def __str__(self) -> str:
        return str(self.args[0])
