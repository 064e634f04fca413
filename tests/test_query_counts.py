"""SQL statements per core operation: the hot paths stay a fixed, small number of queries.

Peewee builds each query in Python (about 180 us here), so the count per RPC,
not the database, sets the floor of every call's cost. These budgets pin it.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
from helpers import ANONYMOUS, actor_of


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
def loan(env):
    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "Q1", "5000000", start_date="2026-01-05")
    env.billing.make_payment(actor_of(owner), "Q1", "110000.00", "warm")
    return owner


@pytest.mark.parametrize(
    ("operation", "budget"),
    [
        (lambda b, o: b.get_loan(o, "Q1"), 1),
        (lambda b, o: b.get_delinquency(o, "Q1", "2026-03-01"), 1),
        (lambda b, o: b.list_loans(o), 1),
        (lambda b, o: b.list_delinquent(o, "2026-03-01"), 1),
        (lambda b, o: b.list_payments(o, "Q1"), 2),
        (lambda b, o: b.get_schedule(o, "Q1"), 2),
        # idempotency lookup, loan, insert payment, guarded update of the summary, audit row
        (lambda b, o: b.make_payment(actor_of(o), "Q1", "110000.00", "fresh-key"), 5),
        # a retry is answered from the idempotency lookup alone
        (lambda b, o: b.make_payment(actor_of(o), "Q1", "110000.00", "warm"), 1),
        (lambda b, o: b.create_loan(actor_of(o), "Q2", "2000000"), 3),  # lookup, insert, audit row
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
def test_query_budget(env, loan, operation, budget):
    with count_queries() as statements:
        operation(env.billing, loan)
    assert len(statements) == budget, statements


def test_authenticating_a_known_session_costs_no_query(env):
    owner_user = env.auth.register(ANONYMOUS, "cached-user", "correct horse battery", "c@example.com")
    token = env.auth.login(ANONYMOUS, "cached-user", "correct horse battery").access_token
    with count_queries() as statements:
        env.auth.authenticate(token)  # the first call resolves user and session in one query
    assert len(statements) == 1
    with count_queries() as statements:
        principal, _expires = env.auth.authenticate(token)
    assert statements == [] and principal.user_id == owner_user.user_id
