"""Server interceptor that runs each RPC as one database unit of work."""

from __future__ import annotations

from typing import Any

import grpc
from peewee import Database

from lending_grpc.api.handlers import Behaviour, WrappingInterceptor, wrap_unary
from lending_grpc.core.storage.database import unit_of_work


class UnitOfWorkInterceptor(WrappingInterceptor):
    """Translates transient database failures and returns pooled connections after each RPC.

    Sits inside the error mapping, so the translated errors become
    UNAVAILABLE or ABORTED, and outside auth, whose user lookups it covers.
    """

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db

    def wrap_handler(self, handler, method):
        def wrap(behaviour: Behaviour) -> Behaviour:
            def scoped(request: Any, context: grpc.ServicerContext) -> Any:
                with unit_of_work(self._db):
                    return behaviour(request, context)

            return scoped

        return wrap_unary(handler, wrap)
