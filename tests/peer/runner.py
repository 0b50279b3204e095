"""``python -m tests.peer``: SQLAlchemy's ORM test suite, plain and with every SELECT cached.

For each chosen file of the SQLAlchemy source distribution's ``test/orm/``
(the sdist matching the *installed* SQLAlchemy, fetched with pip and unpacked
into a cache directory), run pytest twice, one file at a time, with
SQLAlchemy's own pytest plugin (its ``test/conftest.py`` and settings):
plainly, then with :mod:`tests.peer.plugin` caching every ORM SELECT. Compare
per-test outcomes and print the tests whose outcome changed, classified:

- ``sql-count``: the failure is a statement-count / SQL assertion (the test
  counts or matches the statements it sends: ``assert_sql_count``,
  ``assert_sql_execution``, ``CountStatements``, ``AssertsExecutionResults``,
  profiling): a cache hit sends fewer statements, by design;
- ``observe-option``: the test observes the caching option itself
  (``session.info``, execution options, listener lists compared);
- ``other``: everything else: a behaviour change to explain. The command
  exits 1 when there is one.

Exit status: 0 no ``other`` change, 1 some, 2 the harness could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".peer-cache"

#: the issue's 14 files (alternatives: the first that exists in the sdist)
CORE_FILES = [
    "test_query.py",
    "test_eager_relations.py",
    "test_selectin_relations.py",
    "test_subquery_relations.py",
    "test_expire.py",
    "test_unitofwork.py",
    "test_froms.py",
    "test_joins.py",
    "test_lazy_relations.py",
    "test_transaction.py",
    "test_relationships.py",
    "test_merge.py",
    "inheritance/test_polymorphic_rel.py",
    # 2.0: dml/test_update_delete_where.py; 2.1 split it into test_orm_upd_del_*.py
    "dml/test_update_delete_where.py|dml/test_orm_upd_del_basic.py",
]

#: the widened list: every file below also runs in reasonable time (see README.md)
WIDE_FILES = [
    *CORE_FILES,
    "dml/test_orm_upd_del_assorted.py",
    "dml/test_orm_upd_del_inheritance.py",
    "dml/test_bulk_statements.py",
    "test_session.py",
    "test_deferred.py",
    "test_cascade.py",
    "test_bind.py",
    "test_events.py",
    "test_dynamic.py",
    "test_options.py",
    "test_of_type.py",
    "test_assorted_eager.py",
    "test_composites.py",
    "test_naturalpks.py",
    "test_versioning.py",
    "test_unitofworkv2.py",
    "test_relationship_criteria.py",
    "test_ac_relationships.py",
    "test_default_strategies.py",
    "test_immediate_load.py",
    "test_manytomany.py",
    "test_cycles.py",
    "test_backref_mutations.py",
    "test_scoping.py",
    "?test_text.py",  # ? : only in some versions (2.1)
    "test_bundle.py",
    "test_load_on_fks.py",
    "test_lockmode.py",
    "test_recursive_loaders.py",
    "test_generative.py",
    "test_selectable.py",
    "inheritance/test_basic.py",
    "inheritance/test_single.py",
    "inheritance/test_relationship.py",
    "inheritance/test_poly_loading.py",
    "inheritance/test_assorted_poly.py",
    "inheritance/test_concrete.py",
    "inheritance/test_with_poly.py",
    "inheritance/test_poly_persistence.py",
    "inheritance/test_abc_inheritance.py",
]

#: the CI slice (tests/test_peer.py): fast, and rich in reads after writes
CI_FILES = ["test_lazy_relations.py", "test_expire.py"]

LISTS = {"core": CORE_FILES, "wide": WIDE_FILES, "ci": CI_FILES}


# ------------------------------------------------------------ the sdist


class HarnessError(Exception):
    """The comparison could not be made (no sdist, pytest did not run...)."""


def installed_sqlalchemy(python: str) -> str:
    out = subprocess.run(
        [python, "-s", "-c", "import sqlalchemy; print(sqlalchemy.__version__)"],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    if out.returncode != 0:
        raise HarnessError(f"{python} cannot import sqlalchemy: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def fetch_sdist(version: str, cache: Path, python: str, log: Any) -> Path:
    """The sdist tarball of ``version`` in ``cache``, downloaded with pip if absent."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in (f"sqlalchemy-{version}.tar.gz", f"SQLAlchemy-{version}.tar.gz"):
        if (cache / name).exists():
            return cache / name
    log(f"downloading the SQLAlchemy {version} source distribution with pip into {cache}")
    # --no-binary for sqlalchemy only: its build requirements (needed by pip to
    # read the sdist's metadata) may come as wheels; ":all:" would compile Cython
    cmd = [python, "-m", "pip", "download", "--no-deps", "--no-binary", "sqlalchemy",
           f"sqlalchemy=={version}", "-d", str(cache)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    for name in (f"sqlalchemy-{version}.tar.gz", f"SQLAlchemy-{version}.tar.gz"):
        if (cache / name).exists():
            return cache / name
    raise HarnessError(
        f"cannot download the SQLAlchemy {version} sdist ({' '.join(cmd)}): "
        f"{(out.stdout + out.stderr).strip()[-800:]}"
    )


def unpack(sdist: Path, cache: Path) -> Path:
    """The unpacked source tree (a directory given as is, a tarball unpacked once)."""
    if sdist.is_dir():
        return sdist
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        dest = cache / top
        if (dest / "test" / "conftest.py").exists():
            return dest
        tmp = cache / f".{top}.unpacking"
        shutil.rmtree(tmp, ignore_errors=True)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:  # pragma: no cover - Python without tarfile filters
            tar.extractall(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    (tmp / top).rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_files(tree: Path, names: list[str]) -> list[str]:
    """Paths under ``test/orm`` as they exist in this sdist."""
    out: list[str] = []
    for name in names:
        optional = name.startswith("?")
        choices = name.lstrip("?").split("|")
        for choice in choices:
            if (tree / "test" / "orm" / choice).exists():
                if choice not in out:
                    out.append(choice)
                break
        else:
            if not optional:
                raise HarnessError(f"no test/orm/{' or '.join(choices)} in {tree}")
    return out


def extension_snapshot(rev: str, cache: Path) -> Path | None:
    """A directory holding ``sqla_querycache`` as of git ``rev`` (None: the work tree)."""
    if rev in ("", "worktree"):
        return None
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)  # fmt: skip
    if sha.returncode != 0:
        raise HarnessError(f"unknown git revision {rev!r}: {sha.stderr.strip()}")
    dest = cache / "extension" / sha.stdout.strip()[:12]
    if not (dest / "sqla_querycache" / "__init__.py").exists():
        tmp = dest.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha.stdout.strip(),
                                  "sqla_querycache", "migrations"], capture_output=True)  # fmt: skip
        if archive.returncode != 0:
            raise HarnessError(f"git archive failed: {archive.stderr.decode()[-500:]}")
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


