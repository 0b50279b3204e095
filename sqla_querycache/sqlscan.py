"""What a raw SQL string reads, writes and does to a connection, from a real parser.

The cache is "never stale" only if every write is seen and only pure reads are
cached. Compiled SQLAlchemy statements say what they touch; raw SQL (``text()``,
``exec_driver_sql``, DDL strings) does not. ``analyze`` answers for such SQL,
exactly as the DBAPI driver receives it (paramstyle placeholders included):

- which tables it reads (every ``FROM``/``JOIN``/subquery/CTE body/``TABLE t``
  /``UPDATE ... FROM``/``INSERT ... SELECT`` source), with CTE names and aliases
  never taken for tables;
- which tables it writes (DML targets, DML inside CTEs, multi-table MySQL
  ``UPDATE``/``DELETE``, ``TRUNCATE``, ``SELECT INTO``, ``CREATE TABLE AS``,
  ``COPY FROM``, table/view/index DDL), ``"@all"`` when that cannot be named;
- whether it is a pure, cacheable read (no write, no locking clause, no
  volatile or session-dependent function, no sequence, no user variable, no
  system catalog);
- transaction control, isolation-level changes, session-state changes that
  alter query results, MySQL implicit commits, and ``TRUNCATE ... CASCADE``.

Queries, DML and table DDL are parsed by sqlglot and the syntax tree is walked;
utility statements sqlglot does not model (transaction control, ``SET`` forms,
``LISTEN``, ``PRAGMA``, ``XA``...) are classified from their leading keywords,
because sqlglot either rejects them or misreads them (``LISTEN chan`` parses as
a column alias). Before parsing, one regex pass per dialect splits statements
on ``;``, drops comments (MySQL ``/*! ... */`` bodies are kept, they execute),
leaves string literals and quoted identifiers alone, and turns every
placeholder style (``?``, ``%s``, ``%(name)s``, ``$1``, ``?1``, ``:1``,
``__[POSTCOMPILE_x]``) into ``:p``, which sqlglot accepts in every dialect
and position (``?::int`` is rejected; PostgreSQL keeps ``?``, its jsonb operator).

Every doubt resolves towards over-matching: unparseable SQL reads ``"@any"``
and writes ``"@all"``; an unknown function reads ``"@any"``. ``analyze`` never
raises and is memoized per ``(sql, dialect, default_schema)``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import cast

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

__all__ = ["ALL_TABLES", "ANY_TABLE", "Analysis", "analyze", "canonical"]

#: written when the written tables cannot be named
ALL_TABLES = "@all"
#: read when something may read tables that cannot be named
ANY_TABLE = "@any"


@dataclass(frozen=True, slots=True)
class Analysis:
    """What one SQL string (one or more statements) does."""

    #: canonical names of every table read; contains ``"@any"`` when something
    #: (unparseable SQL, an unknown function) may read tables we cannot name
    reads: frozenset[str] = frozenset()
    #: ``None``: writes nothing; else the tables written, ``"@all"`` when unsure
    writes: frozenset[str] | None = None
    #: a cacheable read: returns rows, writes nothing, locks nothing, calls no
    #: volatile function, uses no sequence, variable or system catalog
    pure: bool = False
    #: why not pure ("writes", "locking clause", "volatile function now()",
    #: "sequence", "not a query", "unparseable", ...)
    reason: str | None = None
    #: transaction control: begin, commit, rollback, savepoint, release,
    #: rollback_to, prepare, commit_prepared, rollback_prepared, xa_start, xa_end
    txn: str | None = None
    #: the isolation level the statement sets (upper-case), or "UNKNOWN"
    isolation: str | None = None
    #: changes connection state that can change query results
    session_state: bool = False
    #: MySQL/MariaDB: commits the open transaction implicitly
    implicit_commit: bool = False
    #: tables truncated WITH CASCADE (the caller expands them through foreign keys)
    truncate_cascade: frozenset[str] = frozenset()


CONSERVATIVE = Analysis(
    reads=frozenset({ANY_TABLE}), writes=frozenset({ALL_TABLES}), reason="unparseable"
)


def canonical(name: str, schema: str | None, default_schema: str | None) -> str:
    """A table's cache name: lower-case, ``schema.table`` unless the schema is the default.

    Temporary schemas (SQLite ``temp``, PostgreSQL ``pg_temp``/``pg_temp_N``)
    count as the default one: a temporary table shadows the unqualified name,
    so writes to it must invalidate reads of that name.
    """
    n = name.lower()
    if schema:
        s = schema.lower()
        if s == "temp" or s.startswith("pg_temp"):
            return n
        if default_schema is None or s != default_schema.lower():
            return f"{s}.{n}"
    return n


# ---------------------------------------------------------------- dialects

_SQLGLOT_NAME = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}
_FAMILY = {"postgresql": "pg", "mysql": "my", "mariadb": "my", "sqlite": "lite"}
_DEFAULT_SCHEMA = {"pg": "public", "lite": "main"}

_SA_TOKENS = (
    r"(?P<pc>__\[POSTCOMPILE_[^\]]*\])"
    r"|(?P<sc>__\[SCHEMA_(?P<scn>[^\]]*)\](?P<scdot>\s*\.)?)"
)
_PLACEHOLDERS = (
    r"|(?P<ph>%\([^)]*\)s|%s|\?\d*|(?<![\w$])\$\d+|(?<![\w)\]\[:])(?<!:):\d+)"
    r"|(?P<pct>%%)"
    r"|(?P<seq>\b(?:NEXT|PREVIOUS)(?:\s+|/\*.*?\*/|--[^\n]*\n|\#[^\n]*\n)+VALUE"
    r"(?:\s+|/\*.*?\*/|--[^\n]*\n|\#[^\n]*\n)+FOR\b)"
    r"|(?P<semi>;)"
)
_SCANNERS = {
    "pg": re.compile(
        _SA_TOKENS + r"|(?P<com>--[^\n]*|/\*.*?\*/)"
        r"|(?P<str>(?<![\w$])[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\""
        r"|\$\$.*?\$\$|\$(?P<tag>[A-Za-z_]\w*)\$.*?\$(?P=tag)\$)" + _PLACEHOLDERS,
        re.S | re.I,
    ),
    "my": re.compile(
        _SA_TOKENS + r"|(?P<xopen>/\*!\d*)|(?P<com>\#[^\n]*|--(?=[ \t\r\n]|$)[^\n]*|/\*.*?\*/)"
        r"|(?P<xclose>\*/)"
        r"|(?P<str>'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`(?:[^`]|``)*`)" + _PLACEHOLDERS,
        re.S | re.I,
    ),
    "lite": re.compile(
        _SA_TOKENS + r"|(?P<com>--[^\n]*|/\*.*?(?:\*/|\Z))"
        r"|(?P<str>'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`|\[[^\]]*\])" + _PLACEHOLDERS,
        re.S | re.I,
    ),
    "other": re.compile(
        _SA_TOKENS + r"|(?P<com>--[^\n]*|/\*.*?\*/)"
        r"|(?P<str>'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")" + _PLACEHOLDERS,
        re.S | re.I,
    ),
}

#: what every placeholder becomes: the one form sqlglot parses in every dialect and
#: position (``?::int`` fails; ``$1`` and ``@p`` are variables in MySQL's grammar)
_PH = ":p"
#: long runs of placeholders (huge IN lists, multi-row VALUES) collapse to one
_PH_RUN = re.compile(r"(?::p|\?)(?:\s*,\s*(?::p|\?)){8,}")
_TUPLE_RUN = re.compile(
    r"(\((?:\s*:p\s*,)*\s*:p\s*\))(?:\s*,\s*\((?:\s*:p\s*,)*\s*:p\s*\)){8,}"
)


def _split(sql: str, fam: str) -> list[tuple[str, bool]]:
    """Statements of ``sql`` as (code, uses_sequence): comments gone, placeholders ``:p``."""
    out: list[tuple[str, bool]] = []
    parts: list[str] = []
    seq = False
    in_exec_comment = False
    pos = 0
    for m in _SCANNERS[fam].finditer(sql):
        kind = m.lastgroup
        parts.append(sql[pos : m.start()])
        pos = m.end()
        if kind == "str" or kind == "tag":
            parts.append(m.group())
        elif kind == "com":
            parts.append(" ")
        elif kind == "ph" or kind == "pc":
            text = m.group()
            parts.append(text if text == "?" and fam == "pg" else _PH)
        elif kind == "pct":
            parts.append("%")
        elif kind == "seq":
            seq = True
            parts.append(" ")
        elif kind in ("sc", "scn", "scdot"):
            parts.append("" if m.group("scdot") else m.group("scn"))
        elif kind == "xopen":
            in_exec_comment = True
            parts.append(" ")
        elif kind == "xclose":
            parts.append(" " if in_exec_comment else m.group())
            in_exec_comment = False
        elif kind == "semi":
            code = "".join(parts)
            if code.strip():
                out.append((code, seq))
            parts = []
            seq = False
    parts.append(sql[pos:])
    code = "".join(parts)
    if code.strip():
        out.append((code, seq))
    return out


def _compact(code: str) -> str:
    if code.count(_PH) + code.count("?") > 16:
        code = _PH_RUN.sub(_PH, code)
        code = _TUPLE_RUN.sub(r"\1", code)
    return code


_HEAD_TOKEN = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|`[^`]*`|[A-Za-z_][\w$]*|\S")


def _head(code: str, n: int = 14) -> list[str]:
    """The first ``n`` tokens, words upper-cased."""
    out: list[str] = []
    for m in _HEAD_TOKEN.finditer(code):
        out.append(m.group().upper())
        if len(out) >= n:
            break
    return out


# ------------------------------------------------------------ vocabularies


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: function names whose result changes between calls or sessions (sqlglot
#: parses some as typed nodes: those are matched by class, below)
_VOLATILE = _words(
    """now current_timestamp current_date current_time localtime localtimestamp sysdate
    systimestamp utc_timestamp utc_date utc_time curdate curtime clock_timestamp
    statement_timestamp transaction_timestamp timeofday random rand uuid uuid_short
    gen_random_uuid gen_random_bytes gen_salt uuid_generate_v1 uuid_generate_v1mc
    uuid_generate_v3 uuid_generate_v4 uuid_generate_v5 uuidv4 uuidv7 nextval currval lastval
    setval last_insert_id row_count found_rows txid_current txid_current_if_assigned
    txid_current_snapshot pg_current_xact_id pg_current_xact_id_if_assigned
    pg_current_snapshot get_lock release_lock release_all_locks is_free_lock is_used_lock
    sleep pg_sleep pg_sleep_for pg_sleep_until pg_notify set_config current_setting
    connection_id current_user session_user user system_user current_role current_schema
    current_schemas current_database database schema current_catalog current_query
    inet_client_addr inet_client_port inet_server_addr inet_server_port pg_backend_pid
    changes last_insert_rowid total_changes randomblob random_bytes benchmark
    master_pos_wait source_pos_wait load_file ps_current_thread_id dblink dblink_exec
    version sys_guid newid"""
)
_VOLATILE_PREFIXES = ("pg_", "lo_", "dblink", "has_", "txid_", "nextval", "setval")
_VOLATILE_NO_ARGS = _words("unix_timestamp date time datetime julianday unixepoch strftime")
_VOLATILE_CLASSES = frozenset(
    {
        cls
        for cls in exp.__dict__.values()
        if isinstance(cls, type)
        and issubclass(cls, exp.Func)
        and (
            cls.__name__.startswith("Current")
            or cls.__name__
            in {
                "Localtime",
                "Localtimestamp",
                "NextValueFor",
                "Rand",
                "Randn",
                "Randstr",
                "SessionUser",
                "Systimestamp",
                "UtcDate",
                "UtcTime",
                "UtcTimestamp",
                "Uuid",
                "Seq1",
                "Seq2",
                "Seq4",
                "Seq8",
            }
        )
    }
)
#: bare words that are function calls without parentheses, per dialect
_KEYWORD_FUNCS = {
    "pg": _words(
        "current_timestamp current_date current_time localtime localtimestamp current_user "
        "session_user user current_role current_schema current_catalog system_user"
    ),
    "my": _words(
        "current_timestamp current_date current_time localtime localtimestamp current_user "
        "utc_timestamp utc_date utc_time"
    ),
    "lite": _words("current_timestamp current_date current_time"),
    "other": _words("current_timestamp current_date current_time current_user session_user"),
}
#: built-in functions that sqlglot may leave as ``Anonymous`` (they read no table)
_COMMON_BUILTINS = """abs acos asin atan atan2 avg ceil ceiling char_length character_length
    coalesce concat concat_ws cos cot count degrees exp floor greatest least left length ln log
    log10 log2 lower ltrim max md5 min mod nullif octet_length pi position pow power radians
    replace reverse right round rtrim sign sin sqrt substr substring sum tan trim upper
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value
    nth_value stddev stddev_pop stddev_samp variance var_pop var_samp lpad rpad repeat ascii
    char format instr bit_length cast extract trunc truncate hex json_extract json_object
    json_array json_array_length json_valid json_type json_set json_insert json_replace
    json_remove json_quote string_agg group_concat any_value"""
_BUILTINS = {
    "pg": _words(
        _COMMON_BUILTINS
        + """ age array_agg array_append array_cat array_length array_position array_positions
        array_remove array_replace array_to_string array_lower array_upper array_dims array_ndims
        array_fill array_prepend array_to_json cardinality btrim cbrt chr date_part date_trunc
        date_bin decode encode div every bool_and bool_or bit_and bit_or bit_xor generate_series
        generate_subscripts initcap isfinite json_agg json_build_array json_build_object
        json_object_agg json_array_elements json_array_elements_text json_each json_each_text
        json_extract_path json_extract_path_text json_typeof json_populate_record
        json_populate_recordset json_to_record json_to_recordset json_object_keys json_strip_nulls
        jsonb_agg jsonb_build_array jsonb_build_object jsonb_object_agg jsonb_array_elements
        jsonb_array_elements_text jsonb_each jsonb_each_text jsonb_extract_path
        jsonb_extract_path_text jsonb_set jsonb_set_lax jsonb_insert jsonb_strip_nulls
        jsonb_typeof jsonb_array_length jsonb_path_query jsonb_path_query_array
        jsonb_path_query_first jsonb_path_exists jsonb_path_match jsonb_pretty
        jsonb_populate_record jsonb_populate_recordset jsonb_to_record jsonb_to_recordset
        jsonb_object_keys jsonb_object to_json to_jsonb row_to_json make_date make_interval
        make_time make_timestamp make_timestamptz overlay quote_ident quote_literal
        quote_nullable regexp_match regexp_matches regexp_replace regexp_split_to_array
        regexp_split_to_table regexp_count regexp_instr regexp_like regexp_substr split_part
        starts_with string_to_array string_to_table strpos to_char to_date to_number
        to_timestamp translate unnest width_bucket corr covar_pop covar_samp percentile_cont
        percentile_disc mode justify_days justify_hours justify_interval num_nulls
        num_nonnulls sha224 sha256 sha384 sha512 to_tsvector to_tsquery plainto_tsquery
        phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd ts_headline setweight strip
        numnode querytree isempty lower_inc upper_inc lower_inf upper_inf range_merge
        int4range int8range numrange tsrange tstzrange daterange multirange to_hex
        convert_from convert_to timezone date_add date_subtract grouping array format_type
        factorial gcd lcm scale min_scale trim_scale erf erfc random_normal unistr
        xmlagg xmlelement xmlforest xmlconcat xmlparse xmlserialize"""
    ),
    "my": _words(
        _COMMON_BUILTINS
        + """ adddate addtime aes_decrypt aes_encrypt bin bit_and bit_count bit_or bit_xor
        charset coercibility collation conv convert convert_tz crc32 date date_add
        date_format date_sub datediff day dayname dayofmonth dayofweek dayofyear elt
        export_set field find_in_set from_base64 from_days from_unixtime get_format hour if
        ifnull inet_aton inet_ntoa inet6_aton inet6_ntoa insert interval is_ipv4 is_ipv6
        is_uuid isnull json_arrayagg json_contains json_contains_path json_depth json_keys
        json_length json_merge json_merge_patch json_merge_preserve json_objectagg
        json_overlaps json_pretty json_search json_table json_unquote json_value json_schema_valid
        json_detailed json_compact json_loose json_normalize json_equals json_exists json_query
        last_day lcase locate make_set makedate maketime microsecond mid minute month
        monthname oct ord period_add period_diff quarter quote regexp_instr regexp_like
        regexp_replace regexp_substr second sec_to_time sha sha1 sha2 soundex space std
        str_to_date strcmp subdate substring_index subtime time time_format time_to_sec
        timediff timestamp timestampadd timestampdiff to_base64 to_days to_seconds ucase
        unhex uuid_to_bin bin_to_uuid values week weekday weekofyear year yearweek
        weight_string unix_timestamp nvl nvl2 decode_oracle sformat natural_sort_key
        format_bytes format_pico_time match against char_length utc_to_local"""
    ),
    "lite": _words(
        _COMMON_BUILTINS
        + """ glob ifnull iif like likelihood likely printf quote soundex sqlite_version
        sqlite_source_id typeof unicode unhex unlikely zeroblob date time datetime julianday
        unixepoch strftime timediff total json jsonb json_error_position json_patch
        json_group_array json_group_object json_each json_tree jsonb_array jsonb_object
        jsonb_extract jsonb_insert jsonb_patch jsonb_remove jsonb_replace jsonb_set
        jsonb_group_array jsonb_group_object ln mod"""
    ),
    "other": _words(_COMMON_BUILTINS),
}
_SYSTEM_SCHEMAS = _words("information_schema pg_catalog performance_schema mysql sys pg_toast")

_ISO_LEVELS = {"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE", "SNAPSHOT"}
_ISO_RE = re.compile(r"\bISOLATION\s+LEVEL\s+(READ\s+UNCOMMITTED|READ\s+COMMITTED|REPEATABLE\s+READ"
                     r"|SERIALIZABLE|SNAPSHOT)\b", re.I)  # fmt: skip
_ISO_SETTINGS = _words("transaction_isolation tx_isolation default_transaction_isolation")
#: settings whose change cannot change any query result
_HARMLESS_SETTINGS = _words(
    """application_name client_encoding client_min_messages statement_timeout lock_timeout
    idle_in_transaction_session_timeout idle_session_timeout transaction_timeout work_mem
    maintenance_work_mem temp_buffers effective_cache_size random_page_cost seq_page_cost
    cpu_tuple_cost cpu_index_tuple_cost cpu_operator_cost jit geqo from_collapse_limit
    join_collapse_limit plan_cache_mode max_parallel_workers_per_gather force_parallel_mode
    debug_parallel_query synchronous_commit commit_delay deadlock_timeout check_function_bodies
    session_replication_role constraint_exclusion cursor_tuple_fraction
    default_statistics_target temp_tablespaces default_tablespace lc_messages bytea_output
    transaction_read_only default_transaction_read_only default_transaction_deferrable
    transaction_deferrable tx_read_only foreign_key_checks unique_checks sql_safe_updates
    sql_notes sql_warnings sql_log_bin sql_log_off profiling profiling_history_size
    max_execution_time max_statement_time innodb_lock_wait_timeout lock_wait_timeout
    net_read_timeout net_write_timeout wait_timeout interactive_timeout optimizer_switch
    optimizer_search_depth optimizer_prune_level join_buffer_size sort_buffer_size
    read_buffer_size read_rnd_buffer_size tmp_table_size max_heap_table_size
    bulk_insert_buffer_size innodb_strict_mode long_query_time slow_query_log
    character_set_client character_set_results big_tables sql_big_selects sql_buffer_result
    names charset character_set"""
)
_HARMLESS_PREFIXES = (
    "enable_", "log_", "track_", "jit_", "geqo_", "parallel_", "optimizer_", "session_track_",
    "vacuum_", "trace_", "debug_", "auto_explain.", "pg_stat_statements.",
)  # fmt: skip
_HARMLESS_PRAGMAS = _words(
    """foreign_keys journal_mode synchronous cache_size busy_timeout temp_store mmap_size
    wal_autocheckpoint auto_vacuum page_size locking_mode secure_delete cache_spill query_only
    defer_foreign_keys recursive_triggers optimize analysis_limit threads cell_size_check
    automatic_index max_page_count soft_heap_limit hard_heap_limit journal_size_limit
    checkpoint_fullfsync fullfsync application_id user_version trusted_schema
    ignore_check_constraints wal_checkpoint incremental_vacuum shrink_memory"""
)
_STMT_HEADS = _words("SELECT WITH VALUES TABLE INSERT UPDATE DELETE MERGE REPLACE DECLARE EXECUTE")
_DDL_KINDS = _words("TABLE VIEW INDEX")
_SIMPLE_READONLY = _words(
    "VACUUM CHECKPOINT CLUSTER REINDEX LISTEN UNLISTEN NOTIFY SHOW HELP FETCH MOVE CLOSE "
    "DEALLOCATE CHECKSUM KILL"
)
_MY_IMPLICIT_READONLY = _words("OPTIMIZE FLUSH CACHE CHECK")
_EXECUTES_UNKNOWN = _words("CALL EXEC EXECUTE DO HANDLER LOAD IMPORT SOURCE GRANT REVOKE")


class _Unparseable(Exception):
    pass


# ------------------------------------------------------------ accumulation


class _Acc:
    """Findings for one SQL string, filled statement by statement."""

    __slots__ = ("cascade", "implicit", "isolation", "reads", "reason", "session", "txn", "writes")

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.writes: set[str] | None = None
        self.reason: str | None = None
        self.txn: str | None = None
        self.isolation: str | None = None
        self.session = False
        self.implicit = False
        self.cascade: set[str] = set()

    def write(self, *names: str) -> None:
        if self.writes is None:
            self.writes = set()
        self.writes.update(names)

    def impure(self, why: str) -> None:
        if self.reason is None:
            self.reason = why

    def unparseable(self) -> None:
        self.reads.add(ANY_TABLE)
        self.write(ALL_TABLES)
        self.impure("unparseable")


class _Ctx:
    __slots__ = ("default_schema", "dialect", "fam")

    def __init__(self, fam: str, dialect: Dialect, default_schema: str | None) -> None:
        self.fam = fam
        self.dialect = dialect
        self.default_schema = default_schema


# ------------------------------------------------------------ tree walking


def _parse(code: str, ctx: _Ctx) -> exp.Expr:
    trees = [t for t in ctx.dialect.parse(_compact(code)) if t is not None]
    if len(trees) != 1 or isinstance(trees[0], exp.Command):
        raise _Unparseable(code)
    return trees[0]


def _write_target(target: exp.Expr | None, ctx: _Ctx, acc: _Acc, skip: set[int]) -> str | None:
    """Record ``target`` as written (``@all`` if it names no table); not also as read."""
    name = _table_name(target, ctx) if isinstance(target, exp.Table) else None
    if name is None:
        acc.write(ALL_TABLES)
    else:
        skip.add(id(target))
        acc.write(name)
    return name


def _table_name(node: exp.Table, ctx: _Ctx, acc: _Acc | None = None) -> str | None:
    ident = node.this
    if not isinstance(ident, exp.Identifier):
        return None
    name = ident.this.lower()
    db_node = node.args.get("db")
    db = db_node.this.lower() if isinstance(db_node, exp.Identifier) else None
    if acc is not None:
        if db is None and ctx.fam == "my" and name == "dual":
            return None
        if (
            db in _SYSTEM_SCHEMAS
            or (db is None and ctx.fam == "pg" and name.startswith("pg_"))
            or (ctx.fam == "lite" and name.startswith("sqlite_"))
        ):
            acc.impure("system catalog")
    return canonical(name, db, ctx.default_schema)


def _cte_names(with_: exp.Expr, upto: exp.Expr | None) -> set[str]:
    names: set[str] = set()
    for cte in with_.expressions:
        if cte is upto:
            break
        names.add(cte.alias_or_name.lower())
    return names


def _is_cte_ref(node: exp.Table) -> bool:
    """A reference to a CTE visible where ``node`` stands (not a table)."""
    if node.args.get("db") is not None:
        return False
    name = node.name.lower()
    child: exp.Expr = node
    parent = child.parent
    while parent is not None:
        if isinstance(parent, exp.CTE) and isinstance(parent.parent, exp.With):
            with_ = parent.parent
            upto = None if with_.args.get("recursive") else parent
            if name in _cte_names(with_, upto):
                return True
            owner = with_.parent
            if owner is None:
                return False
            child, parent = owner, owner.parent  # the owner's WITH was just handled
            continue
        clause = parent.args.get("with_") or parent.args.get("with")
        if (
            isinstance(clause, exp.With)
            and child is not clause
            and name in _cte_names(clause, None)
        ):
            return True
        child, parent = parent, parent.parent
    return False


def _top_tables(node: exp.Expr | None) -> list[exp.Table]:
    """Table references of a FROM-like clause, joins included, subqueries excluded."""
    out: list[exp.Table] = []
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if isinstance(n, exp.Table):
            out.append(n)
            stack.extend(j.this for j in n.args.get("joins") or ())
        elif isinstance(n, (exp.Schema, exp.Join, exp.From)):
            stack.append(n.this)
            stack.extend(j.this for j in n.args.get("joins") or ())
        elif isinstance(n, list):
            stack.extend(n)
    return out


def _dml_targets(node: exp.Expr, ctx: _Ctx, acc: _Acc, skip: set[int]) -> None:
    """Record what an INSERT/UPDATE/DELETE/MERGE/TRUNCATE node writes."""
    if node.this is None and node.find_ancestor(exp.Merge) is not None:
        return  # a MERGE's WHEN ... THEN UPDATE/INSERT/DELETE: the MERGE target is written
    if isinstance(node, exp.Insert):
        target = node.this
        if isinstance(target, exp.Schema):
            target = target.this
        _write_target(target, ctx, acc, skip)
        return
    if isinstance(node, exp.TruncateTable):
        cascade = str(node.args.get("option") or "").upper() == "CASCADE"
        for t in node.expressions:
            name = _write_target(t, ctx, acc, skip)
            if name is None:
                continue
            if cascade:
                acc.cascade.add(name)
        return
    targets = _top_tables(node.this)
    if isinstance(node, exp.Delete) and ctx.fam == "my":
        using = _top_tables(node.args.get("using"))
        aliases = {t.alias.lower() for t in targets + using if t.alias}
        for t in node.args.get("tables") or ():
            skip.add(id(t))
            if isinstance(t, exp.Table) and t.name.lower() not in aliases:
                targets.append(t)
        targets += using
    if not targets:
        acc.write(ALL_TABLES)
    for t in targets:
        name = _table_name(t, ctx)
        acc.write(name if name is not None else ALL_TABLES)


_DML = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.TruncateTable)
_QUERY = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values, exp.Paren)
_SPECIAL_DATE_LITERALS = {
    "pg": frozenset({"now", "today", "tomorrow", "yesterday"}),
    "lite": frozenset({"now"}),
}


def _walk(root: exp.Expr, ctx: _Ctx, acc: _Acc, skip: set[int] | None = None) -> None:
    """Record every table read, DML write and impurity anywhere under ``root``."""
    skip = skip if skip is not None else set()
    fam = ctx.fam
    keyword_funcs = _KEYWORD_FUNCS[fam]
    builtins = _BUILTINS[fam]
    date_literals = _SPECIAL_DATE_LITERALS.get(fam)
    for node in root.walk():
        cls = type(node)
        if cls is exp.Table:
            table = cast(exp.Table, node)
            if id(node) in skip or _is_cte_ref(table):
                continue
            name = _table_name(table, ctx, acc)
            if name is not None:
                acc.reads.add(name)
        elif cls is exp.Column:
            ident = node.this
            if not isinstance(ident, exp.Identifier):
                continue
            name = ident.this.lower()
            if node.args.get("table") is not None:
                if name in ("nextval", "currval", "lastval"):
                    acc.impure("sequence")
            elif not ident.quoted and name in keyword_funcs:
                acc.impure(f"volatile function {name}")
        elif cls is exp.Anonymous:
            name = str(node.this).lower()
            if (
                name in _VOLATILE
                or name.startswith(_VOLATILE_PREFIXES)
                or (name in _VOLATILE_NO_ARGS and not node.expressions and fam != "pg")
            ):
                acc.impure("sequence" if "val" in name else f"volatile function {name}()")
            elif name not in builtins or isinstance(node.parent, exp.Dot):
                acc.reads.add(ANY_TABLE)  # a user-defined function may read anything
        elif cls in _VOLATILE_CLASSES:
            name = cast(exp.Func, node).sql_name().lower()
            acc.impure("sequence" if cls is exp.NextValueFor else f"volatile function {name}()")
        elif cls is exp.Literal:
            if date_literals and node.is_string and node.this.strip().lower() in date_literals:
                acc.impure(f"volatile literal '{node.this}'")
        elif cls is exp.Lock:
            acc.impure("locking clause")
            skip.update(id(t) for t in node.find_all(exp.Table))
        elif cls is exp.Into:
            skip.update(id(t) for t in node.find_all(exp.Table))
            target = node.this
            if fam in ("pg", "other") and isinstance(target, exp.Table):
                name = _table_name(target, ctx)
                acc.write(name if name is not None else ALL_TABLES)
            else:
                acc.impure("SELECT INTO")
        elif cls in (exp.Parameter, exp.SessionParameter):
            if fam == "my":
                acc.impure("user variable")
        elif cls is exp.Command:
            raise _Unparseable(node.sql())
        elif isinstance(node, _DML):
            _dml_targets(node, ctx, acc, skip)
        elif fam == "lite" and cls.__name__ in ("Date", "Time", "Datetime", "TimeToStr"):
            if not any(v for v in node.args.values()):
                acc.impure(f"volatile function {cls.__name__.lower()}()")
        elif fam == "my" and cls is exp.Var and node.name.upper() == "SQL_CALC_FOUND_ROWS":
            acc.impure("SQL_CALC_FOUND_ROWS")


def _query(code: str, ctx: _Ctx, acc: _Acc) -> None:
    """SELECT / WITH / VALUES / TABLE / DML: parse and walk."""
    try:
        tree = _parse(code, ctx)
    except Exception:
        if not re.match(r"\s*VALUES\b", code, re.I):
            raise
        # MariaDB's bare VALUES (...) list: sqlglot's MySQL accepts it as a derived table
        tree = _parse(f"SELECT * FROM ({code}) AS _v", ctx)
    _walk(tree, ctx, acc)
    if not isinstance(tree, _QUERY):
        acc.impure("writes" if acc.writes is not None else "not a query")


# ----------------------------------------------------------------- DDL


def _ddl(code: str, toks: list[str], ctx: _Ctx, acc: _Acc) -> None:
    head = toks[0]
    kind = next((t for t in toks[1:] if t in _DDL_KINDS or t == "SCHEMA" or t == "DATABASE"), None)
    if ctx.fam == "my" and not (kind == "TABLE" and "TEMPORARY" in toks[1 : toks.index(kind)]):
        acc.implicit = True
    if kind not in _DDL_KINDS:
        acc.write(ALL_TABLES)
        return
    try:
        tree = _parse(code, ctx)
    except _Unparseable:
        acc.write(ALL_TABLES)
        acc.reads.add(ANY_TABLE)
        return
    skip: set[int] = set()
    targets: list[exp.Expr | None] = []
    node_kind = str(tree.args.get("kind") or "").upper()
    if isinstance(tree, exp.Create):
        this = tree.this
        if node_kind == "INDEX" and isinstance(this, exp.Index):
            skip.update(id(t) for t in this.find_all(exp.Table))
            targets.append(this.args.get("table"))
        elif node_kind in ("TABLE", "VIEW"):
            targets.append(this.this if isinstance(this, exp.Schema) else this)
        else:
            acc.write(ALL_TABLES)
    elif isinstance(tree, exp.Drop):
        tables = tree.expressions or tree.args.get("tables") or []
        skip.update(id(t) for t in tables)
        if tree.args.get("cascade"):
            acc.write(ALL_TABLES)  # dependent views and constraints go too
        if node_kind in ("TABLE", "VIEW"):
            targets.extend(tables)
        else:
            on = tree.args.get("cluster")
            table = on.this if isinstance(on, exp.OnProperty) else None
            targets.append(table)  # DROP INDEX i ON t (MySQL); PostgreSQL names no table
    elif isinstance(tree, exp.Alter):
        targets.append(tree.this)
        for action in tree.args.get("actions") or ():
            if isinstance(action, exp.AlterRename):
                targets.append(action.this)
        if tree.args.get("cascade") or "CASCADE" in code.upper():
            acc.write(ALL_TABLES)
        if node_kind not in ("TABLE", "VIEW"):
            acc.write(ALL_TABLES)
    else:
        acc.write(ALL_TABLES)
    for t in targets:
        _write_target(t, ctx, acc, skip)
    if head == "CREATE" and acc.writes is None:
        acc.write(ALL_TABLES)
    _walk(tree, ctx, acc, skip)
    acc.impure("writes")


_NAME_RE = re.compile(r"(?:`[^`]+`|\"[^\"]+\"|[\w$]+)(?:\s*\.\s*(?:`[^`]+`|\"[^\"]+\"|[\w$]+))*")


def _names_after(code: str, start: int, ctx: _Ctx, stop: set[str]) -> list[str]:
    """Table names listed in ``code[start:]`` (``a TO b, c TO d`` style lists)."""
    out = []
    for m in _NAME_RE.finditer(code, start):
        parts = [p.strip().strip('`"') for p in re.split(r"\s*\.\s*", m.group())]
        if len(parts) == 1 and parts[0].upper() in stop:
            continue
        out.append(canonical(parts[-1], parts[-2] if len(parts) > 1 else None, ctx.default_schema))
    return out


# ------------------------------------------------------------------ SET


def _iso_value(value: str) -> str:
    v = value.strip().strip("'\"`").replace("-", " ").replace("_", " ")
    v = " ".join(v.split()).upper()
    return v if v in _ISO_LEVELS else "UNKNOWN"


def _split_commas(text: str) -> list[str]:
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


_SET_HEAD = re.compile(r"^\s*SET\b", re.I)
_SET_STATEMENT = re.compile(r"^\s*STATEMENT\b.*?\bFOR\b(.*)$", re.I | re.S)
_SET_TXN = re.compile(
    r"^\s*(?:(?:SESSION|LOCAL|GLOBAL|PERSIST|PERSIST_ONLY)\s+)*"
    r"(?:SESSION\s+CHARACTERISTICS\s+AS\s+)?TRANSACTION\b(.*)$",
    re.I | re.S,
)
_SET_SPECIAL = re.compile(
    r"^\s*(?:(?:SESSION|LOCAL)\s+)?(ROLE|SESSION\s+AUTHORIZATION|SCHEMA|TIME\s+ZONE|XML\s+OPTION"
    r"|DEFAULT\s+ROLE|NAMES|CHARACTER\s+SET|CHARSET|PASSWORD|CONSTRAINTS|RESOURCE\s+GROUP)\b",
    re.I,
)
_SET_ITEM = re.compile(
    r"^\s*(?:(GLOBAL|SESSION|LOCAL|PERSIST|PERSIST_ONLY)\s+)?"
    r"(@@(?:(?:GLOBAL|SESSION|LOCAL|PERSIST|PERSIST_ONLY)\.)?|@)?"
    r"((?:`[^`]+`|\"[^\"]+\"|[\w$]+)(?:\.(?:`[^`]+`|\"[^\"]+\"|[\w$]+))*)"
    r"\s*(?:=|:=|\bTO\b)\s*(.*?)\s*$",
    re.I | re.S,
)


def _set(code: str, ctx: _Ctx, acc: _Acc, depth: int) -> None:
    acc.impure("not a query")
    rest = code[_SET_HEAD.match(code).end() :]  # type: ignore[union-attr]
    if ctx.fam == "my" and (m := _SET_STATEMENT.match(rest)):
        _statement(m.group(1), False, ctx, acc, depth + 1)
        return
    if m := _SET_TXN.match(rest):
        body = m.group(1)
        if iso := _ISO_RE.search(body):
            acc.isolation = " ".join(iso.group(1).upper().split())
        elif re.search(r"\bISOLATION\b", body, re.I):
            acc.isolation = "UNKNOWN"
        if re.search(r"\bSNAPSHOT\b", body, re.I) and not iso:
            acc.session = True  # SET TRANSACTION SNAPSHOT imports another snapshot
        return
    if m := _SET_SPECIAL.match(rest):
        word = " ".join(m.group(1).upper().split())
        if word not in ("NAMES", "CHARACTER SET", "CHARSET", "PASSWORD", "CONSTRAINTS",
                        "RESOURCE GROUP"):  # fmt: skip
            acc.session = True
        return
    items = _split_commas(rest) if ctx.fam == "my" else [rest]
    for item in items:
        m = _SET_ITEM.match(item)
        if m is None:
            acc.session = True
            continue
        _scope, at, raw_name, value = m.groups()
        name = raw_name.replace("`", "").replace('"', "").lower()
        if "(" in value:
            try:
                _walk(_parse("SELECT " + value, ctx), ctx, acc)
            except Exception:
                acc.reads.add(ANY_TABLE)
        if at == "@":
            continue  # a user variable: queries using it are never pure anyway
        if name in _ISO_SETTINGS:
            acc.isolation = _iso_value(value)
        elif name == "autocommit":
            if ctx.fam == "my" and value.strip().strip("'\"").upper() in ("1", "ON", "TRUE"):
                acc.implicit = True
        elif name not in _HARMLESS_SETTINGS and not name.startswith(_HARMLESS_PREFIXES):
            acc.session = True


_PRAGMA = re.compile(r"^\s*PRAGMA\s+(?:[\w\"`\[\]]+\s*\.\s*)?([\w\"`\[\]]+)\s*(=|\()?", re.I)
_PRAGMA_READ_ARG = _words(
    "table_info table_xinfo index_info index_xinfo index_list foreign_key_list "
    "foreign_key_check integrity_check quick_check table_list wal_checkpoint "
    "incremental_vacuum optimize"
)


def _pragma(code: str, acc: _Acc) -> None:
    acc.impure("not a query")
    m = _PRAGMA.match(code)
    if m is None:
        acc.session = True
        return
    name = m.group(1).strip('"`[]').lower()
    writes_setting = m.group(2) == "=" or (m.group(2) == "(" and name not in _PRAGMA_READ_ARG)
    if writes_setting and name not in _HARMLESS_PRAGMAS:
        acc.session = True


# ------------------------------------------------------ transaction control


def _transaction(toks: list[str], code: str, ctx: _Ctx, acc: _Acc) -> bool:
    """Classify transaction control; False if ``toks`` is not one."""
    h = toks[0]
    second = toks[1] if len(toks) > 1 else ""
    if h == "BEGIN" or (h == "START" and second == "TRANSACTION"):
        if h == "BEGIN" and ctx.fam == "my" and "ATOMIC" in toks:
            return False  # MariaDB compound statement
        acc.txn = "begin"
        if iso := _ISO_RE.search(code):
            acc.isolation = " ".join(iso.group(1).upper().split())
        elif "ISOLATION" in toks:
            acc.isolation = "UNKNOWN"
        if ctx.fam == "my":
            acc.implicit = True
    elif h in ("COMMIT", "END"):
        acc.txn = "commit_prepared" if second == "PREPARED" else "commit"
    elif h in ("ROLLBACK", "ABORT"):
        if second == "PREPARED":
            acc.txn = "rollback_prepared"
        elif "TO" in toks:
            acc.txn = "rollback_to"
        else:
            acc.txn = "rollback"
    elif h == "SAVEPOINT":
        acc.txn = "savepoint"
    elif h == "RELEASE":
        acc.txn = "release"
    elif h == "PREPARE" and second == "TRANSACTION":
        acc.txn = "prepare"
    elif h == "XA":
        if second in ("START", "BEGIN"):
            acc.txn = "xa_start"
        elif second == "END":
            acc.txn = "xa_end"
        elif second == "PREPARE":
            acc.txn = "prepare"
        elif second == "COMMIT":
            acc.txn = "commit" if "ONE" in toks and "PHASE" in toks else "commit_prepared"
        elif second == "ROLLBACK":
            acc.txn = "rollback_prepared"
        elif second != "RECOVER":
            return False
    else:
        return False
    acc.impure("not a query")
    return True


# ------------------------------------------------------------- statements

_EXPLAIN_OPTS = re.compile(
    r"\s*(?:\((?:[^()]|\([^()]*\))*\)|ANALYZE\b|ANALYSE\b|VERBOSE\b|QUERY\s+PLAN\b|EXTENDED\b"
    r"|PARTITIONS\b|FORMAT\s*=\s*\w+|FORMAT\s+\w+)",
    re.I,
)
_MY_MODIFIERS = re.compile(
    r"^(\s*(?:INSERT|UPDATE|DELETE|REPLACE))"
    r"((?:\s+(?:LOW_PRIORITY|QUICK|IGNORE|DELAYED|HIGH_PRIORITY))+)\b",
    re.I,
)
_HEAD_WORD = re.compile(r"^\s*\(*\s*(\w+)", re.I)


def _inner(code: str, executes: bool, ctx: _Ctx, acc: _Acc, depth: int) -> None:
    """A statement carried by another (EXPLAIN, PREPARE, DECLARE, SET STATEMENT...)."""
    sub = _Acc()
    _statement(code, False, ctx, sub, depth + 1)
    acc.reads |= sub.reads
    if executes and sub.writes is not None:
        acc.write(*sub.writes)
    acc.cascade |= sub.cascade if executes else set()


def _explain(code: str, toks: list[str], ctx: _Ctx, acc: _Acc, depth: int) -> None:
    acc.impure("not a query")
    pos = _HEAD_WORD.match(code).end()  # type: ignore[union-attr]
    executes = toks[0] == "ANALYZE" or toks[0] == "ANALYSE"
    while m := _EXPLAIN_OPTS.match(code, pos):
        if re.search(r"\bANALY[SZ]E\b", m.group(), re.I) and not re.search(
            r"\bANALY[SZ]E\s+(?:FALSE|OFF|0)\b", m.group(), re.I
        ):
            executes = True
        pos = m.end()
    rest = code[pos:]
    word = _HEAD_WORD.match(rest)
    if word and (word.group(1).upper() in _STMT_HEADS or rest.lstrip().startswith("(")):
        _inner(rest, executes and ctx.fam != "lite", ctx, acc, depth)
    elif word and word.group(1).upper() == "CREATE":
        _inner(rest, executes, ctx, acc, depth)  # EXPLAIN ANALYZE CREATE TABLE AS
    # else: EXPLAIN t / DESCRIBE t / EXPLAIN FOR CONNECTION n: reads metadata only


def _statement(code: str, seq: bool, ctx: _Ctx, acc: _Acc, depth: int = 0) -> None:
    if depth > 4:
        raise _Unparseable(code)
    toks = _head(code)
    if not toks:
        return
    if seq:
        acc.impure("sequence")
    h = toks[0]
    fam = ctx.fam
    second = toks[1] if len(toks) > 1 else ""
    if h in ("SELECT", "WITH", "VALUES", "TABLE", "("):
        _query(code, ctx, acc)
    elif h in ("INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE"):
        if fam == "my":
            code = _MY_MODIFIERS.sub(r"\1", code, count=1)
        if h == "REPLACE" and fam in ("my", "lite"):
            code = re.sub(r"^\s*REPLACE\b", "INSERT", code, count=1, flags=re.I)
        _query(code, ctx, acc)
    elif h in ("CREATE", "ALTER", "DROP"):
        _ddl(code, toks, ctx, acc)
    elif h == "TRUNCATE":
        if fam == "my":
            acc.implicit = True
        _query(code, ctx, acc)
    elif h == "RENAME":
        if fam == "my":
            acc.implicit = True
        acc.impure("writes")
        if second in ("TABLE", "TABLES"):
            start = re.search(r"\bTABLES?\b", code, re.I).end()  # type: ignore[union-attr]
            acc.write(*_names_after(code, start, ctx, {"TO"}))
        else:
            acc.write(ALL_TABLES)
    elif h == "COPY":
        tree = _parse(code, ctx)
        acc.impure("not a query")
        if not isinstance(tree, exp.Copy):
            raise _Unparseable(code)
        target = tree.this
        if isinstance(target, exp.Schema):
            target = target.this
        if tree.args.get("kind") and isinstance(target, exp.Table):  # COPY t FROM
            name = _table_name(target, ctx)
            acc.write(name if name is not None else ALL_TABLES)
            _walk(tree, ctx, acc, {id(target)})
            acc.impure("writes")
        else:
            _walk(tree, ctx, acc)
    elif h in ("EXPLAIN", "DESCRIBE", "DESC"):
        _explain(code, toks, ctx, acc, depth)
    elif h in ("ANALYZE", "ANALYSE"):
        if fam == "my" and second not in ("TABLE", "NO_WRITE_TO_BINLOG", "LOCAL"):
            _explain(code, toks, ctx, acc, depth)  # MariaDB ANALYZE <stmt> runs it
        else:
            acc.impure("not a query")
            if fam == "my":
                acc.implicit = True
    elif h in _SIMPLE_READONLY:
        acc.impure("not a query")
    elif h in _MY_IMPLICIT_READONLY and fam == "my":
        acc.impure("not a query")
        acc.implicit = True
    elif h == "REPAIR" and fam == "my":
        acc.implicit = True
        acc.impure("writes")
        start = re.search(r"\bTABLES?\b", code, re.I)
        if start is None:
            acc.write(ALL_TABLES)
        else:
            options = {"QUICK", "EXTENDED", "USE_FRM", "FORCE"}
            acc.write(*_names_after(code, start.end(), ctx, options))
    elif h == "DISCARD":
        acc.impure("not a query")
        if second in ("ALL", "TEMP", "TEMPORARY"):
            acc.session = True
    elif h == "RESET":
        acc.impure("not a query")
        if fam == "my":
            acc.implicit = second != "PERSIST"
        else:
            name = second.lower()
            if name in _ISO_SETTINGS:
                acc.isolation = "UNKNOWN"
            elif name not in _HARMLESS_SETTINGS and not name.startswith(_HARMLESS_PREFIXES):
                acc.session = True
    elif h == "SET":
        _set(code, ctx, acc, depth)
    elif h in ("USE", "ATTACH", "DETACH"):
        acc.impure("not a query")
        acc.session = True
    elif h == "PRAGMA":
        _pragma(code, acc)
    elif h == "LOCK":
        acc.impure("locking clause")
        if fam == "my" and second in ("TABLE", "TABLES"):
            acc.implicit = True
    elif h == "UNLOCK":
        acc.impure("not a query")
        if fam == "my":
            acc.implicit = True
    elif h == "LOAD" and second == "INDEX" and fam == "my":
        acc.impure("not a query")
        acc.implicit = True
    elif _transaction(toks, code, ctx, acc):
        pass
    elif h == "PREPARE":
        acc.impure("not a query")
        if fam != "my" and (m := re.search(r"\bAS\b", code, re.I)):
            _inner(code[m.end() :], False, ctx, acc, depth)
    elif h == "DECLARE":
        m = re.search(r"\bCURSOR\b.*?\bFOR\b", code, re.I | re.S)
        if m is None or fam != "pg":
            raise _Unparseable(code)
        acc.impure("not a query")
        _inner(code[m.end() :], True, ctx, acc, depth)
    elif h == "REFRESH" and second == "MATERIALIZED":
        m = re.search(r"\bVIEW\s+(?:CONCURRENTLY\s+)?", code, re.I)
        names = _names_after(code, m.end(), ctx, set()) if m else []
        acc.write(names[0] if names else ALL_TABLES)
        acc.impure("writes")
    elif h == "COMMENT":
        tree = _parse(code, ctx)
        target = tree.this if isinstance(tree, exp.Comment) else None
        name = _table_name(target, ctx) if isinstance(target, exp.Table) else None
        acc.write(name if name is not None else ALL_TABLES)
        acc.impure("writes")
    elif h in _EXECUTES_UNKNOWN or h in ("INSTALL", "UNINSTALL", "START", "STOP", "CHANGE"):
        acc.reads.add(ANY_TABLE)
        acc.write(ALL_TABLES)
        acc.impure("executes unknown code" if h in ("CALL", "EXEC", "EXECUTE", "DO") else "writes")
        if fam == "my" and h not in ("CALL", "EXEC", "EXECUTE", "DO", "HANDLER", "LOAD", "IMPORT"):
            acc.implicit = True
    else:
        raise _Unparseable(code)


# ------------------------------------------------------------------ entry


@functools.lru_cache(maxsize=16)
def _dialect(name: str) -> Dialect:
    return Dialect.get_or_raise(name)


def _analyze(sql: str, dialect: str, default_schema: str | None) -> Analysis:
    fam = _FAMILY.get(dialect, "other")
    if default_schema is None:
        default_schema = _DEFAULT_SCHEMA.get(fam)
    ctx = _Ctx(fam, _dialect(_SQLGLOT_NAME.get(dialect, "")), default_schema)
    total = _Acc()
    statements = _split(sql, fam)
    if not statements:
        return Analysis(reason="empty")
    for code, seq in statements:
        acc = _Acc()
        try:
            _statement(code, seq, ctx, acc)
        except Exception:
            acc = _Acc()
            acc.unparseable()
            acc.implicit = fam == "my"
        total.reads |= acc.reads
        if acc.writes is not None:
            total.write(*acc.writes)
            acc.impure("writes")
        if acc.reason is not None:
            total.impure(acc.reason)
        total.txn = acc.txn or total.txn
        total.isolation = acc.isolation or total.isolation
        total.session |= acc.session
        total.implicit |= acc.implicit
        total.cascade |= acc.cascade
    return Analysis(
        reads=frozenset(total.reads),
        writes=None if total.writes is None else frozenset(total.writes),
        pure=total.reason is None and total.writes is None,
        reason=total.reason,
        txn=total.txn,
        isolation=total.isolation,
        session_state=total.session,
        implicit_commit=total.implicit,
        truncate_cascade=frozenset(total.cascade),
    )


@functools.lru_cache(maxsize=4096)
def _analyze_memo(sql: str, dialect: str, default_schema: str | None) -> Analysis:
    try:
        return _analyze(sql, dialect, default_schema)
    except Exception:
        return CONSERVATIVE


def analyze(sql: str, dialect: str, default_schema: str | None = None) -> Analysis:
    """What ``sql`` (as the driver receives it) reads, writes and does; never raises.

    ``dialect`` is a SQLAlchemy dialect name ("postgresql", "mysql", "mariadb",
    "sqlite"; others parse with sqlglot's default dialect). ``default_schema``
    is the schema unqualified names resolve to (PostgreSQL default "public",
    SQLite "main"; for MySQL pass the connection's current database).
    """
    try:
        return _analyze_memo(sql, dialect, default_schema)
    except Exception:  # unhashable or otherwise odd arguments
        try:
            return _analyze(str(sql), str(dialect), default_schema)
        except Exception:
            return CONSERVATIVE


#: clear the memo (tests, or after changing vocabularies)
cache_clear = _analyze_memo.cache_clear
cache_info = _analyze_memo.cache_info
