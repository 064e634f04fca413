"""Prepared statements: SQL built once per database, same rows as the Peewee query they come from."""

from __future__ import annotations

import pytest
from test_core_billing import make_env

from lending_grpc.core.storage.database import close_database
from lending_grpc.core.storage.models import Loan, Payment
from lending_grpc.core.storage.prepared import Prepared, PreparedSelect

_OWNER, _LOAN = -55_555, "\0loan"

BY_KEY = PreparedSelect(
    Loan,
    Loan._meta.sorted_fields,
    lambda query, owner, loan_id: query.where((Loan.owner == owner) & (Loan.loan_id == loan_id)),
    _OWNER,
    _LOAN,
)
WITH_LOAN_ID = PreparedSelect(
    Payment,
    [*Payment._meta.sorted_fields, Loan.loan_id],
    lambda query, owner: query.join(Loan).where(Payment.owner == owner).order_by(Payment.id),
    _OWNER,
)


@pytest.fixture
def env(database_url: str):
    e = make_env(database_url)
    yield e
    close_database(e.db)


def test_rows_equal_what_peewee_returns(env):
    owner = env.new_owner()
    env.billing.create_loan(owner, "A-1", "1000", start_date="2026-01-05")
    env.billing.create_loan(owner, "A-2", "2000", start_date="2026-02-02", term_weeks=10)
    for loan_id in ("A-1", "A-2"):
        row = BY_KEY.first(env.db, owner, loan_id)
        expected = Loan.get((Loan.owner == owner) & (Loan.loan_id == loan_id))
        assert row.__data__ == expected.__data__  # dates come back as dates, ids as ints
    assert BY_KEY.first(env.db, owner, "missing") is None
    assert BY_KEY.all(env.db, owner + 1, "A-1") == []


def test_joined_columns_become_model_prefixed_attributes(env):
    owner = env.new_owner()
    env.billing.create_loan(owner, "J-1", "5000000", start_date="2026-01-05")
    env.billing.make_payment(owner, "J-1", "110000.00", "k1")
    env.billing.make_payment(owner, "J-1", "220000.00", "k2")
    rows = WITH_LOAN_ID.all(env.db, owner)
    assert [(r.loan_loan_id, r.request_id, r.first_week, r.last_week) for r in rows] == [
        ("J-1", "k1", 1, 1),
        ("J-1", "k2", 2, 3),
    ]


def test_a_sample_must_appear_exactly_once(env):
    twice = Prepared(lambda owner: Loan.select().where((Loan.owner == owner) | (Loan.id == owner)), _OWNER)
    with pytest.raises(ValueError, match="appears 2 times"):
        twice.execute(env.db, 1)
    missing = Prepared(lambda owner: Loan.select().where(Loan.id == 1), _OWNER)
    with pytest.raises(ValueError, match="appears 0 times"):
        missing.execute(env.db, 1)