# ------------------------------------------------------------ running


def run_file(
    python: str, tree: Path, path: str, variant: str, out_json: Path, log_file: Path,
    args: argparse.Namespace, ext_dir: Path | None,
) -> tuple[dict[str, Any], float]:  # fmt: skip
    env = dict(os.environ)
    pythonpath = [str(REPO)]
    if ext_dir is not None:
        pythonpath.insert(0, str(ext_dir))
    if env.get("PYTHONPATH"):
        pythonpath.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env.pop("PYTEST_ADDOPTS", None)
    py = [python] if args.sdist_lib else [python, "-s"]  # -s: test the installed SQLAlchemy
    cmd = [
        *py, "-m", "pytest", f"test/orm/{path}",
        "-p", "tests.peer.plugin", f"--qc-peer={variant}", f"--qc-peer-out={out_json}",
        f"--qc-peer-redis-url={args.redis_url}",
        "-p", "no:cacheprovider", "--maxfail=1000000", "--tb=native", "-q", "-rN",
    ]  # fmt: skip
    if args.db:
        cmd += ["--db", args.db]
    if args.dburi:
        cmd += ["--dburi", args.dburi]
    if not args.strict_sql:
        cmd += ["--qc-peer-relax-sql"]
    if args.k:
        cmd += ["-k", args.k]
    cmd += args.pytest_args
    out_json.unlink(missing_ok=True)
    started = time.monotonic()
    with open(log_file, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=args.timeout)  # fmt: skip
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = -1
    seconds = time.monotonic() - started
    if not out_json.exists():
        tail = log_file.read_text(errors="replace")[-1500:]
        raise HarnessError(f"pytest wrote no results for {path} ({variant}, exit {rc}); "
                           f"log {log_file}:\n{tail}")  # fmt: skip
    data = json.loads(out_json.read_text())
    data["meta"]["returncode"] = rc
    data["meta"]["wall_seconds"] = round(seconds, 2)
    if rc == -1:
        data["meta"]["timeout"] = True
    out_json.write_text(json.dumps(data, indent=1))
    return data, seconds


