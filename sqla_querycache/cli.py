"""The ``sqla-querycache`` command: a thin layer over :mod:`.commands`.

Subcommands and their options are generated from the functions' signatures
and docstrings. Errors print ``FAILED: ...`` and exit 1. URLs are printed
without passwords.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

from . import commands
from .exc import QueryCacheError

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def mask(text: Any) -> str:
    """Hide the password of any URL in ``text``."""
    return _PASSWORD.sub(r"\1***@", str(text))


def load_cache(spec: str) -> Any:
    """``package.module:attribute`` -> the QueryCache object it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise QueryCacheError(f"--cache must look like 'package.module:attribute', got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise QueryCacheError(f"cannot import {module_name!r}: {err}") from err
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if obj is None or not hasattr(obj, "regions"):
        raise QueryCacheError(f"{spec!r} is not a QueryCache")
    return obj


def _add_command(sub: Any, name: str, fn: Callable[..., Any], needs_cache: bool) -> None:
    doc = inspect.getdoc(fn) or ""
    p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
    if needs_cache:
        p.add_argument("--cache", default=os.environ.get("QC_CACHE"),
                       help="the QueryCache to inspect, as package.module:attribute "
                            "(default: $QC_CACHE)")  # fmt: skip
    params = list(inspect.signature(fn).parameters.values())
    for param in params[1:] if needs_cache else params:
        flag = "--" + param.name.replace("_", "-")
        ann = str(param.annotation)
        if "bool" in ann:
            p.add_argument(flag, action="store_true", dest=param.name)
        elif "list" in ann:
            p.add_argument(flag, nargs="+", dest=param.name, default=param.default)
        elif "int" in ann:
            p.add_argument(flag, type=int, dest=param.name, default=param.default)
        else:
            p.add_argument(flag, dest=param.name, default=param.default)
    p.set_defaults(_fn=fn, _needs_cache=needs_cache)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqla-querycache", description="Inspect and manage sqla_querycache regions."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, needs_cache) in commands.COMMANDS.items():
        _add_command(sub, name, fn, needs_cache)
    return parser


def render(rows: Sequence[dict[str, Any]], title: str = "") -> None:
    """Print rows as a table (rich when installed, aligned text otherwise)."""
    if not rows:
        print("(nothing)")
        return
    columns = list(rows[0])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        cells = [[mask("" if r.get(c) is None else r.get(c)) for c in columns] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        if title:
            print(title)
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
        return
    table = Table(title=title or None)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(mask("" if r.get(c) is None else r.get(c)) for c in columns))
    Console().print(table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items()
              if not k.startswith("_") and k not in ("command", "cache")}  # fmt: skip
    try:
        if args._needs_cache:
            if not args.cache:
                raise QueryCacheError("give --cache package.module:attribute (or set QC_CACHE)")
            rows = args._fn(load_cache(args.cache), **kwargs)
        else:
            rows = args._fn(**kwargs)
    except (QueryCacheError, ValueError, OSError) as err:
        print(f"FAILED: {mask(err)}", file=sys.stderr)
        return 1
    render(rows, title=args.command)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
