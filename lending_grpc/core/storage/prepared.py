"""Statements whose SQL Peewee builds once per database, then runs with new values.

Peewee spends about 180 us turning a query into SQL, while the indexed
lookup it describes takes about 10 us; every RPC paid that for each
statement. The SQL of a statement depends only on its shape and the
database's dialect, so a `Statement` describes its query once, with named
`Param` placeholders where values go, and the database (``LendingDatabase``
in ``database.py``) builds the SQL on first use and from then on only puts
the call's values in place. Statements still run through
``Database.execute_sql`` (same logging, same connection handling).

    LOAN_BY_KEY = Select(Loan, lambda p: Loan.select().where(
        (Loan.owner == p.owner) & (Loan.loan_id == p.loan_id)).limit(1))
    row = db.first(LOAN_BY_KEY, owner=7, loan_id="L-1")

A `Select` returns rows as named tuples of its columns (a joined model's
column ``Loan.loan_id`` as ``loan_loan_id``), converted like Peewee's own
rows; the callers only read them.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

from peewee import CharField, DateField, Field, ForeignKeyField, IntegerField, Model, Value

_serial = itertools.count(1)


class Param(Value):
    """A named placeholder in a statement's query; its value is given when the statement runs.

    Values are passed to the driver as they are given (no field conversion):
    pass what the column stores, ``field.db_value(x)`` where that differs.
    """

    def __init__(self, name: str) -> None:
        # A marker no real value can equal, found again in the built parameter list.
        super().__init__(f"\0param:{next(_serial)}:{name}", converter=False)
        self.name = name


class Params:
    """Hands out one `Param` per attribute name: ``p.owner``, ``p.loan_id``."""

    def __init__(self) -> None:
        self._params: dict[str, Param] = {}

    def __getattr__(self, name: str) -> Param:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._params:
            self._params[name] = Param(name)
        return self._params[name]

    def all(self) -> list[Param]:
        """Every parameter handed out, in order."""
        return list(self._params.values())


@dataclasses.dataclass(frozen=True, slots=True)
class Built:
    """A statement's SQL for one database, and where each named value goes in its parameters."""

    sql: str
    template: tuple
    slots: dict[str, tuple[int, ...]]

    def parameters(self, values: dict[str, Any]) -> list:
        """The parameter list with ``values`` in their places; every name must be given."""
        params = list(self.template)
        if values.keys() != self.slots.keys():
            missing, extra = self.slots.keys() - values.keys(), values.keys() - self.slots.keys()
            raise TypeError(f"statement parameters: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, positions in self.slots.items():
            for position in positions:
                params[position] = values[name]
        return params


class Statement:
    """One statement shape: ``build(p)`` returns the Peewee query, with ``p.<name>`` where values go.

    With ``lock`` the query locks the rows it reads where the backend has row
    locks (SELECT ... FOR UPDATE on PostgreSQL), which is one reason the SQL
    is built per database.
    """

    def __init__(self, build: Callable[[Params], Any], *, lock: bool = False) -> None:
        self._build = build
        self.lock = lock

    def query(self) -> tuple[Any, list[Param]]:
        """The Peewee query and its parameters (built anew: the database keeps the SQL)."""
        params = Params()
        return self._build(params), params.all()

    def build(self, sql_context: Callable[[Any], tuple[str, list]], lock_rows: Callable[[Any], Any]) -> Built:
        """Turn the query into SQL with ``sql_context`` (the database's), locating each parameter."""
        query, params = self.query()
        if self.lock:
            query = lock_rows(query)
        sql, values = sql_context(query)
        slots = {}
        for param in params:
            positions = tuple(i for i, value in enumerate(values) if value == param.value)
            if not positions:
                raise ValueError(f"parameter {param.name!r} does not appear in {sql}")
            slots[param.name] = positions
        return Built(sql, tuple(values), slots)


def _converter(field: Field) -> Callable[[Any], Any] | None:
    """How to turn what the driver returns into what Peewee would give; None when it is the same.

    Integers and strings come back as they are. Peewee parses a DATE column
    that SQLite returns as text by trying strptime formats in turn (several
    microseconds a value); the ISO form every date here is stored in parses
    with ``date.fromisoformat`` instead, anything else still goes to Peewee.
    """
    if isinstance(field, ForeignKeyField):
        field = field.rel_field
    if isinstance(field, (IntegerField, CharField)):
        return None
    if isinstance(field, DateField) and field.formats == DateField.formats:
        peewee_value = field.python_value

        def date_value(value: Any) -> Any:
            if type(value) is str and len(value) == 10:
                return dt.date.fromisoformat(value)
            return peewee_value(value)

        return date_value
    return field.python_value


class Select(Statement):
    """A SELECT of ``columns`` (default: every column of ``model``), whose rows come back as named tuples."""

    def __init__(
        self,
        model: type[Model],
        build: Callable[[Params], Any],
        *,
        columns: tuple[Field, ...] | None = None,
        lock: bool = False,
    ) -> None:
        columns = tuple(columns or model._meta.sorted_fields)
        super().__init__(lambda p: build(p).select(*columns), lock=lock)
        names = [
            field.name if field.model is model else f"{field.model.__name__.lower()}_{field.name}"
            for field in columns
        ]
        self.row_type = collections.namedtuple(f"{model.__name__}Row", names)
        self._width = len(columns)
        # Only the columns whose values change on the way in (most are ints and strings).
        self._conversions = tuple(
            (index, convert) for index, convert in enumerate(map(_converter, columns)) if convert is not None
        )

    def row(self, values: tuple) -> tuple:
        """One driver row as this statement's named tuple, each value converted as Peewee would."""
        if len(values) != self._width:
            raise ValueError(f"expected {self._width} columns, the driver returned {len(values)}")
        if not self._conversions:
            return self.row_type._make(values)
        converted = list(values)
        for index, convert in self._conversions:
            value = converted[index]
            if value is not None:
                converted[index] = convert(value)
        return self.row_type._make(converted)