# ------------------------------------------------------------ classifying

_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
_COUNT_FRAMES = re.compile(r"(assertsql\.py|profiling\.py)$")
_COUNT_FUNCS = {
    "assert_sql_count", "assert_sql_execution", "assert_statement_count",
    "assert_statement_count_multi_db", "assert_execution", "assert_multiple_sql_count",
    "function_call_count", "count_functions", "sql_execution_asserter",
}  # fmt: skip
_COUNT_MESSAGES = re.compile(
    r"desired statement count|Additional SQL statements remain|Testing for compiled statement"
    r"|All statements are complete, but pending assertion rules remain"
    r"|\[cached since|\[generated in|\[caching disabled"  # SQLAlchemy's statement log lines
    r"|Testing for exact statement|Adjusted function call count|exceeds the limit"
    r"|function call count|statements? (?:were|was) (?:expected|emitted)",
    re.I,
)
_OPTION_MARKERS = re.compile(
    r"cache_region|cache_expiration_time|_sqla_querycache|sqla_querycache|install\.<locals>"
    r"|QueryCache|FromCache|NoCache|_qc_"
)


def last_exception(text: str) -> tuple[list[tuple[str, str, str, str]], str]:
    """The final exception of a native traceback: its frames (file, line, func, code) and message."""
    lines = text.splitlines()
    start = 0
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            start = i
    frames: list[tuple[str, str, str, str]] = []
    message: list[str] = []
    i = start + 1
    while i < len(lines):
        m = _FRAME.match(lines[i])
        if m:
            code = lines[i + 1].strip() if i + 1 < len(lines) and not _FRAME.match(lines[i + 1]) else ""
            frames.append((m.group(1), m.group(2), m.group(3), code))
            i += 2 if code else 1
            # skip the caret lines of Python >= 3.11
            while i < len(lines) and re.match(r"^\s*[\^~]+\s*$", lines[i]):
                i += 1
            continue
        if lines[i].startswith("---- "):  # a second phase's report (see plugin.py)
            break
        message.append(lines[i])
        i += 1
    return frames, "\n".join(message).strip()


#: tests whose assertion is their own record of what the ORM executed, kept by a
#: ``do_orm_execute`` / ``before_cursor_execute`` listener or a patched
#: ``QueryContext`` (one per statement whose rows the ORM loads): a hit executes
#: fewer statements, exactly what an SQL count sees. Each was read and listed
#: with what it records; it counts as sql-count only when its failure is an
#: ``AssertionError`` raised in the test function itself (not an error inside
#: the code under test, not a failure anywhere else).
RECORDS_EXECUTIONS = {
    "test/orm/test_events.py::ORMExecuteTest::test_user_option_propagation":
        "a do_orm_execute listener records update_execution_options per statement, "
        "the selectin/subquery post-loads included",
    "test/orm/test_events.py::ORMExecuteTest::test_execution_option_visibility_and_mutation":
        "do_orm_execute and before_cursor_execute listeners record each execution's options",
    "test/orm/test_events.py::ORMExecuteTest::test_load_option_propagation_to_post_load":
        "a patched QueryContext.__init__ records the load options of each executed statement",
}  # fmt: skip


