"""Loan servicing over real gRPC on both backends: value dates, reversals, as-of standing, history, report.

Figures are worked out here from the rules of DESIGN.md sections 1 and 5,
never by calling the code under test. A 5,000,000.00 loan at 0.10 over 50
weeks has installments of 110,000.00; one of 1,000,001.00 has 49 of
22,000.02 and a final one of 22,000.12.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import grpc
import pytest
from helpers import assert_invalid, today
from lending.v1 import auth_pb2, billing_pb2

from lending_grpc.core.admin import AccountAdmin
from lending_grpc.core.clock import Clock
from lending_grpc.core.storage.models import AuditEvent, DelinquencySpan, Loan, Payment
from lending_grpc.core.views import Actor

PASSWORD = "correct horse battery"


def _login(api, username: str):
    tokens = api.auth.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))
    return (("authorization", f"Bearer {tokens.access_token}"),)


@pytest.fixture
def people(api):
    """A borrower (metadata, public user id) and an operator (metadata)."""
    names = {role: f"{role}-{uuid.uuid4().hex[:8]}" for role in ("borrower", "operator")}
    users = {
        role: api.auth.Register(
            auth_pb2.RegisterRequest(username=name, password=PASSWORD, email=f"{name}@example.com")
        )
        for role, name in names.items()
    }
    AccountAdmin(api.server.database, Clock()).set_role(
        Actor(name="cli:test"), names["operator"], "operator", granted=True
    )
    return _login(api, names["borrower"]), users["borrower"].user_id, _login(api, names["operator"])


def days_ago(n: int) -> dt.date:
    return today() - dt.timedelta(days=n)


def create(api, md, loan_id="L1", principal="5000000", start=None, **kwargs):
    return api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(
            loan_id=loan_id, principal_amount=principal, start_date=(start or today()).isoformat(), **kwargs
        ),
        metadata=md,
    )


def pay(api, md, amount, loan_id="L1", **kwargs):
    if isinstance(kwargs.get("value_date"), dt.date):
        kwargs["value_date"] = kwargs["value_date"].isoformat()
    return api.billing.MakePayment(
        billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=amount, **kwargs), metadata=md
    )


def reverse(api, md, payment_id, reason="bounced transfer"):
    return api.billing.ReversePayment(
        billing_pb2.ReversePaymentRequest(payment_id=payment_id, reason=reason), metadata=md
    )


def outstanding(api, md, loan_id="L1", owner=""):
    return api.billing.GetOutstanding(
        billing_pb2.GetOutstandingRequest(loan_id=loan_id, owner=owner), metadata=md
    )


def status(api, md, as_of: dt.date | str = "", loan_id="L1"):
    as_of = as_of.isoformat() if isinstance(as_of, dt.date) else as_of
    return api.billing.GetDelinquencyStatus(
        billing_pb2.GetDelinquencyStatusRequest(loan_id=loan_id, as_of=as_of), metadata=md
    )


def history(api, md, loan_id="L1", owner=""):
    reply = api.billing.GetDelinquencyHistory(
        billing_pb2.GetDelinquencyHistoryRequest(loan_id=loan_id, owner=owner), metadata=md
    )
    return [(p.start_date, p.end_date, p.max_missed_payments) for p in reply.periods]


def iso(day: dt.date) -> str:
    return day.isoformat()


def refused(call, *args, **kwargs) -> grpc.RpcError:
    """Make a call that must fail; its error."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


# -- value dates ------------------------------------------------------------------


