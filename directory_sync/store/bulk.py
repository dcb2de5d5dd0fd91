"""Bulk inserts, updates and reads that skip SQLAlchemy's per-row handling.

`session.execute(insert(table), rows)` runs every value of every row through SQLAlchemy's parameter
machinery: at a first run's 460,000 rows (people, accounts, affiliations, audit events) that was 45% of
applying the plan, more than SQLite's own work. `insert_rows` compiles the statement once, applies each
column's bind processor itself (the same processors, so what is stored is the same) and hands the rows to
the DB-API driver's `executemany`. A value that repeats, as the run's timestamp does in every row, goes
through its column's processor once. `select_rows` is the same for a SELECT built once: the driver's
rows, each column through its own result processor (a delta's reads of the rows it changes and of the
new accounts' candidates spent as long in SQLAlchemy's result machinery as in SQLite).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Select, Table, bindparam, insert, update
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler


def insert_rows(bind: Session | Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT `rows` (dicts keyed by column name, all with the same keys) into `table`, in the caller's
    transaction. Columns left out get their default, as with `insert(table)`."""
    if not rows:
        return
    connection = bind.connection() if isinstance(bind, Session) else bind
    dialect = connection.dialect
    names = tuple(rows[0])
    sql, positional, order, processors = _statement(table, names, dialect)
    # Columns left out whose model gives a default: the statement binds them too, as SQLAlchemy would.
    defaults = {name: _default(table, name) for name in order if name not in names}
    if defaults:
        rows = [{**defaults, **row} for row in rows]
    _execute(connection, table, sql, positional, order, processors, rows)


def update_rows(
    bind: Session | Connection, table: Table, key: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """UPDATE `table` SET the other columns of each row WHERE its id is `row[key]`, in the caller's
    transaction, through the driver's `executemany` (as `insert_rows`). Every row has the same keys."""
    if not rows:
        return
    connection = bind.connection() if isinstance(bind, Session) else bind
    dialect = connection.dialect
    names = tuple(rows[0])
    sql, positional, order, processors = _update_statement(table, key, names, dialect)
    _execute(connection, table, sql, positional, order, processors, rows)


def _execute(
    connection: Connection,
    table: Table,
    sql: str,
    positional: bool,
    order: tuple[str, ...],
    processors: tuple[tuple[int, Callable[[Any], Any]], ...],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """`sql` through the driver's `executemany`: each row's values in `order`, those at the positions
    of `processors` converted by them (remembering repeated values: `_converter`)."""
    values = operator.itemgetter(*order)
    converters = [(i, _converter(processor)) for i, processor in processors]
    try:
        if len(order) == 1:
            parameters: list[Any] = [(values(row),) for row in rows]
        else:
            parameters = [values(row) for row in rows]
    except KeyError as missing:
        raise ValueError(f"{table.name}: every row needs the same columns, one lacks {missing}") from None
    if converters:
        for n, raw in enumerate(parameters):
            row_values = list(raw)
            for i, convert in converters:
                row_values[i] = convert(row_values[i])
            parameters[n] = tuple(row_values)
    if not positional:
        parameters = [dict(zip(order, row_values, strict=True)) for row_values in parameters]
    connection.exec_driver_sql(sql, parameters)


def _processors(
    table: Table, order: tuple[str, ...], dialect: Dialect, skip: str | None = None
) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    """The bind processors of the columns in `order` that have one (but `skip`), by position."""
    return tuple(
        (i, processor)
        for i, name in enumerate(order)
        if name != skip
        and (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    )


@functools.lru_cache(maxsize=256)
def _update_statement(
    table: Table, key: str, names: tuple[str, ...], dialect: Dialect
) -> tuple[str, bool, tuple[str, ...], tuple[tuple[int, Callable[[Any], Any]], ...]]:
    columns = [name for name in names if name != key]
    unknown = [name for name in columns if name not in table.c]
    if unknown or key not in names or len(columns) + 1 != len(names):
        raise ValueError(f"{table.name}: cannot update {', '.join(names)} by {key}")
    statement = update(table).where(table.c.id == bindparam(key))
    compiled = statement.compile(dialect=dialect, column_keys=columns)
    order = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.params)
    if sorted(order) != sorted(names):
        raise ValueError(f"{table.name}: unexpected parameters {order} for {names}")
    return compiled.string, compiled.positional, order, _processors(table, order, dialect, skip=key)


@functools.lru_cache(maxsize=256)
def _statement(
    table: Table, names: tuple[str, ...], dialect: Dialect
) -> tuple[str, bool, tuple[str, ...], tuple[tuple[int, Callable[[Any], Any]], ...]]:
    """The INSERT's text, whether its parameters are positional, their names in order, and the
    processors of those that need one (by position): compiled once per table, columns and dialect."""
    unknown = [name for name in names if name not in table.c]
    if unknown:
        raise ValueError(f"{table.name}: no column {', '.join(unknown)}")
    compiled = insert(table).compile(dialect=dialect, column_keys=list(names))
    order = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.params)
    return compiled.string, compiled.positional, order, _processors(table, order, dialect)


def _default(table: Table, name: str) -> Any:
    default = table.c[name].default
    if default is None or not default.is_scalar:
        raise ValueError(f"{table.name}: a value for column {name} is needed in every row")
    return default.arg  # type: ignore[attr-defined]


def _converter(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`processor`, remembering its result for hashable values (a timestamp, a status, a site code
    repeat across a batch)."""
    done: dict[Hashable, Any] = {}

    def convert(value: Any) -> Any:
        kind = type(value)
        if kind in _REPEATING:
            # Equal values of another type or time zone may be stored differently: other keys.
            key: Hashable = (kind, value, value.tzinfo) if kind is datetime else (kind, value)
        elif (kind is dict or kind is list) and not value:
            key = (kind, None)  # an empty JSON document (an LDAP account's facts): the same each time
        else:  # other JSON documents: different each time
            return processor(value)
        try:
            return done[key]
        except KeyError:
            done[key] = converted = processor(value)
            return converted

    return convert


#: Types whose values repeat across rows and can be remembered (hashable, immutable).
_REPEATING = frozenset({datetime, date, str, int, bool, float})


def select_rows(
    bind: Session | Connection, statement: Select[Any], parameters: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """The rows of `statement` (a SELECT built once, with `bindparam`s, expanding ones for IN lists)
    for `parameters`, as tuples, in the caller's transaction: each column's values through its type's
    result processor, so the values are those SQLAlchemy would give. Parameters are passed as they
    are: a statement whose parameters need converting is refused."""
    connection = bind.connection() if isinstance(bind, Session) else bind
    compiled, processors = _select(statement, connection.dialect)
    expanded = compiled.construct_expanded_state(dict(parameters))
    values: Any = expanded.positional_parameters if compiled.positional else expanded.parameters
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(expanded.statement, values)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    if not processors:
        return [tuple(row) for row in rows]
    converted = []
    for row in rows:
        row_values = list(row)
        for i, process in processors:
            if row_values[i] is not None:
                row_values[i] = process(row_values[i])
        converted.append(tuple(row_values))
    return converted


@functools.lru_cache(maxsize=256)
def _select(
    statement: Select[Any], dialect: Dialect
) -> tuple[SQLCompiler, tuple[tuple[int, Callable[[Any], Any]], ...]]:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    for bind in compiled.binds.values():
        if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
            raise ValueError(f"select_rows: parameter {bind.key} would need converting")
    processors = tuple(
        (i, processor)
        for i, column in enumerate(statement.selected_columns)
        if (processor := column.type.dialect_impl(dialect).result_processor(dialect, None)) is not None
    )
    return compiled, processors