def _raised_by_test(frames: list[tuple[str, str, str, str]], nodeid: str) -> bool:
    """Was the assertion raised by the test function ``nodeid`` names itself (directly
    or through ``eq_``), not by the code it calls?"""
    path = nodeid.split("::", 1)[0]
    func = nodeid.split("[", 1)[0].rsplit("::", 1)[-1]
    if frames and frames[-1][2] == "eq_":
        frames = frames[:-1]
    return bool(frames) and frames[-1][0].endswith(path) and frames[-1][2] == func


def classify(
    plain: dict[str, Any] | None, cached: dict[str, Any] | None, nodeid: str = ""
) -> tuple[str, str]:
    """(class, one-line reason) of a changed outcome."""
    if plain is None or cached is None:
        return "other", "ran in only one of the two runs"
    text = cached.get("longrepr") or ""
    if not text and plain.get("longrepr"):
        return "other", f"{plain['outcome']} plainly, {cached['outcome']} cached"
    if not text:
        return "other", f"{plain['outcome']} -> {cached['outcome']}: {cached.get('reason', '')}"
    if cached.get("relaxed") and "[relaxed by qc-peer; the test then passed]" in text:
        return "sql-count", cached["relaxed"][0] + " (relaxed; the test then passed)"
    frames, message = last_exception(text)
    first = message.splitlines()[0] if message else "(no message)"
    is_assert = message.startswith("AssertionError") or message.startswith("assert ")
    in_count = any(_COUNT_FRAMES.search(f[0]) or f[2] in _COUNT_FUNCS for f in frames)
    last_file = frames[-1][0] if frames else ""
    # a statement-count / SQL-matching assertion failed (not: an error raised
    # inside the callable an assertion wraps)
    if is_assert and (
        _COUNT_FRAMES.search(last_file)
        or (frames and frames[-1][2] in _COUNT_FUNCS)
        or _COUNT_MESSAGES.search(message)
        or (in_count and not any("sqla_querycache" in f[0] for f in frames))
    ):
        return "sql-count", first
    test_line = next((f[3] for f in reversed(frames) if "/test/" in f[0]), "")
    if is_assert and re.search(r"sql_count|statement_count|assert_sql|asserter|CountStatements",
                               test_line):  # fmt: skip
        return "sql-count", first
    recorder = RECORDS_EXECUTIONS.get(nodeid.split("[", 1)[0])
    if recorder is not None and is_assert and _raised_by_test(frames, nodeid):
        return "sql-count", f"records the statements run ({recorder}): {first}"
    if is_assert and _OPTION_MARKERS.search(message):
        return "observe-option", first
    if is_assert and "_sa_skip_events" in message:
        # a mock of Session.get_bind sees the call SQLAlchemy itself makes when a
        # do_orm_execute hook re-executes (ORMExecuteState.invoke_statement adds
        # _sa_skip_events=True): the test observes the interception, not a result
        return "observe-option", "get_bind() observed with invoke_statement's _sa_skip_events: " + first
    return "other", first