def test_a_borrowers_payment_is_valued_today_and_an_operators_collection_when_it_was_received(api, people):
    borrower, borrower_id, operator = people
    start = days_ago(70)  # installment k due start + 7k
    create(api, borrower, start=start)
    own = pay(api, borrower, "110000.00")
    assert (own.value_date, own.first_week, own.last_week) == (iso(today()), 1, 1)
    field = pay(api, operator, "220000.00", owner=borrower_id, value_date=days_ago(3), request_id="visit-7")
    assert (field.value_date, field.first_week, field.last_week, field.outstanding_balance) == (
        iso(days_ago(3)),
        2,
        3,
        "5170000.00",
    )
    # The operator's collection is the borrower's payment: listed on the borrower's loan.
    listed = api.billing.ListPayments(
        billing_pb2.ListPaymentsRequest(loan_id="L1"), metadata=borrower
    ).payments
    assert [(p.amount, p.value_date, p.reversed) for p in listed] == [
        ("110000.00", iso(today()), False),
        ("220000.00", iso(days_ago(3)), False),
    ]


def test_owner_and_value_date_are_for_operators_only(api, people):
    borrower, borrower_id, _operator = people
    create(api, borrower, start=days_ago(30))
    for extra in ({"value_date": days_ago(1)}, {"owner": borrower_id}):
        err = refused(pay, api, borrower, "110000.00", **extra)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    assert outstanding(api, borrower).paid_amount == "0.00"


@pytest.mark.parametrize(
    "value_date,fragment",
    [
        ("tomorrow", "must be between"),
        ("before-start", "start date"),
        ("2026-02-30", "not a real calendar date"),
        ("30/11/2026", "YYYY-MM-DD"),
    ],
)
def test_value_dates_in_the_future_before_the_start_or_malformed_are_refused(
    api, people, value_date, fragment
):
    borrower, borrower_id, operator = people
    start = days_ago(30)
    create(api, borrower, start=start)
    value = {
        "tomorrow": iso(today() + dt.timedelta(days=1)),
        "before-start": iso(start - dt.timedelta(days=1)),
    }.get(value_date, value_date)
    err = refused(pay, api, operator, "110000.00", owner=borrower_id, value_date=value)
    assert_invalid(err, "value_date")
    assert fragment in err.details()
    assert outstanding(api, borrower).paid_amount == "0.00"


