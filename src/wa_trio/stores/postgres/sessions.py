"""An account's WhatsApp session (whatsmeow's tables in the account's schema) read and written
as plain rows, for ``wa-trio session export/import`` with the PostgreSQL store and for moving
a session between stores (``session_backup.py``). whatsmeow creates the tables itself; this
copies rows only, device first (the other tables reference it)."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg import sql

from wa_trio.core.lease_rules import session_schema
from wa_trio.stores.postgres.db import connect, store_errors

#: table -> (column names, rows)
Tables = dict[str, tuple[list[str], list[tuple[Any, ...]]]]

VERSION_TABLE = "whatsmeow_version"  # whatsmeow's own bookkeeping: never copied


def _columns(db: Any, schema: str) -> dict[str, dict[str, str]]:
    rows = db.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name LIKE 'whatsmeow%%' ORDER BY ordinal_position",
        (schema,),
    ).fetchall()
    tables: dict[str, dict[str, str]] = {}
    for table, column, kind in rows:
        tables.setdefault(table, {})[column] = kind
    return tables


def column_types(url: str, account: str) -> dict[str, dict[str, str]]:
    """table -> column -> PostgreSQL data type, of the account's whatsmeow tables."""
    with contextlib.closing(connect(url, purpose="session")) as db, store_errors("read a session"):
        return _columns(db, session_schema(account))


def read_session(url: str, account: str) -> Tables:
    """Every whatsmeow table of the account (but its version), from one snapshot."""
    schema = session_schema(account)
    out: Tables = {}
    with contextlib.closing(connect(url, purpose="session")) as db, store_errors("read a session"):
        db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with db.transaction():
            for table, columns in _columns(db, schema).items():
                if table == VERSION_TABLE:
                    continue
                names = list(columns)
                query = sql.SQL("SELECT {} FROM {}.{}").format(
                    sql.SQL(", ").join(map(sql.Identifier, names)),
                    sql.Identifier(schema),
                    sql.Identifier(table),
                )
                out[table] = (names, [tuple(row) for row in db.execute(query).fetchall()])
    return out


def device_count(url: str, account: str) -> int:
    schema = session_schema(account)
    with contextlib.closing(connect(url, purpose="session")) as db, store_errors("read a session"):
        if "whatsmeow_device" not in _columns(db, schema):
            return 0
        query = sql.SQL("SELECT count(*) FROM {}.whatsmeow_device").format(sql.Identifier(schema))
        row = db.execute(query).fetchone()
    return int(row[0]) if row else 0


def write_session(url: str, account: str, tables: Tables) -> int:
    """Replace the account's session rows with ``tables`` in one transaction (columns the
    store does not have are dropped; SQLite's 0/1 become booleans where the column is one);
    the number of tables written."""
    schema = session_schema(account)
    written = 0
    with contextlib.closing(connect(url, purpose="session")) as db, store_errors("write a session"):
        present = _columns(db, schema)
        targets = [t for t in present if t != VERSION_TABLE]
        with db.transaction():
            if targets:
                db.execute(
                    sql.SQL("TRUNCATE {} CASCADE").format(
                        sql.SQL(", ").join(sql.Identifier(schema, t) for t in targets)
                    )
                )
            order = sorted(tables, key=lambda t: (t != "whatsmeow_device", t))
            for table in order:
                if table not in present or table == VERSION_TABLE:
                    continue
                names, rows = tables[table]
                kinds = present[table]
                keep = [i for i, name in enumerate(names) if name in kinds]
                if not keep:
                    continue
                columns = [names[i] for i in keep]
                booleans = {i for i in keep if kinds[names[i]] == "boolean"}
                query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    sql.Identifier(schema, table),
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                )
                values = [
                    tuple(
                        bool(row[i]) if i in booleans and row[i] is not None else row[i]
                        for i in keep
                    )
                    for row in rows
                ]
                if values:
                    db.cursor().executemany(query, values)
                written += 1
    return written


__all__ = ["Tables", "column_types", "device_count", "read_session", "write_session"]
