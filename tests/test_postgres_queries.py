"""The PostgreSQL dialect answers every named query the ledger may run, with the same parameters."""

from __future__ import annotations

import re
from pathlib import Path

import asyncgate_postgres
import asyncgate_sqlite
from asyncgate_postgres import conninfo_from_url

from asyncgate.storage import load_queries

SQLITE_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
PG_PARAM = re.compile(r"%\(([a-z_][a-z0-9_]*)\)s")
# A query run by ``many`` or ``many_returning`` on PostgreSQL takes its rows as one JSON
# recordset; its columns, with any parameters shared by every row, are the parameters SQLite's
# form of the query takes per row.
PG_RECORDSET = re.compile(r"json_to_recordset\(%\(rows\)s::json\) AS r\(([^)]*)\)")


def pg_parameters(sql: str) -> set[str]:
    names = set(PG_PARAM.findall(sql))
    if "rows" not in names:
        return names
    [columns] = PG_RECORDSET.findall(sql)
    return names - {"rows"} | {column.split()[0] for column in columns.split(",")}


def queries(module: object) -> dict[str, str]:
    return load_queries(Path(module.__file__).with_name("queries.sql"))  # type: ignore[attr-defined]


def test_postgres_defines_every_query_sqlite_defines_with_the_same_parameters() -> None:
    sqlite, postgres = queries(asyncgate_sqlite), queries(asyncgate_postgres)
    fast_paths = asyncgate_postgres.PostgresDialect.fast_paths
    assert asyncgate_sqlite.SQLiteDialect.fast_paths == frozenset()
    assert sorted(postgres) == sorted(set(sqlite) | fast_paths)
    for name, sql in sqlite.items():
        expected = set(SQLITE_PARAM.findall(sql))
        assert pg_parameters(postgres[name]) == expected, name


def test_postgres_queries_use_only_named_placeholders() -> None:
    for name, sql in queries(asyncgate_postgres).items():
        # A stray % would be read by psycopg as a placeholder.
        assert "%" not in PG_PARAM.sub("", sql), name


def test_the_driver_suffix_is_only_a_label() -> None:
    forms = ["postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg"]
    conninfos = {conninfo_from_url(f"{form}://u@h:5433/db") for form in forms}
    assert len(conninfos) == 1