def test_an_unknown_owner_is_not_found(api, people):
    _borrower, _borrower_id, operator = people
    err = refused(pay, api, operator, "110000.00", owner=str(uuid.uuid4()))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_idempotency_compares_the_value_date_only_when_the_retry_states_it(api, people):
    borrower, borrower_id, operator = people
    create(api, borrower, start=days_ago(30))
    first = pay(api, operator, "110000.00", owner=borrower_id, value_date=days_ago(2), request_id="c-1")
    same = pay(api, operator, "110000.00", owner=borrower_id, request_id="c-1")  # value date left out
    again = pay(api, operator, "110000.00", owner=borrower_id, value_date=days_ago(2), request_id="c-1")
    assert first.payment_id == same.payment_id == again.payment_id
    err = refused(
        pay, api, operator, "110000.00", owner=borrower_id, value_date=days_ago(1), request_id="c-1"
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert outstanding(api, borrower).paid_amount == "110000.00"


def test_a_back_dated_collection_changes_the_past_standing_from_its_value_date(api, people):
    borrower, borrower_id, operator = people
    start = days_ago(30)  # due: start+7 (days_ago 23), +14 (16), +21 (9), +28 (2)
    create(api, borrower, start=start)
    before = status(api, borrower, days_ago(5))
    assert (before.is_delinquent, before.missed_payments, before.days_past_due) == (True, 3, 18)
    # A field collection of three installments received 10 days ago, entered now.
    pay(api, operator, "330000.00", owner=borrower_id, value_date=days_ago(10))
    after = status(api, borrower, days_ago(5))
    assert (after.is_delinquent, after.missed_payments, after.overdue_amount, after.next_due_date) == (
        False,
        0,
        "0.00",
        iso(days_ago(2)),
    )
    # Before its value date the loan was as delinquent as it was.
    earlier = status(api, borrower, days_ago(11))
    assert (earlier.is_delinquent, earlier.missed_payments, earlier.days_past_due) == (True, 2, 12)
    assert history(api, borrower) == [(iso(days_ago(15)), iso(days_ago(10)), 2)]


# -- reversal -----------------------------------------------------------------------


def test_reversal_takes_a_payment_back_and_keeps_the_record(api, people):
    borrower, _borrower_id, operator = people
    create(api, borrower, start=today())
    p1 = pay(api, borrower, "110000.00", request_id="p1")
    p2 = pay(api, borrower, "220000.00", request_id="p2")
    reversed_ = reverse(api, operator, p1.payment_id, "the transfer bounced")
    assert (reversed_.payment_id, reversed_.reversed, reversed_.reversal_reason) == (
        p1.payment_id,
        True,
        "the transfer bounced",
    )
    assert reversed_.HasField("reverse_time")
    money = outstanding(api, borrower)
    assert (
        money.paid_amount,
        money.outstanding_balance,
        money.installments_paid,
        money.unapplied_amount,
    ) == (
        "220000.00",
        "5280000.00",
        2,
        "0.00",
    )
    listed = api.billing.ListPayments(
        billing_pb2.ListPaymentsRequest(loan_id="L1"), metadata=borrower
    ).payments
    assert [(p.payment_id, p.reversed, p.reversal_reason) for p in listed] == [
        (p1.payment_id, True, "the transfer bounced"),
        (p2.payment_id, False, ""),
    ]
    # p2 is re-applied to the oldest installments: it now completes weeks 1 and 2.
    schedule = api.billing.GetSchedule(billing_pb2.GetScheduleRequest(loan_id="L1"), metadata=borrower)
    assert [(i.week, i.paid, i.payment_id) for i in schedule.installments[:3]] == [
        (1, True, p2.payment_id),
        (2, True, p2.payment_id),
        (3, False, ""),
    ]
    # Reversing again changes nothing and writes no second audit row.
    again = reverse(api, operator, p1.payment_id, "another reason")
    assert (again.reversal_reason, again.reverse_time) == ("the transfer bounced", reversed_.reverse_time)
    assert outstanding(api, borrower).paid_amount == "220000.00"
    rows = AuditEvent.select().where(AuditEvent.event == "payment.reverse").count()
    assert rows == 1


def test_reversing_the_payoff_reopens_the_loan_and_may_leave_an_unapplied_amount(api, people):
    borrower, _borrower_id, operator = people
    create(api, borrower, principal="1000001", start=today())
    bulk = pay(api, borrower, "1078000.98")  # weeks 1-49: 49 x 22,000.02
    final = pay(api, borrower, "22000.12")  # week 50
    loan = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="L1"), metadata=borrower)
    assert loan.state == billing_pb2.LOAN_STATE_PAID_OFF
    reverse(api, operator, bulk.payment_id)
    loan = api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id="L1"), metadata=borrower)
    assert (loan.state, loan.paid_amount, loan.installments_paid, loan.unapplied_amount) == (
        billing_pb2.LOAN_STATE_ACTIVE,
        "22000.12",
        1,
        "0.10",
    )
    assert outstanding(api, borrower).unapplied_amount == "0.10"
    # The next accepted amount brings the total exactly to the end of an installment.
    err = refused(pay, api, borrower, "22000.02")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "one installment is 21999.92" in err.details() and "the full payoff is 1078000.98" in err.details()
    nxt = pay(api, borrower, "21999.92")
    assert (nxt.first_week, nxt.last_week, nxt.outstanding_balance) == (2, 2, "1056001.06")
    schedule = api.billing.GetSchedule(billing_pb2.GetScheduleRequest(loan_id="L1"), metadata=borrower)
    assert [(i.week, i.payment_id) for i in schedule.installments[:3]] == [
        (1, final.payment_id),
        (2, nxt.payment_id),
        (3, ""),
    ]


