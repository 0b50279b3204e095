"""The ``sqla-querycache`` command: a thin layer over :mod:`.commands`.

Subcommands and their options are generated from the functions' signatures
and docstrings (``:param name:`` lines become the options' help). Rows print
as a table (``rich`` when installed), or as JSON with ``--json``. Errors print
``FAILED: ...`` and exit 1 (``--raiseerr`` shows the traceback instead).
Passwords of URLs are masked in everything printed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import commands
from .cache import QueryCache
from .exc import QueryCacheError

# scheme://user:password@ -- the password runs to the last "@" before the path
_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^/\s]*@")
_PARAM = re.compile(r":param (\w+):\s*(.*)")


def mask(text: Any) -> str:
    """Hide the password of any URL in ``text``."""
    return _PASSWORD.sub(r"\1***@", str(text))


#: the table of pyproject.toml the CLI reads: ``cache = "package.module:attribute"``
PYPROJECT_TABLE = "sqla_querycache"


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        tomllib: Any = importlib.import_module("tomllib")  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            tomllib = importlib.import_module("tomli")
        except ImportError:
            raise QueryCacheError(
                f"found {path}, but reading it needs Python 3.11 or the tomli package "
                f"(pip install tomli); or give --cache package.module:attribute / set QC_CACHE"
            ) from None
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    except Exception as err:
        raise QueryCacheError(f"cannot read {path}: {err}") from None
    return data


def find_pyproject_cache(start: str | Path | None = None) -> tuple[str, Path] | None:
    """``(spec, project directory)`` from ``[tool.sqla_querycache] cache = "..."`` in the
    nearest pyproject.toml (walking up from ``start``, default the current directory)
    that has that table; None if none has."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        path = folder / "pyproject.toml"
        if not path.is_file():
            continue
        table = _load_toml(path).get("tool", {}).get(PYPROJECT_TABLE)
        if table is None:
            continue
        spec = table.get("cache") if isinstance(table, dict) else None
        if not isinstance(spec, str) or not spec:
            raise QueryCacheError(
                f"{path}: [tool.{PYPROJECT_TABLE}] needs cache = \"package.module:attribute\""
            )
        return spec, folder
    return None


def resolve_cache_spec(given: str | None) -> tuple[str, Path | None]:
    """The cache to load: ``--cache``, then ``$QC_CACHE``, then pyproject.toml."""
    if given:
        return given, None
    env = os.environ.get("QC_CACHE")
    if env:
        return env, None
    found = find_pyproject_cache()
    if found is None:
        raise QueryCacheError(
            "which QueryCache? give --cache package.module:attribute, set QC_CACHE, or add "
            f"[tool.{PYPROJECT_TABLE}] cache = \"package.module:attribute\" to pyproject.toml"
        )
    return found


def load_cache(spec: str | None, root: str | Path | None = None) -> QueryCache:
    """``package.module:attribute`` -> the QueryCache object it names (``root``: a
    directory its package is imported from, as the project's pyproject.toml's)."""
    if not spec:
        spec, root = resolve_cache_spec(spec)
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise QueryCacheError(f"--cache must look like 'package.module:attribute', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like ``python -m``: the application's own modules
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:
        raise QueryCacheError(f"cannot import {module_name!r}: {_describe(err)}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise QueryCacheError(f"{spec!r}: {type(obj).__name__} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, QueryCache):
        raise QueryCacheError(f"{spec!r} is a {type(obj).__name__}, not a QueryCache")
    return obj


def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, QueryCacheError) else f"{type(err).__name__}: {err}"


# ------------------------------------------------------------------ parser


def _split_doc(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """A function's docstring -> (description, {parameter: help})."""
    lines: list[str] = []
    params: dict[str, str] = {}
    name = None
    for line in (inspect.getdoc(fn) or "").splitlines():
        m = _PARAM.match(line)
        if m:
            name = m.group(1)
            params[name] = m.group(2)
        elif name and line.startswith(" "):
            params[name] += " " + line.strip()
        else:
            name = None
            lines.append(line)
    return "\n".join(lines).strip(), params


def _add_command(sub: Any, name: str, cmd: commands.Command, common: Any) -> None:
    description, helps = _split_doc(cmd.fn)
    p = sub.add_parser(name, parents=[common], help=description.splitlines()[0],
                       description=description)  # fmt: skip
    if cmd.needs_cache:
        p.add_argument("--cache", dest="_cache", default=None, metavar="MODULE:ATTR",
                       help="the QueryCache to use, as package.module:attribute (default: "
                            "$QC_CACHE, else [tool.sqla_querycache] cache = ... in the "
                            "nearest pyproject.toml)")  # fmt: skip
    params = list(inspect.signature(cmd.fn).parameters.values())
    for param in params[1:] if cmd.needs_cache else params:
        flag = "--" + param.name.replace("_", "-")
        ann = str(param.annotation)
        help = helps.get(param.name, "")
        if param.default not in (None, False, inspect.Parameter.empty):
            help += f" (default: {mask(param.default)})"
        if "bool" in ann:
            p.add_argument(flag, action="store_true", dest=param.name, help=help)
        elif "list" in ann:
            p.add_argument(flag, nargs="+", dest=param.name, default=param.default,
                           metavar=param.name.upper().rstrip("S"), help=help)  # fmt: skip
        elif "int" in ann:
            p.add_argument(flag, type=int, dest=param.name, default=param.default, help=help)
        elif "float" in ann:
            p.add_argument(flag, type=float, dest=param.name, default=param.default, help=help)
        elif param.default is inspect.Parameter.empty:  # required: positional
            p.add_argument(param.name, help=help)
        else:
            p.add_argument(flag, dest=param.name, default=param.default, help=help)
    p.set_defaults(_command=cmd)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sqla_querycache")
    except Exception:
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqla-querycache", description="Inspect and manage sqla_querycache regions."
    )
    parser.add_argument("--raiseerr", action="store_true", dest="_raiseerr",
                        help="raise a full traceback on error")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", dest="_json",
                        help="print the rows as JSON, for scripts")  # fmt: skip
    sub = parser.add_subparsers(dest="_name", metavar="COMMAND", required=True)
    for name, cmd in commands.COMMANDS.items():
        _add_command(sub, name, cmd, common)
    return parser


