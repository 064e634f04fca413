"""Hot-path statements whose SQL Peewee builds once per database, then runs with new parameters.

Peewee spends about 180 us turning a query into SQL, while the indexed
lookup it describes takes about 10 us; every RPC paid that for each
statement. The SQL of a statement depends only on its shape and the
database's dialect, so a Prepared statement builds it on first use from a
Peewee query over *sample* parameters, remembers where each sample sits in
the parameter list, and from then on only substitutes the call's values.
Statements still go through ``Database.execute_sql`` (same logging, same
error translation, same connection handling).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from peewee import CharField, Database, Field, ForeignKeyField, IntegerField, Model

from lending_grpc.core.storage.database import lock_row


def _plain(field: Field) -> bool:
    """Whether Peewee's python_value is the identity for the int or str the driver returns."""
    if isinstance(field, ForeignKeyField):
        field = field.rel_field
    return isinstance(field, (IntegerField, CharField))


class Prepared:
    """One statement shape: ``build(*samples)`` returns the Peewee query that describes it.

    With ``for_update`` the query locks its rows where the backend has row
    locks (``database.lock_row``), which is why SQL is built per database.

    Each sample must be a distinctive value of the type the real parameter
    will have (after Peewee's conversion to the database), appearing exactly
    once among the query's parameters; calls pass values in the samples' order.
    """

    def __init__(self, build: Callable[..., Any], *samples: Any, for_update: bool = False) -> None:
        self._build = build
        self._samples = samples
        self._for_update = for_update
        self._compiled: weakref.WeakKeyDictionary[Database, tuple[str, list, list[int]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def _compile(self, db: Database) -> tuple[str, list, list[int]]:
        with self._lock:
            compiled = self._compiled.get(db)
            if compiled is None:
                query = self._build(*self._samples)
                if self._for_update:
                    query = lock_row(query, db)
                sql, params = db.get_sql_context().sql(query).query()
                positions = []
                for sample in self._samples:
                    found = [i for i, value in enumerate(params) if value == sample]
                    if len(found) != 1:
                        raise ValueError(f"sample {sample!r} appears {len(found)} times in {sql}")
                    positions.append(found[0])
                compiled = self._compiled[db] = (sql, list(params), positions)
            return compiled

    def execute(self, db: Database, *values: Any):
        """Run the statement with ``values`` in place of the samples; returns the cursor."""
        compiled = self._compiled.get(db) or self._compile(db)
        sql, template, positions = compiled
        params = list(template)
        for position, value in zip(positions, values, strict=True):
            params[position] = value
        return db.execute_sql(sql, params)


class PreparedSelect(Prepared):
    """A SELECT of ``fields`` (in that order) whose rows come back as instances of ``model``."""

    def __init__(
        self,
        model: type[Model],
        fields: Sequence[Field],
        build: Callable[..., Any],
        *samples: Any,
        for_update: bool = False,
    ) -> None:
        super().__init__(lambda *args: build(model.select(*fields), *args), *samples, for_update=for_update)
        self._model = model
        # A column of another model (a join) becomes a plain attribute named
        # <model>_<field>, e.g. loan_loan_id, beside the instance's own fields.
        # Values the driver already returns as Python ints or strs skip Peewee's
        # converter (which would return them unchanged); dates and the rest go through it.
        self._columns = [
            (
                field.name if field.model is model else f"{field.model.__name__.lower()}_{field.name}",
                None if _plain(field) else field.python_value,
                field.model is model,
            )
            for field in fields
        ]

    def _instance(self, row: tuple) -> Model:
        instance = self._model(__no_default__=1)
        data = instance.__data__
        for (name, convert, own), value in zip(self._columns, row, strict=True):
            if convert is not None and value is not None:
                value = convert(value)
            if own:
                data[name] = value
            else:
                instance.__dict__[name] = value
        return instance

    def first(self, db: Database, *values: Any) -> Model | None:
        """The first row, or None."""
        row = self.execute(db, *values).fetchone()
        return None if row is None else self._instance(row)

    def all(self, db: Database, *values: Any) -> list[Model]:
        """Every row."""
        return [self._instance(row) for row in self.execute(db, *values).fetchall()]