def test_the_overdue_amount_is_what_makes_the_loan_current_after_a_reversal_leaves_part_paid(api, people):
    """Found by an outside client: status said 33.34 overdue while the balance was 33.33.

    100.00 at rate 0 over 3 weeks: 33.33, 33.33, 33.34, all due 22 days after the start. 33.33
    then 66.67 pay it off; reversing the 33.33 leaves 66.67: weeks 1-2 (66.66) and 0.01 of week 3.
    """
    borrower, _borrower_id, operator = people
    create(api, borrower, principal="100", start=days_ago(22), term_weeks=3, interest_rate="0")
    first = pay(api, borrower, "33.33")
    pay(api, borrower, "66.67")
    reverse(api, operator, first.payment_id)
    assert (outstanding(api, borrower).outstanding_balance, outstanding(api, borrower).unapplied_amount) == (
        "33.33",
        "0.01",
    )
    status = api.billing.GetDelinquencyStatus(
        billing_pb2.GetDelinquencyStatusRequest(loan_id="L1"), metadata=borrower
    )
    assert (status.missed_payments, status.overdue_amount, status.next_due_date) == (
        1,
        "33.33",
        days_ago(1).isoformat(),
    )
    # What the status calls overdue is what the service accepts to make the loan current.
    assert pay(api, borrower, status.overdue_amount).outstanding_balance == "0.00"


def test_reversal_is_for_operators_and_unknown_or_malformed_payments_are_refused(api, people):
    borrower, _borrower_id, operator = people
    create(api, borrower, start=today())
    payment = pay(api, borrower, "110000.00")
    err = refused(reverse, api, borrower, payment.payment_id)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(reverse, api, operator, str(uuid.uuid4())).code() == grpc.StatusCode.NOT_FOUND
    assert_invalid(refused(reverse, api, operator, "not-a-payment"), "payment_id")
    assert_invalid(refused(reverse, api, operator, ""), "payment_id")
    for reason in ("", "   ", "x" * 501, "bad\x00reason", "two\nlines", "a\ttab", "bell\x07", "del\x7f"):
        assert_invalid(refused(reverse, api, operator, payment.payment_id, reason), "reason")
    assert outstanding(api, borrower).paid_amount == "110000.00"
    # Text in any script is fine, joiners and direction marks included (format characters, not control).
    reason = "\u200fتحويل مرتد 👨\u200d👩\u200d👧"
    assert reverse(api, operator, payment.payment_id, reason).reversal_reason == reason
    longest = pay(api, borrower, "110000.00")
    assert reverse(api, operator, longest.payment_id, "x" * 500).reversed


def test_a_reversal_rewrites_the_past_standing_and_the_history(api, people):
    borrower, _borrower_id, operator = people
    start = days_ago(30)  # due: days_ago 23, 16, 9, 2
    create(api, borrower, start=start)
    paid = pay(api, borrower, "440000.00")  # today: weeks 1-4
    assert history(api, borrower) == [(iso(days_ago(15)), iso(today()), 4)]
    assert not status(api, borrower).is_delinquent
    reverse(api, operator, paid.payment_id)
    now = status(api, borrower)
    assert (now.is_delinquent, now.missed_payments, now.days_past_due) == (True, 4, 23)
    assert history(api, borrower) == [(iso(days_ago(15)), "", 4)]


# -- as of a date, history, report ----------------------------------------------------


def test_status_as_of_a_past_date_counts_payments_by_value_date(api, people):
    borrower, borrower_id, operator = people
    start = days_ago(50)  # due: days_ago 43, 36, 29, 22, 15, 8, 1
    create(api, borrower, start=start)
    pay(api, operator, "110000.00", owner=borrower_id, value_date=days_ago(40))
    pay(api, borrower, "330000.00")  # today
    as_of = status(api, borrower, days_ago(20))  # due before: weeks 1-4; paid by then: week 1
    assert (as_of.missed_payments, as_of.overdue_amount, as_of.days_past_due, as_of.next_due_date) == (
        3,
        "330000.00",
        16,
        iso(days_ago(36)),
    )
    now = status(api, borrower)  # due before today: weeks 1-7; paid: 4
    assert (now.missed_payments, now.days_past_due, now.next_due_date) == (3, 15, iso(days_ago(15)))


