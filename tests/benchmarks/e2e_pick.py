"""Which ids the end-to-end benchmark asks for: 80% of the requests on 20% of the rows.

The ids of a workload are ``1..n``. A request draws a *rank*: with probability
``HOT_SHARE`` one of the ``hot`` first ranks (``hot`` = 20% of ``n``), else one of
the others, uniformly within each group. The rank becomes an id through a fixed
permutation, ``rank * stride % n + 1`` (``stride`` coprime with ``n``), so the hot
rows are spread over the table (and the hot products over every category) instead
of being its first ids. The wrk script (``e2e.lua_script``) does the same in Lua;
:func:`skewed` is the Python twin, used by the app's ``/mix`` route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqla_querycache import demo

HOT_SHARE = 0.8
HOT_ROWS = 0.2


@dataclass(frozen=True)
class Spec:
    """The ids of one workload: ``n`` rows (0: the page takes no id), ``hot`` of them hot."""

    n: int
    hot: int
    stride: int


def spec(n: int) -> Spec:
    """The hot set and the permutation for ``n`` ids (``n`` = 0: no id)."""
    if n <= 0:
        return Spec(0, 0, 1)
    hot = max(1, round(n * HOT_ROWS))
    stride = max(1, int(n * 0.6180339887))
    while math.gcd(stride, n) != 1:
        stride += 1
    return Spec(n, hot, stride)


#: demo.populate() defaults: 5000 products in 100 full categories, 500 customers
SPECS: dict[str, Spec] = {
    "category_page": spec(5000 // demo.PAGE_SIZE),
    "customer_orders": spec(500),
    "product": spec(5000),
    "revenue_report": spec(0),
}


def rank_to_id(rank: int, s: Spec) -> int:
    return rank * s.stride % s.n + 1


def skewed(u: int, s: Spec) -> int:
    """The id for a uniform draw ``u`` in ``0..999999`` (0 when the workload takes none)."""
    if s.n == 0:
        return 0
    cut = int(HOT_SHARE * 1_000_000)
    if u < cut or s.hot == s.n:
        rank = u * s.hot // cut if u < cut else (u - cut) * s.hot // (1_000_000 - cut)
    else:
        rank = s.hot + (u - cut) * (s.n - s.hot) // (1_000_000 - cut)
    return rank_to_id(rank, s)
