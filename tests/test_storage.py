"""Prepared statements: SQL built once per database, same rows as the Peewee query they come from."""

from __future__ import annotations

import pytest
from helpers import actor_of

from lending_grpc.core.storage.models import Loan, Payment
from lending_grpc.core.storage.prepared import Select, Statement

BY_KEY = Select(Loan, lambda p: Loan.select().where((Loan.owner == p.owner) & (Loan.loan_id == p.loan_id)))
WITH_LOAN_ID = Select(
    Payment,
    lambda p: Payment.select().join(Loan).where(Payment.owner == p.owner).order_by(Payment.id),
    columns=(*Payment._meta.sorted_fields, Loan.loan_id),
)


def test_rows_equal_what_peewee_returns(env):
    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "A-1", "1000", start_date="2026-01-05")
    env.billing.create_loan(actor_of(owner), "A-2", "2000", start_date="2026-02-02", term_weeks=10)
    for loan_id in ("A-1", "A-2"):
        row = env.db.first(BY_KEY, owner=owner, loan_id=loan_id)
        expected = Loan.get((Loan.owner == owner) & (Loan.loan_id == loan_id))
        assert row._asdict() == expected.__data__  # dates come back as dates, ids as ints
    assert env.db.first(BY_KEY, owner=owner, loan_id="missing") is None
    assert env.db.all(BY_KEY, owner=owner + 1, loan_id="A-1") == []


def test_joined_columns_become_model_prefixed_attributes(env):
    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "J-1", "5000000", start_date="2026-01-05")
    env.billing.make_payment(actor_of(owner), "J-1", "110000.00", "k1")
    env.billing.make_payment(actor_of(owner), "J-1", "220000.00", "k2")
    rows = env.db.all(WITH_LOAN_ID, owner=owner)
    assert [(r.loan_loan_id, r.request_id, r.first_week, r.last_week) for r in rows] == [
        ("J-1", "k1", 1, 1),
        ("J-1", "k2", 2, 3),
    ]


def test_a_parameter_may_repeat_but_must_appear_and_every_value_must_be_given(env):
    owner = env.new_owner()
    env.billing.create_loan(actor_of(owner), "R-1", "1000", start_date="2026-01-05")
    twice = Select(Loan, lambda p: Loan.select().where((Loan.owner == p.owner) | (Loan.id == p.owner)))
    assert [row.loan_id for row in env.db.all(twice, owner=owner)] == ["R-1"]
    unused = Statement(lambda p: (p.owner, Loan.select().where(Loan.id == 1))[1])
    with pytest.raises(ValueError, match="parameter 'owner' does not appear"):
        env.db.run(unused, owner=1)
    with pytest.raises(TypeError, match=r"missing \['loan_id'\]"):
        env.db.first(BY_KEY, owner=owner)