def test_list_delinquent_as_of_a_past_date_judges_each_loan_as_it_stood_then(api, people):
    borrower, borrower_id, operator = people
    start = days_ago(60)  # due: days_ago 53, 46, 39, 32, 25, 18, 11, 4
    for loan_id in ("cured", "still", "paid-late"):
        create(api, borrower, loan_id=loan_id, start=start)
    pay(api, borrower, "880000.00", loan_id="cured")  # today: all 8 due installments
    pay(api, operator, "330000.00", loan_id="paid-late", owner=borrower_id, value_date=days_ago(33))
    as_of = days_ago(30)  # due before: weeks 1-4
    listed = api.billing.ListDelinquentLoans(
        billing_pb2.ListDelinquentLoansRequest(as_of=iso(as_of)), metadata=borrower
    ).loans
    # "paid-late" had paid weeks 1-3 by then: one missed, not delinquent. The others missed 4.
    assert [(s.loan_id, s.missed_payments, s.days_past_due) for s in listed] == [
        ("cured", 4, 23),
        ("still", 4, 23),
    ]
    today_list = api.billing.ListDelinquentLoans(billing_pb2.ListDelinquentLoansRequest(), metadata=borrower)
    assert [(s.loan_id, s.missed_payments) for s in today_list.loans] == [("still", 8), ("paid-late", 5)]