# ------------------------------------------------------------------ output


def _seconds(v: float) -> str:
    return f"{v:.1f} s" if v < 10 and not float(v).is_integer() else f"{v:,.0f} s"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _ms(v: float) -> str:
    return f"{v * 1000:,.1f} ms"


def _percent(v: float) -> str:
    return f"{v:.1%}"


#: how a numeric value shows, by the name of its column
FORMATS: dict[str, Callable[[Any], str]] = {
    "age": _seconds, "expiration": _seconds, "bytes": _bytes, "hit_ratio": _percent,
    "ttl_left": _seconds, "entry_bytes": _bytes, "bytes_stored": _bytes,
    "db_seconds": _ms, "saved_seconds": _ms, "mean_miss_seconds": _ms,
}  # fmt: skip


_STYLES = {True: "green", False: "red"}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if _is_number(value) and column in FORMATS:
        return FORMATS[column](value)
    return mask(value)


def render(rows: Sequence[dict[str, Any]], title: str = "") -> None:
    """Print rows as a table (rich when installed, aligned text otherwise)."""
    if not rows:
        print("(nothing)")
        return
    columns = list(rows[0])
    cells = [[_cell(c, r.get(c)) for c in columns] for r in rows]
    right = [all(_is_number(r.get(c)) or r.get(c) is None for r in rows) for c in columns]
    try:
        from rich.console import Console
        from rich.measure import Measurement
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
        if title:
            print(title)
        for line in [columns, ["-" * w for w in widths], *cells]:
            print("  ".join(v.rjust(w) if r else v.ljust(w)
                            for v, w, r in zip(line, widths, right)).rstrip())  # fmt: skip
        return
    table = Table(title=title or None)
    first = max(len(line[0]) for line in cells)  # it names the row (region, key): keep it whole
    for i, (c, r) in enumerate(zip(columns, right)):
        table.add_column(c, justify="right" if r else "left", overflow="fold",
                         no_wrap=i == 0, min_width=None if i else first)  # fmt: skip
    for row, line in zip(rows, cells):
        values = [row.get(c) for c in columns]
        styles = [_STYLES[v] if isinstance(v, bool) else "" for v in values]
        table.add_row(*(Text(v, style=s) for v, s in zip(line, styles)))
    console = Console()
    if not console.is_terminal:  # piped: as wide as the table, never folded to 80 columns
        wide = console.options.update_width(sys.maxsize)
        console.width = max(console.width, Measurement.get(console, wide, table).maximum)
    console.print(table)


def _render_record(row: dict[str, Any]) -> None:
    width = max(map(len, row))
    for k, v in row.items():
        if isinstance(v, list):
            v = ", ".join(map(str, v))
        print(f"{k.ljust(width)}  {_cell(k, v)}")


def _stream(batches: Any, as_json: bool, name: str) -> int:
    """``top``: each batch as it comes (JSON: one line each); Ctrl-C ends it."""
    clear = sys.stdout.isatty() and not as_json
    try:
        for rows in batches:
            if as_json:
                print(mask(json.dumps(rows, default=str)), flush=True)
                continue
            if clear:
                print("\x1b[H\x1b[2J", end="")
            render(rows, title=f"{name}  {time.strftime('%H:%M:%S')}")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return 0


class _MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()  # the extension's warnings, passwords masked too
    handler.setFormatter(_MaskingFormatter("%(levelname)s [%(name)s] %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    cmd: commands.Command = args._command
    kwargs = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    try:
        if cmd.needs_cache:
            rows = cmd.fn(load_cache(*resolve_cache_spec(args._cache)), **kwargs)
        else:
            rows = cmd.fn(**kwargs)
        if cmd.stream:
            return _stream(rows, args._json, args._name)
    except Exception as err:
        if args._raiseerr:
            raise
        print(f"FAILED: {mask(_describe(err))}", file=sys.stderr)
        return 1
    if args._json:
        print(mask(json.dumps(rows, indent=2, default=str)))
    elif args._name in ("show", "explain"):
        _render_record(rows[0])
    elif cmd.render is not None:
        cmd.render(rows)
    else:
        render(rows, title=args._name)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
