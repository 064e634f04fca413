"""SQL statements per core operation: the hot paths stay a fixed, small number of queries.

Peewee builds each query in Python (about 180 us here), so the count per RPC,
not the database, sets the floor of every call's cost. These budgets pin it.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
from test_core_billing import ANONYMOUS, actor_of, env  # noqa: F401  (env: a fixture)


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.statements.append(str(record.msg))


@contextlib.contextmanager
def count_queries():
    logger = logging.getLogger("peewee")
    counter, level = _Counter(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield counter.statements
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


@pytest.fixture
def loan(env):  # noqa: F811
    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "Q1", "5000000", start_date="2026-01-05")
    env.billing.make_payment(actor_of(owner), "Q1", "110000.00", "warm")
    return owner


@pytest.mark.parametrize(
    ("operation", "budget"),
    [
        (lambda e, o: e.billing.get_loan(o, "Q1"), 1),
        # the loan, then (paid since 2026-03-01) its running total on that day
        (lambda e, o: e.delinquency.get_delinquency(o, "Q1", "2026-03-01"), 2),
        (lambda e, o: e.billing.list_loans(o), 1),
        # loans whose row holds their standing that day, and the stored spans covering it
        (lambda e, o: e.delinquency.list_delinquent(o, "2026-03-01"), 2),
        (lambda e, o: e.billing.list_payments(o, "Q1"), 2),
        (lambda e, o: e.billing.get_schedule(o, "Q1"), 2),
        # idempotency lookup, loan, insert payment, guarded update of the summary, audit row, event
        (lambda e, o: e.billing.make_payment(actor_of(o), "Q1", "110000.00", "fresh-key"), 6),
        # a retry is answered from the idempotency lookup alone
        (lambda e, o: e.billing.make_payment(actor_of(o), "Q1", "110000.00", "warm"), 1),
        (lambda e, o: e.billing.create_loan(actor_of(o), "Q2", "2000000"), 4),  # lookup, insert, audit, event
    ],
    ids=[
        "get_loan",
        "get_delinquency",
        "list_loans",
        "list_delinquent",
        "list_payments",
        "get_schedule",
        "make_payment",
        "make_payment_retry",
        "create_loan",
    ],
)
def test_query_budget(env, loan, operation, budget):  # noqa: F811
    with count_queries() as statements:
        operation(env, loan)
    assert len(statements) == budget, statements


def test_authenticating_a_known_session_costs_no_query(env):  # noqa: F811
    owner_user = env.auth.register(ANONYMOUS, "cached-user", "correct horse battery", "c@example.com")
    token = env.auth.login(ANONYMOUS, "cached-user", "correct horse battery").access_token
    with count_queries() as statements:
        env.auth.authenticate(token)  # the first call resolves user and session in one query
    assert len(statements) == 1
    with count_queries() as statements:
        principal, _expires = env.auth.authenticate(token)
    assert statements == [] and principal.user_id == owner_user.user_id