def test_history_and_report_are_owner_scoped_and_operators_can_ask_for_anyone(api, people):
    borrower, borrower_id, operator = people
    create(api, borrower, start=days_ago(20))  # due days_ago 13, 6: delinquent since days_ago 5
    assert history(api, borrower) == [(iso(days_ago(5)), "", 2)]
    assert history(api, operator, owner=borrower_id) == [(iso(days_ago(5)), "", 2)]
    assert refused(history, api, borrower, owner=borrower_id).code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(history, api, operator).code() == grpc.StatusCode.NOT_FOUND  # not the operator's
    own = api.billing.GetPortfolioReport(billing_pb2.GetPortfolioReportRequest(), metadata=borrower)
    assert (own.loans, own.outstanding_amount, own.twp90, own.tkb90) == (1, "5500000.00", "0.00", "100.00")
    assert [(c.quality, c.loans, c.outstanding_amount) for c in own.categories] == [
        (billing_pb2.FUNDING_QUALITY_CURRENT, 0, "0.00"),
        (billing_pb2.FUNDING_QUALITY_SPECIAL_MENTION, 1, "5500000.00"),  # 13 days past due
        (billing_pb2.FUNDING_QUALITY_SUBSTANDARD, 0, "0.00"),
        (billing_pb2.FUNDING_QUALITY_DOUBTFUL, 0, "0.00"),
        (billing_pb2.FUNDING_QUALITY_LOSS, 0, "0.00"),
    ]
    mine = api.billing.GetPortfolioReport(billing_pb2.GetPortfolioReportRequest(), metadata=operator)
    assert (mine.loans, mine.outstanding_amount, mine.twp90, mine.tkb90) == (0, "0.00", "0.00", "100.00")
    book = api.billing.GetPortfolioReport(
        billing_pb2.GetPortfolioReportRequest(all_owners=True), metadata=operator
    )
    assert book.loans >= 1
    err = refused(
        api.billing.GetPortfolioReport,
        billing_pb2.GetPortfolioReportRequest(all_owners=True),
        metadata=borrower,
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = refused(
        api.billing.GetPortfolioReport,
        billing_pb2.GetPortfolioReportRequest(as_of="2026-13-01"),
        metadata=borrower,
    )
    assert_invalid(err, "as_of")


# -- concurrency --------------------------------------------------------------------------


def recomputed_summary(loan_id: str, owner_user_pk: int) -> dict:
    """What a loan's stored summary must be, recomputed from its payments alone."""
    loan = Loan.get((Loan.loan_id == loan_id) & (Loan.owner == owner_user_pk))
    payments = list(Payment.select().where(Payment.loan == loan.id).order_by(Payment.value_date, Payment.id))
    counting = [p for p in payments if p.reverse_time_us is None]
    running, totals = 0, []
    for p in counting:
        running += p.amount_cents
        totals.append(p.running_paid_cents)
    expected_totals = []
    acc = 0
    for p in counting:
        acc += p.amount_cents
        expected_totals.append(acc)
    paid_weeks = (
        loan.term_weeks
        if running >= loan.total_cents
        else min(loan.term_weeks - 1, running // loan.weekly_cents)
    )
    return {
        "stored": (loan.paid_cents, loan.paid_weeks, loan.last_value_date, totals),
        "recomputed": (
            running,
            paid_weeks,
            counting[-1].value_date if counting else None,
            expected_totals,
        ),
    }


@pytest.mark.settings(rate_limit_user_per_second=0, rate_limit_peer_per_second=0)
def test_reversals_racing_payments_leave_the_summary_equal_to_the_payments(api, people):
    borrower, borrower_id, operator = people
    create(api, borrower, start=days_ago(100))
    base = [pay(api, borrower, "110000.00", request_id=f"base-{i}") for i in range(6)]
    target = f"127.0.0.1:{api.server.port}"
    start = threading.Barrier(8)
    outcomes: list = []

    def payer(i: int) -> None:
        with grpc.insecure_channel(target) as channel:
            from lending.v1 import billing_pb2_grpc

            stub = billing_pb2_grpc.BillingServiceStub(channel)
            start.wait()
            for n in range(4):
                try:
                    request = billing_pb2.MakePaymentRequest(
                        loan_id="L1", amount="110000.00", request_id=f"race-{i}-{n}"
                    )
                    if n % 2:
                        request.owner, request.value_date = borrower_id, iso(days_ago(60 + n))
                        md = operator
                    else:
                        md = borrower
                    outcomes.append(stub.MakePayment(request, metadata=md, timeout=60).payment_id)
                except grpc.RpcError as err:
                    outcomes.append(err.code())

    def reverser(payment) -> None:
        with grpc.insecure_channel(target) as channel:
            from lending.v1 import billing_pb2_grpc

            stub = billing_pb2_grpc.BillingServiceStub(channel)
            start.wait()
            stub.ReversePayment(
                billing_pb2.ReversePaymentRequest(payment_id=payment.payment_id, reason="race"),
                metadata=operator,
                timeout=60,
            )

    threads = [threading.Thread(target=payer, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=reverser, args=(p,)) for p in base[:4]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(o, str) for o in outcomes), outcomes  # the server serialized them all
    owner_pk = Loan.get(Loan.loan_id == "L1").owner_id
    check = recomputed_summary("L1", owner_pk)
    assert check["stored"] == check["recomputed"]
    money = outstanding(api, borrower)
    assert money.paid_amount == f"{(6 - 4 + 16) * 110000}.00"
    # The stored spans are what the payments give: rebuilding them changes nothing.
    spans_before = sorted(
        (s.month, s.start_date, s.end_date)
        for s in DelinquencySpan.select().where(DelinquencySpan.loan == Loan.get(Loan.loan_id == "L1").id)
    )
    assert spans_before == _rebuilt_spans("L1")


def _rebuilt_spans(loan_id: str) -> list:
    from lending_grpc.core import standing
    from lending_grpc.core.billing import terms_of

    loan = Loan.get(Loan.loan_id == loan_id)
    running = [
        (p.value_date, p.running_paid_cents)
        for p in Payment.select()
        .where((Payment.loan == loan.id) & Payment.reverse_time_us.is_null())
        .order_by(Payment.value_date, Payment.id)
    ]
    spans = []
    for span in standing.delinquent_spans(terms_of(loan), standing.steps(running)):
        if span.end is None:
            continue
        month = span.start.replace(day=1)
        while month < span.end:
            spans.append((month, span.start, span.end))
            month = (month + dt.timedelta(days=32)).replace(day=1)
    return sorted(spans)