# ------------------------------------------------------------ the command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.peer",
        description="Run SQLAlchemy's ORM tests plainly and with every SELECT cached; "
        "report the tests whose outcome changed.",
    )
    p.add_argument("--files", nargs="+", default=None, metavar="FILE",
                   help="files under test/orm/ (a|b: the first that exists), or a list name: "
                   "core (the 14 of the issue), wide (every file measured), ci; default core")  # fmt: skip
    p.add_argument("--variant", choices=("memory", "redis", "installed"), default="memory",
                   help="the cached run: memory region, Redis region + versions, or "
                   "'installed' (listeners only, nothing cached); default memory")  # fmt: skip
    p.add_argument("--sqlalchemy-sdist", type=Path, default=None, metavar="PATH",
                   help="a SQLAlchemy sdist tarball or unpacked tree (default: pip download "
                   "the installed version into the cache dir)")  # fmt: skip
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("QC_PEER_CACHE", DEFAULT_CACHE)),
                   help="where the sdist, runs and reports go (default .peer-cache/)")  # fmt: skip
    p.add_argument("--extension", default="worktree", metavar="REV",
                   help="sqla_querycache to test: 'worktree' (default) or a git revision "
                   "(e.g. HEAD), exported to the cache dir")  # fmt: skip
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs the tests (default: this one)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/3",
                   help="Redis for --variant redis (flushed at the start of each cached file)")
    p.add_argument("--db", default=None, help="SQLAlchemy's --db (a name from its setup.cfg)")
    p.add_argument("--dburi", default=None, help="SQLAlchemy's --dburi")
    p.add_argument("-k", default=None, help="pytest -k expression")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
    p.add_argument("--strict-sql", action="store_true",
                   help="let SQL-count / SQL-matching assertions stop the test as usual; by "
                   "default they are relaxed (recorded, the test goes on) so that what a cache "
                   "hit returns is still checked by the assertions that follow")  # fmt: skip
    p.add_argument("--sdist-lib", action="store_true",
                   help="test the sdist's pure-Python lib/ instead of the installed SQLAlchemy")
    p.add_argument("--reuse", action="store_true",
                   help="do not run pytest: compare the outcomes the last run of each file "
                   "left in the cache dir (to re-read or re-classify a report)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the full report as JSON here")
    p.add_argument("--show", type=int, default=40,
                   help="lines of traceback shown for each 'other' change (default 40)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args(argv)
    if args.files is None:
        args.files = ["core"]
    files: list[str] = []
    for f in args.files:
        files.extend(LISTS.get(f, [f]))
    args.files = files
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"peer: {msg}", flush=True)

    try:
        return _run(args, log)
    except HarnessError as err:
        log(f"ERROR: {err}")
        return 2


def _run(args: argparse.Namespace, log: Any) -> int:
    cache = args.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    version = installed_sqlalchemy(args.python)
    if args.sqlalchemy_sdist is not None:
        sdist = args.sqlalchemy_sdist.resolve()
        if not sdist.exists():
            raise HarnessError(f"no such sdist: {sdist}")
    else:
        sdist = fetch_sdist(version, cache, args.python, log)
    tree = unpack(sdist, cache)
    files = resolve_files(tree, args.files)
    ext_dir = extension_snapshot(args.extension, cache)
    runs = cache / "runs" / f"{version}-{args.variant}"
    runs.mkdir(parents=True, exist_ok=True)
    log(f"SQLAlchemy {version} ({'sdist lib/' if args.sdist_lib else 'installed'}), "
        f"tests from {tree}, extension {'work tree' if ext_dir is None else ext_dir}, "
        f"variant {args.variant}, logs in {runs}")  # fmt: skip

    report: dict[str, Any] = {"sqlalchemy": version, "variant": args.variant, "files": {},
                              "changed": []}  # fmt: skip
    total = 0
    for path in files:
        stem = path.replace("/", "__").removesuffix(".py")
        if args.reuse:
            plain, t_plain = _reuse(runs / f"{stem}.plain.json")
            cached, t_cached = _reuse(runs / f"{stem}.cached.json")
        else:
            plain, t_plain = run_file(args.python, tree, path, "off", runs / f"{stem}.plain.json",
                                      runs / f"{stem}.plain.log", args, ext_dir)  # fmt: skip
            cached, t_cached = run_file(args.python, tree, path, args.variant,
                                        runs / f"{stem}.cached.json",
                                        runs / f"{stem}.cached.log", args, ext_dir)  # fmt: skip
        p_tests, c_tests = plain["tests"], cached["tests"]
        ids = list(dict.fromkeys([*p_tests, *c_tests]))
        changed = []
        for nodeid in ids:
            p, c = p_tests.get(nodeid), c_tests.get(nodeid)
            if p is not None and c is not None and p["outcome"] == c["outcome"]:
                continue
            kind, reason = classify(p, c, nodeid)
            changed.append({
                "test": nodeid, "class": kind, "reason": reason,
                "plain": p and p["outcome"], "cached": c and c["outcome"],
                "phase": c and c.get("phase"), "longrepr": (c or {}).get("longrepr"),
                "cache": (c or {}).get("cache"), "log": (c or {}).get("log"),
                "relaxed": (c or {}).get("relaxed"),
            })  # fmt: skip
        stats = cached["meta"].get("stats") or {}
        hits = sum(int(s.get("hits") or 0) for s in stats.values())
        misses = sum(int(s.get("misses") or 0) for s in stats.values())
        outcome_counts = _counts(c_tests)
        info = {
            "tests": len(ids), "plain_seconds": round(t_plain, 1),
            "cached_seconds": round(t_cached, 1), "changed": len(changed),
            "plain_outcomes": _counts(p_tests), "cached_outcomes": outcome_counts,
            "hits": hits, "misses": misses, "reinstalls": cached["meta"].get("reinstalls", 0),
            "exit": [plain["meta"]["returncode"], cached["meta"]["returncode"]],
        }  # fmt: skip
        for side, data in (("plain", plain), ("cached", cached)):
            if data["meta"].get("timeout"):
                raise HarnessError(f"{path} ({side}) timed out after {args.timeout}s")
            if data["meta"]["returncode"] not in (0, 1):
                raise HarnessError(f"pytest exited {data['meta']['returncode']} on {path} "
                                   f"({side}); see {runs}")  # fmt: skip
        report["files"][path] = info
        report["changed"].extend(changed)
        total += len(ids)
        kinds = _kinds(changed)
        log(f"{path}: {len(ids)} tests, plain {t_plain:.1f}s, cached {t_cached:.1f}s "
            f"(hits {hits}, misses {misses}), changed {len(changed)} "
            f"[{kinds['sql-count']} sql-count, {kinds['observe-option']} observe-option, "
            f"{kinds['other']} other]")  # fmt: skip

    _print_report(report, args)
    kinds = _kinds(report["changed"])
    summary = (f"peer: {total} tests, {len(report['changed'])} changed: "
               f"{kinds['sql-count']} sql-count, {kinds['observe-option']} observe-option, "
               f"{kinds['other']} other")  # fmt: skip
    report["summary"] = summary
    out = args.json or runs / "report.json"
    out.write_text(json.dumps(report, indent=1, default=repr))
    print(f"peer: report written to {out}")
    print(summary, flush=True)
    return 1 if kinds["other"] else 0


