"""The operator role over real gRPC: granted on the command line, portfolio-wide reads, denials for others."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from helpers import (
    CLI_ACTOR,
    assert_invalid,
    audit_rows,
    bearer,
    call_error,
    grant_operator,
    login,
    reason,
    register,
    run_cli,
    running_api,
    today,
)
from lending.v1 import audit_pb2, billing_pb2


def _metadata(api, username: str) -> tuple:
    return bearer(login(api, username).access_token)


@pytest.fixture
def people(tmp_path, database_url):
    """A server (no auth cache, so role changes show at once), alice and bob with loans, an operator."""
    with running_api(tmp_path, database_url, auth_cache_seconds=0.0) as api:
        ids = {name: register(api, name).user_id for name in ("alice", "bob", "olga")}
        grant_operator(api, "olga")
        md = {name: _metadata(api, name) for name in ids}
        old = (today() - dt.timedelta(weeks=5)).isoformat()
        older = (today() - dt.timedelta(weeks=8)).isoformat()
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="5000000", start_date=old),
            metadata=md["alice"],
        )
        api.billing.MakePayment(
            billing_pb2.MakePaymentRequest(loan_id="L1", amount="110000.00"), metadata=md["alice"]
        )
        api.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="2000000", start_date=older),
            metadata=md["bob"],
        )
        yield api, ids, md


def test_an_operator_reads_any_loan_by_naming_its_owner(people):
    api, ids, md = people
    olga, owner = md["olga"], ids["alice"]
    loan = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="L1", owner=owner), metadata=olga)
    assert (loan.principal_amount, loan.outstanding_balance, loan.installments_paid) == (
        "5000000.00",
        "5390000.00",
        1,
    )
    bobs = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="L1", owner=ids["bob"]), metadata=olga)
    assert bobs.total_amount == "2200000.00"
    schedule = api.billing.GetSchedule(
        billing_pb2.GetScheduleRequest(loan_id="L1", owner=owner), metadata=olga
    )
    assert [i.paid for i in schedule.installments[:2]] == [True, False]
    outstanding = api.billing.GetOutstanding(
        billing_pb2.GetOutstandingRequest(loan_id="L1", owner=owner), metadata=olga
    )
    assert outstanding.paid_amount == "110000.00"
    payments = api.billing.ListPayments(
        billing_pb2.ListPaymentsRequest(loan_id="L1", owner=owner), metadata=olga
    )
    assert [p.amount for p in payments.payments] == ["110000.00"]
    status = api.billing.GetDelinquencyStatus(
        billing_pb2.GetDelinquencyStatusRequest(loan_id="L1", owner=owner), metadata=olga
    )
    assert (status.missed_payments, status.overdue_amount) == (3, "330000.00")
    # Without `owner`, the operator's own (non-existent) loan: NOT_FOUND as for anyone.
    err = call_error(api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="L1"), metadata=olga)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    unknown = call_error(
        api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="L1", owner="no-such-user"), metadata=olga
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


def test_ordinary_users_get_not_found_for_others_and_denied_for_operator_paths(people):
    api, ids, md = people
    bob = md["bob"]
    assert (
        call_error(api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="L1"), metadata=md["olga"]).code()
        == grpc.StatusCode.NOT_FOUND
    )
    # Bob's own L1 is his; alice's L1 is invisible to him (NOT_FOUND by a name he does not own).
    assert (
        api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="L1"), metadata=bob).total_amount
        == "2200000.00"
    )
    cases = [
        (api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="L1", owner=ids["alice"])),
        (api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="L1", owner=ids["bob"])),  # even his own id
        (api.billing.GetSchedule, billing_pb2.GetScheduleRequest(loan_id="L1", owner=ids["alice"])),
        (api.billing.GetOutstanding, billing_pb2.GetOutstandingRequest(loan_id="L1", owner=ids["alice"])),
        (api.billing.ListPayments, billing_pb2.ListPaymentsRequest(loan_id="L1", owner=ids["alice"])),
        (
            api.billing.GetDelinquencyStatus,
            billing_pb2.GetDelinquencyStatusRequest(loan_id="L1", owner=ids["alice"]),
        ),
        (api.billing.ListDelinquentLoans, billing_pb2.ListDelinquentLoansRequest(all_owners=True)),
        (api.audit.ListAuditEvents, audit_pb2.ListAuditEventsRequest()),
    ]
    for method, request in cases:
        err = call_error(method, request, metadata=bob)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (request, err.details())
        assert reason(err) == "PERMISSION_DENIED"
    denied = audit_rows(event="access.denied")
    assert len(denied) == 8 and {r["outcome"] for r in denied} == {"denied"}
    assert {r["actor"] for r in denied} == {ids["bob"]}


def test_operators_list_delinquent_loans_across_the_portfolio(people):
    api, ids, md = people
    request = billing_pb2.ListDelinquentLoansRequest(all_owners=True, page_size=1)
    first = api.billing.ListDelinquentLoans(request, metadata=md["olga"])
    assert [(s.owner, s.missed_payments) for s in first.loans] == [(ids["bob"], 7)]  # most overdue first
    second = api.billing.ListDelinquentLoans(
        billing_pb2.ListDelinquentLoansRequest(
            all_owners=True, page_size=1, page_token=first.next_page_token
        ),
        metadata=md["olga"],
    )
    assert [(s.owner, s.missed_payments, s.overdue_amount) for s in second.loans] == [
        (ids["alice"], 3, "330000.00")
    ]
    assert second.next_page_token == ""
    # The portfolio token is bound to its scope: not valid for the operator's own list.
    err = call_error(
        api.billing.ListDelinquentLoans,
        billing_pb2.ListDelinquentLoansRequest(page_token=first.next_page_token),
        metadata=md["olga"],
    )
    assert_invalid(err, "page_token")
    # Ordinary lists stay per owner and name no owner.
    own = api.billing.ListDelinquentLoans(billing_pb2.ListDelinquentLoansRequest(), metadata=md["alice"])
    assert [(s.loan_id, s.owner) for s in own.loans] == [("L1", "")]


def test_revoking_the_role_takes_effect(people, tmp_path):
    api, ids, md = people
    from lending_grpc.core.admin import AccountAdmin
    from lending_grpc.core.clock import Clock

    request = billing_pb2.ListDelinquentLoansRequest(all_owners=True)
    assert len(api.billing.ListDelinquentLoans(request, metadata=md["olga"]).loans) == 2
    AccountAdmin(api.server.database, Clock()).set_role(CLI_ACTOR, "olga", "operator", granted=False)
    err = call_error(api.billing.ListDelinquentLoans, request, metadata=md["olga"])  # same token
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [r["event"] for r in audit_rows(subject=ids["olga"]) if r["event"].startswith("role.")] == [
        "role.grant",
        "role.revoke",
    ]


def test_clients_cannot_set_owner_state_or_balances(people):
    """A CreateLoan carrying a Loan's fields (state PAID_OFF, balances, paid count) ignores them."""
    api, _ids, md = people
    forged = billing_pb2.Loan(
        loan_id="F1",
        principal_amount="1000.00",
        outstanding_balance="0.00",
        paid_amount="1100.00",
        installments_paid=50,
        state=billing_pb2.LOAN_STATE_PAID_OFF,
    )
    create = api.channel.unary_unary(
        "/lending.v1.BillingService/CreateLoan",
        request_serializer=billing_pb2.Loan.SerializeToString,
        response_deserializer=billing_pb2.Loan.FromString,
    )
    loan = create(forged, metadata=md["alice"])
    assert (loan.state, loan.outstanding_balance, loan.paid_amount, loan.installments_paid) == (
        billing_pb2.LOAN_STATE_ACTIVE,
        "1100.00",
        "0.00",
        0,
    )
    # The owner is always the caller: alice's F1 is not bob's.
    err = call_error(api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="F1"), metadata=md["bob"])
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_the_cli_grants_and_revokes_the_role(tmp_path, database_url):
    with running_api(tmp_path, database_url, auth_cache_seconds=0.0) as api:
        pat = register(api, "pat").user_id
        md = _metadata(api, "pat")
        request = billing_pb2.ListDelinquentLoansRequest(all_owners=True)
        assert call_error(api.billing.ListDelinquentLoans, request, metadata=md).code() == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        granted = run_cli("users", "grant", "pat", "operator", "--database-url", database_url, cwd=tmp_path)
        assert granted.returncode == 0, granted.stderr
        assert granted.stdout == f"granted role operator for user {pat} (pat)\n"
        assert list(api.billing.ListDelinquentLoans(request, metadata=md).loans) == []
        revoked = run_cli("users", "revoke", "pat", "operator", "--database-url", database_url, cwd=tmp_path)
        assert revoked.returncode == 0 and revoked.stdout == f"revoked role operator for user {pat} (pat)\n"
        assert call_error(api.billing.ListDelinquentLoans, request, metadata=md).code() == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        grant = audit_rows(subject=pat, event="role.grant")[0]
        assert grant["actor"].startswith("cli:") and grant["rpc"] == "lending-grpc users grant"
        missing = run_cli(
            "users", "grant", "nobody", "operator", "--database-url", database_url, cwd=tmp_path
        )
        assert (missing.returncode, missing.stderr) == (1, "lending-grpc: no user 'nobody'\n")
        bad_role = run_cli("users", "grant", "pat", "admin", "--database-url", database_url, cwd=tmp_path)
        assert bad_role.returncode == 2 and "invalid choice: 'admin'" in bad_role.stderr
