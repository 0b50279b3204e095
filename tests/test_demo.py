"""The demo workload: deterministic data, workloads that agree cached and uncached, the table."""

from __future__ import annotations

import io
import sys

from sqlalchemy.orm import Session

from sqla_querycache import demo

SMALL = {"products": 120, "categories": 4, "customers": 6, "orders_per_customer": 2,
         "items_per_order": 2}  # fmt: skip


def test_populate_is_deterministic_and_fills_a_page():
    dumps = []
    for _ in range(2):
        engine = demo.make_engine()
        counts = demo.populate(engine, **SMALL)
        with Session(engine) as s:
            ids = demo.lookup_ids(120)
            dumps.append((demo.category_page(s), demo.customer_orders(s, 3),
                          demo.lookup_5(s, ids), demo.revenue_report(s)))  # fmt: skip
        engine.dispose()
    assert dumps[0] == dumps[1]
    assert counts == {"shop_category": 4, "shop_product": 120, "shop_customer": 6,
                      "shop_order": 12, "shop_order_item": 24}  # fmt: skip
    page, orders, lookup, report = dumps[0]
    assert len(page) == demo.PAGE_SIZE  # 120 products: two categories hold a full page
    assert [p[0] for p in page] == sorted(p[0] for p in page)
    assert len(orders[2]) == 2 and all(len(o[2]) == 2 for o in orders[2])
    assert len(lookup) == len(demo.lookup_ids(120)) == 5
    assert report and all(r[2] > 0 for r in report)


def test_run_demo_rows_and_plain_text_table(monkeypatch):
    rows = demo.run_demo(rounds=3, sizes=SMALL)
    assert [r["workload"] for r in rows] == list(demo.WORKLOADS)
    for r in rows:
        assert r["uncached_ms"] > 0 and r["cached_ms"] > 0
        assert r["hit_ratio"] is not None and r["hit_ratio"] > 0.5
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("rich", "rich.console", "rich.table"):  # rich "not installed"
        monkeypatch.setitem(sys.modules, name, None)
    out = io.StringIO()
    demo.render_table(rows, file=out)
    text = out.getvalue()
    assert demo.format_table(rows) in text and "┃" not in text
    assert all(name in text for name in demo.WORKLOADS)