def _reuse(path: Path) -> tuple[dict[str, Any], float]:
    if not path.exists():
        raise HarnessError(f"--reuse: no {path}; run without --reuse first")
    data = json.loads(path.read_text())
    data["meta"].setdefault("returncode", data["meta"].get("exitstatus", 0))
    return data, float(data["meta"].get("wall_seconds") or data["meta"].get("seconds") or 0)


def _counts(tests: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tests.values():
        out[t["outcome"]] = out.get(t["outcome"], 0) + 1
    return out


def _kinds(changed: list[dict[str, Any]]) -> dict[str, int]:
    kinds = {"sql-count": 0, "observe-option": 0, "other": 0}
    for c in changed:
        kinds[c["class"]] += 1
    return kinds


def _print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(f"{'file':48} {'tests':>6} {'plain s':>8} {'cached s':>9} {'hits':>7} {'changed':>8}")
    for path, info in report["files"].items():
        print(f"{path:48} {info['tests']:>6} {info['plain_seconds']:>8} "
              f"{info['cached_seconds']:>9} {info['hits']:>7} {info['changed']:>8}")  # fmt: skip
    for kind in ("sql-count", "observe-option", "other"):
        rows = [c for c in report["changed"] if c["class"] == kind]
        if not rows:
            continue
        print(f"\n== {kind}: {len(rows)}")
        for c in rows:
            print(f"  {c['test']}  [{c['plain']} -> {c['cached']}]  {c['reason'][:200]}")
            if kind == "other" and c.get("relaxed"):
                print(f"      (relaxed before it: {'; '.join(c['relaxed'])[:200]})")
            if kind == "other" and c.get("longrepr") and args.show:
                frames, message = last_exception(c["longrepr"])
                frames = [f for f in frames if not re.search(r"/(_pytest|pluggy)/", f[0])]
                for f in frames[-args.show // 2:]:
                    print(f"      {_short(f[0])}:{f[1]} in {f[2]}: {f[3][:120]}")
                for line in message.splitlines()[: max(3, args.show // 4)]:
                    print(f"      | {line[:200]}")


def _short(path: str) -> str:
    for marker in ("/sqla_querycache/", "/lib/sqlalchemy/", "/site-packages/", "/test/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path
