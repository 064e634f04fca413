"""Reference figures: a small book built by hand over real gRPC, and an independent day-by-day oracle.

Every expected figure here is worked out from the rules of DESIGN.md
sections 1 and 5 (in the comments, and by a few lines of plain Python in
the oracle below), never by calling the code under test:

- installment k is due on start + 7k days; total = principal * (1 + rate)
  rounded half up; weekly = total / term rounded half up; the final
  installment is total - weekly * (term - 1);
- as of a day X, only non-reversed payments valued on or before X count;
  they cover whole installments oldest first; an installment is missed when
  it is due before X and not covered; days past due = X - due date of the
  oldest missed one; delinquent = 2 or more missed;
- the report counts loans started on or before X that still owe something at
  the end of X, by days past due: CURRENT 0, SPECIAL_MENTION 1-30,
  SUBSTANDARD 31-60, DOUBTFUL 61-90, LOSS over 90;
  twp90 = 100 * LOSS / all, half up to 2 places; tkb90 = 100 - twp90;
- a delinquency period runs from the first delinquent day (the day after the
  second unpaid installment's due date) to the first day current again.

The loans used (all figures to the cent):
- 5,000,000.00 at 0.10 over 50 weeks: total 5,500,000.00, installments 110,000.00.
- 2,000,000.00 at 0.10 over 50 weeks: total 2,200,000.00, installments 44,000.00.
- 1,000,001.00 at 0.10 over 50 weeks: total 1,100,001.10, 49 x 22,000.02 and a final 22,000.12
  (22,000.02 * 49 = 1,078,000.98; 1,100,001.10 - 1,078,000.98 = 22,000.12).
- 1,000,000.00 at 0.0755 over 7 weeks: total 1,075,500.00; 1,075,500 / 7 = 153,642.857... -> 153,642.86;
  final 1,075,500.00 - 6 * 153,642.86 (921,857.16) = 153,642.84.
- 500,000.00 at 0.0755 over 7 weeks: total 537,750.00; 537,750 / 7 = 76,821.428... -> 76,821.43;
  final 537,750.00 - 6 * 76,821.43 (460,928.58) = 76,821.42.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from decimal import ROUND_HALF_UP, Decimal

import pytest
from helpers import PASSWORD, grant_operator, login, register, today
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lending.v1 import billing_pb2

# Rate limits answer floods, which these tests are not; every figure must come from the rules.
pytestmark = pytest.mark.settings(rate_limit_user_per_second=0, rate_limit_peer_per_second=0)


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    user_id: str
    md: tuple


def person(api, prefix: str, operator: bool = False) -> Person:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    user = register(api, name)
    if operator:
        grant_operator(api, name)
    tokens = login(api, name, PASSWORD)
    return Person(name, user.user_id, (("authorization", f"Bearer {tokens.access_token}"),))


def create(api, who: Person, loan_id: str, principal: str, start: str, term_weeks: int = 0, rate: str = ""):
    return api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(
            loan_id=loan_id,
            principal_amount=principal,
            start_date=start,
            term_weeks=term_weeks,
            interest_rate=rate,
        ),
        metadata=who.md,
    )


def own_payment(api, who: Person, loan_id: str, amount: str) -> billing_pb2.Payment:
    """The borrower's own payment: valued today."""
    return api.billing.MakePayment(
        billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=amount), metadata=who.md
    )


def collection(api, operator: Person, borrower: Person, loan_id: str, amount: str, value_date: str):
    """A field officer's collection on the borrower's loan, received on ``value_date``."""
    return api.billing.MakePayment(
        billing_pb2.MakePaymentRequest(
            loan_id=loan_id, amount=amount, owner=borrower.user_id, value_date=value_date
        ),
        metadata=operator.md,
    )


def reverse(api, operator: Person, payment_id: str, reason: str = "the transfer bounced"):
    return api.billing.ReversePayment(
        billing_pb2.ReversePaymentRequest(payment_id=payment_id, reason=reason), metadata=operator.md
    )


def status(api, who: Person, loan_id: str, as_of: str = "") -> tuple:
    s = api.billing.GetDelinquencyStatus(
        billing_pb2.GetDelinquencyStatusRequest(loan_id=loan_id, as_of=as_of), metadata=who.md
    )
    return (s.is_delinquent, s.missed_payments, s.overdue_amount, s.days_past_due, s.next_due_date, s.as_of)


def history(api, who: Person, loan_id: str, owner: str = "") -> list[tuple]:
    reply = api.billing.GetDelinquencyHistory(
        billing_pb2.GetDelinquencyHistoryRequest(loan_id=loan_id, owner=owner), metadata=who.md
    )
    assert reply.loan_id == loan_id
    return [(p.start_date, p.end_date, p.max_missed_payments) for p in reply.periods]


QUALITIES = ("CURRENT", "SPECIAL_MENTION", "SUBSTANDARD", "DOUBTFUL", "LOSS")


def report(api, who: Person, as_of: str = "", all_owners: bool = False) -> dict:
    r = api.billing.GetPortfolioReport(
        billing_pb2.GetPortfolioReportRequest(as_of=as_of, all_owners=all_owners), metadata=who.md
    )
    return {
        "as_of": r.as_of,
        "loans": r.loans,
        "outstanding": r.outstanding_amount,
        "categories": [
            (
                billing_pb2.FundingQuality.Name(c.quality).removeprefix("FUNDING_QUALITY_"),
                c.loans,
                c.outstanding_amount,
            )
            for c in r.categories
        ],
        "twp90": r.twp90,
        "tkb90": r.tkb90,
    }


def expected_report(as_of: str, loans: int, outstanding: str, categories: list, twp90: str, tkb90: str):
    """``categories``: (loans, outstanding) for CURRENT, SPECIAL_MENTION, SUBSTANDARD, DOUBTFUL, LOSS."""
    return {
        "as_of": as_of,
        "loans": loans,
        "outstanding": outstanding,
        "categories": [(q, n, amount) for q, (n, amount) in zip(QUALITIES, categories, strict=True)],
        "twp90": twp90,
        "tkb90": tkb90,
    }


def delinquent(api, who: Person, as_of: str, all_owners: bool = False) -> list[tuple]:
    loans, token = [], ""
    while True:
        page = api.billing.ListDelinquentLoans(
            billing_pb2.ListDelinquentLoansRequest(
                as_of=as_of, all_owners=all_owners, page_size=3, page_token=token
            ),
            metadata=who.md,
        )
        loans += [(s.loan_id, s.missed_payments, s.days_past_due, s.owner, s.as_of) for s in page.loans]
        token = page.next_page_token
        if not token:
            return loans


# == the reference book ===================================================================
#
# The report date D is ten days ago, so that a borrower's own payments (valued today, T = D+10)
# must not count as of D but must as of T. d(n) is the date D+n. Each loan's due dates are listed
# as offsets from D.


def test_reference_book_report_history_and_lists_to_the_cent(api):
    T = today()
    D = T - dt.timedelta(days=10)

    def d(n: int) -> str:
        return (D + dt.timedelta(days=n)).isoformat()

    b1, b2 = person(api, "b1"), person(api, "b2")
    op = person(api, "op", operator=True)

    # -- the loans, in creation order (ListDelinquentLoans breaks ties by it) --------------
    # TIE (b2): 2,000,000.00, start D-37: due D-30, D-23, D-16, D-9, D-2, D+5, D+12. Nothing paid.
    #   Created first: as of D it ties with L30 (2nd unpaid due D-23) and must be listed before it.
    create(api, b2, "TIE", "2000000", d(-37))
    # L00 (b1): 5,000,000.00, start D-21: due D-14, D-7, D, D+7, D+14.
    #   Collected 2 installments (220,000.00) valued D-7. As of D: 2 due before D, 2 paid,
    #   week 3 is due ON D, which is not before D: 0 days past due.
    create(api, b1, "L00", "5000000", d(-21))
    # STARTD (b1): 1,000,001.00, starts on D itself (counts in the report as of D): due D+7, D+14.
    create(api, b1, "STARTD", "1000001", d(0))
    # L01 (b1): 2,000,000.00, start D-8: due D-1, D+6, D+13. Pays 44,000.00 itself today.
    create(api, b1, "L01", "2000000", d(-8))
    # L30 (b1): 1,000,001.00, start D-51: due D-44, D-37, D-30, D-23, D-16, D-9, D-2, D+5, D+12.
    #   Collected 2 installments (2 x 22,000.02 = 44,000.04) valued D-40.
    create(api, b1, "L30", "1000001", d(-51))
    # CURE (b1): 5,000,000.00, start D-40: due D-33, D-26, D-19, D-12, D-5, D+2, D+9, D+16.
    #   Pays 220,000.00 itself today; later an operator enters a 440,000.00 collection valued D-8.
    create(api, b1, "CURE", "5000000", d(-40))
    # L31 (b1): 1,000,000.00 at 0.0755 over 7 weeks, start D-38: due D-31, D-24, D-17, D-10, D-3,
    #   D+4, D+11. Pays 4 x 153,642.86 = 614,571.44 itself today.
    rate_loan = create(api, b1, "L31", "1000000", d(-38), term_weeks=7, rate="0.0755")
    assert (rate_loan.total_amount, rate_loan.weekly_payment, rate_loan.final_payment) == (
        "1075500.00",
        "153642.86",
        "153642.84",
    )
    # R (b1): 2,000,000.00, start D-82: due D-75, D-68, D-61, D-54, D-47, D-40, D-33, D-26, D-19,
    #   D-12, D-5, D+2, D+9, D+16. Collections p1 (88,000.00, D-70) and p2 (88,000.00, D-50);
    #   later p1 is reversed.
    create(api, b1, "R", "2000000", d(-82))
    # L91 (b1): 5,000,000.00, start D-98: due D-91, D-84, ..., D-7 (week 13), D (14), D+7 (15),
    #   D+14 (16). Pays 110,000.00 itself today.
    create(api, b1, "L91", "5000000", d(-98))
    # PAID (b1): 500,000.00 at 0.0755 over 7 weeks, start D-60: due D-53, D-46, D-39, D-32, D-25,
    #   D-18, D-11. Collected 3 x 76,821.43 = 230,464.29 valued D-44, then the rest
    #   (537,750.00 - 230,464.29 = 307,285.71 = 3 x 76,821.43 + 76,821.42) valued D-30.
    paid_loan = create(api, b1, "PAID", "500000", d(-60), term_weeks=7, rate="0.0755")
    assert (paid_loan.total_amount, paid_loan.weekly_payment, paid_loan.final_payment) == (
        "537750.00",
        "76821.43",
        "76821.42",
    )
    # L60 (b2): 5,000,000.00, start D-67: due D-60, D-53, ..., D-4 (week 9), D+3, D+10. Nothing paid.
    create(api, b2, "L60", "5000000", d(-67))
    # L90 (b2): 1,000,001.00, start D-97: due D-90, D-83, ..., D-6 (week 13), D+1, D+8, D+15.
    create(api, b2, "L90", "1000001", d(-97))
    # L123 (b2): 2,000,000.00, start D-200: week k due D-200+7k (week 10 D-130, 11 D-123, 12 D-116,
    #   28 D-4, 29 D+3, 30 D+10). Collected 10 installments (440,000.00) valued D-150.
    create(api, b2, "L123", "2000000", d(-200))
    # LATE (b2): 2,000,000.00, starts D+3 (after D): week 1 due D+10 = today.
    create(api, b2, "LATE", "2000000", d(3))

    # -- payments ----------------------------------------------------------------------------
    collection(api, op, b1, "L00", "220000.00", d(-7))
    own_payment(api, b1, "L01", "44000.00")
    collection(api, op, b1, "L30", "44000.04", d(-40))
    own_today = own_payment(api, b1, "CURE", "220000.00")
    own_payment(api, b1, "L31", "614571.44")
    p1 = collection(api, op, b1, "R", "88000.00", d(-70))
    p2 = collection(api, op, b1, "R", "88000.00", d(-50))
    own_payment(api, b1, "L91", "110000.00")
    collection(api, op, b1, "PAID", "230464.29", d(-44))
    payoff = collection(api, op, b1, "PAID", "307285.71", d(-30))
    assert payoff.outstanding_balance == "0.00"
    collection(api, op, b2, "L123", "440000.00", d(-150))

    # -- before the correction and the back-dated collection ---------------------------------
    # As of D, before: CURE has paid nothing by D (its own payment is valued T): due before D weeks
    # 1-5, oldest missed due D-33 -> 33 days past due, SUBSTANDARD, 5,500,000.00.
    # R has paid 4 (p1 + p2): oldest missed week 5, due D-47 -> 47 days, SUBSTANDARD,
    # 2,200,000.00 - 176,000.00 = 2,024,000.00.
    # CURRENT:         L00 5,280,000.00 + STARTD 1,100,001.10                      = 6,380,001.10 (2)
    # SPECIAL_MENTION: L01 2,200,000.00 + L30 1,056,001.06 + TIE 2,200,000.00      = 5,456,001.06 (3)
    # SUBSTANDARD:     CURE 5,500,000.00 + L31 1,075,500.00 + L60 5,500,000.00
    #                  + R 2,024,000.00                                            = 14,099,500.00 (4)
    # DOUBTFUL:        L90 1,100,001.10                                            = 1,100,001.10 (1)
    # LOSS:            L91 5,500,000.00 + L123 1,760,000.00                        = 7,260,000.00 (2)
    # all: 6,380,001.10 + 5,456,001.06 + 14,099,500.00 + 1,100,001.10 + 7,260,000.00 = 34,295,503.26
    # twp90 = 100 * 7,260,000.00 / 34,295,503.26 = 21.1689... -> 21.17; tkb90 = 78.83
    assert report(api, op, d(0), all_owners=True) == expected_report(
        d(0),
        12,
        "34295503.26",
        [(2, "6380001.10"), (3, "5456001.06"), (4, "14099500.00"), (1, "1100001.10"), (2, "7260000.00")],
        "21.17",
        "78.83",
    )
    # CURE: 5 due before D (to D-5), none paid by D: 5 x 110,000.00, D - (D-33) = 33.
    assert status(api, b1, "CURE", d(0)) == (True, 5, "550000.00", 33, d(-33), d(0))
    # R: 11 due before D (to D-5), 4 paid: 7 x 44,000.00, D - (D-47) = 47.
    assert status(api, b1, "R", d(0)) == (True, 7, "308000.00", 47, d(-47), d(0))
    # CURE: paid nothing until T, delinquent from D-25 (day after week 2, due D-26); on D+9
    # six were due (week 7 due D+9 is not before D+9) and none paid; at T 7 due, 2 paid: 5.
    assert history(api, b1, "CURE") == [(d(-25), "", 6)]
    # R before the reversal: paid 2 from D-70, 4 from D-50.
    #   2 paid: missed >= 2 once 4 are due, from D-53 (week 4 due D-54); D-50: 4 paid, 4 due -> current.
    #   4 paid: missed >= 2 once 6 are due, from D-39 (week 6 due D-40); at T 13 due (week 13 D+9), 9.
    assert history(api, b1, "R") == [(d(-53), d(-50), 2), (d(-39), "", 9)]

    # -- the back-dated collection that cures CURE in the past, and the reversal -------------
    # 440,000.00 brings the total (220,000.00) exactly to the end of week 6 (660,000.00): accepted.
    cure = collection(api, op, b1, "CURE", "440000.00", d(-8))
    assert (cure.value_date, cure.outstanding_balance) == (d(-8), "4840000.00")
    taken_back = reverse(api, op, p1.payment_id)
    assert (taken_back.payment_id, taken_back.amount, taken_back.value_date, taken_back.reversed) == (
        p1.payment_id,
        "88000.00",
        d(-70),
        True,
    )
    # By value date, the collection (D-8) now completes weeks 1-4 and the own payment (T) weeks 5-6.
    schedule = api.billing.GetSchedule(billing_pb2.GetScheduleRequest(loan_id="CURE"), metadata=b1.md)
    assert [(i.week, i.paid, i.payment_id) for i in schedule.installments[:7]] == [
        (1, True, cure.payment_id),
        (2, True, cure.payment_id),
        (3, True, cure.payment_id),
        (4, True, cure.payment_id),
        (5, True, own_today.payment_id),
        (6, True, own_today.payment_id),
        (7, False, ""),
    ]
    # R: p2 alone now completes weeks 1-2; 88,000.00 paid, 2,112,000.00 outstanding, nothing unapplied.
    schedule = api.billing.GetSchedule(billing_pb2.GetScheduleRequest(loan_id="R"), metadata=b1.md)
    assert [(i.week, i.paid, i.payment_id) for i in schedule.installments[:3]] == [
        (1, True, p2.payment_id),
        (2, True, p2.payment_id),
        (3, False, ""),
    ]
    money = api.billing.GetOutstanding(billing_pb2.GetOutstandingRequest(loan_id="R"), metadata=b1.md)
    assert (
        money.paid_amount,
        money.outstanding_balance,
        money.installments_paid,
        money.unapplied_amount,
    ) == (
        "88000.00",
        "2112000.00",
        2,
        "0.00",
    )

    # -- each loan as of D --------------------------------------------------------------------
    # (is_delinquent, missed, overdue, days past due, next due date, as_of)
    as_of_d = {
        # 5 due (D-30 .. D-2), none paid: 5 x 44,000.00; D - (D-30) = 30.
        ("TIE", b2): (True, 5, "220000.00", 30, d(-30)),
        # 2 due before D (D-14, D-7), 2 paid; week 3 due on D.
        ("L00", b1): (False, 0, "0.00", 0, d(0)),
        ("STARTD", b1): (False, 0, "0.00", 0, d(7)),
        # week 1 due D-1, unpaid by D (the own payment is valued T): 1 day.
        ("L01", b1): (False, 1, "44000.00", 1, d(-1)),
        # 7 due (to D-2), 2 paid: weeks 3-7 missed, 5 x 22,000.02 = 110,000.10; D - (D-30) = 30.
        ("L30", b1): (True, 5, "110000.10", 30, d(-30)),
        # 5 due (to D-5), 4 paid by D-8: week 5 missed (due D-5): 5 days.
        ("CURE", b1): (False, 1, "110000.00", 5, d(-5)),
        # 5 due (to D-3), none paid by D: 5 x 153,642.86 = 768,214.30; D - (D-31) = 31.
        ("L31", b1): (True, 5, "768214.30", 31, d(-31)),
        # 11 due (to D-5), p2 pays 2: weeks 3-11 missed, 9 x 44,000.00; D - (D-61) = 61.
        ("R", b1): (True, 9, "396000.00", 61, d(-61)),
        # 13 due (to D-7; week 14 is due on D), none paid by D: 13 x 110,000.00; 91 days.
        ("L91", b1): (True, 13, "1430000.00", 91, d(-91)),
        # paid off (D-30): nothing missed, no next due date.
        ("PAID", b1): (False, 0, "0.00", 0, ""),
        # 9 due (to D-4): 9 x 110,000.00; 60 days.
        ("L60", b2): (True, 9, "990000.00", 60, d(-60)),
        # 13 due (to D-6): 13 x 22,000.02 = 286,000.26; 90 days.
        ("L90", b2): (True, 13, "286000.26", 90, d(-90)),
        # 28 due (7k < 200), 10 paid: weeks 11-28, 18 x 44,000.00 = 792,000.00; D - (D-123) = 123.
        ("L123", b2): (True, 18, "792000.00", 123, d(-123)),
        # starts after D: nothing due before D; the first installment is due D+10.
        ("LATE", b2): (False, 0, "0.00", 0, d(10)),
    }
    for (loan_id, who), expected in as_of_d.items():
        assert status(api, who, loan_id, d(0)) == (*expected, d(0)), loan_id

    # -- the report as of D, after the correction ---------------------------------------------
    # PAID owes nothing at the end of D; LATE has not started: both left out.
    # CURRENT (0):           L00 5,500,000.00 - 220,000.00 = 5,280,000.00; STARTD 1,100,001.10
    #                        -> 2 loans, 6,380,001.10
    # SPECIAL_MENTION (1-30): L01 (1) 2,200,000.00; L30 (30) 1,100,001.10 - 44,000.04 = 1,056,001.06;
    #                        CURE (5) 5,500,000.00 - 440,000.00 = 5,060,000.00; TIE (30) 2,200,000.00
    #                        -> 4 loans, 10,516,001.06
    # SUBSTANDARD (31-60):   L31 (31) 1,075,500.00; L60 (60) 5,500,000.00 -> 2 loans, 6,575,500.00
    # DOUBTFUL (61-90):      R (61) 2,200,000.00 - 88,000.00 = 2,112,000.00; L90 (90) 1,100,001.10
    #                        -> 2 loans, 3,212,001.10
    # LOSS (91+):            L91 (91) 5,500,000.00; L123 (123) 2,200,000.00 - 440,000.00 = 1,760,000.00
    #                        -> 2 loans, 7,260,000.00
    # all: 12 loans, 6,380,001.10 + 10,516,001.06 + 6,575,500.00 + 3,212,001.10 + 7,260,000.00
    #      = 33,943,503.26 (= 34,295,503.26 - 440,000.00 collected + 88,000.00 reversed)
    # twp90 = 100 * 7,260,000.00 / 33,943,503.26 = 21.3884... -> 21.39; tkb90 = 78.61
    book_at_d = expected_report(
        d(0),
        12,
        "33943503.26",
        [(2, "6380001.10"), (4, "10516001.06"), (2, "6575500.00"), (2, "3212001.10"), (2, "7260000.00")],
        "21.39",
        "78.61",
    )
    assert report(api, op, d(0), all_owners=True) == book_at_d
    # b1's own: L00, STARTD | L01, L30, CURE | L31 | R | L91
    #   2,200,000.00 + 1,056,001.06 + 5,060,000.00 = 8,316,001.06 special mention;
    #   6,380,001.10 + 8,316,001.06 + 1,075,500.00 + 2,112,000.00 + 5,500,000.00 = 23,383,502.16
    #   twp90 = 100 * 5,500,000.00 / 23,383,502.16 = 23.5208... -> 23.52; tkb90 76.48
    assert report(api, b1, d(0)) == expected_report(
        d(0),
        8,
        "23383502.16",
        [(2, "6380001.10"), (3, "8316001.06"), (1, "1075500.00"), (1, "2112000.00"), (1, "5500000.00")],
        "23.52",
        "76.48",
    )
    # b2's own: TIE | L60 | L90 | L123 = 2,200,000.00 + 5,500,000.00 + 1,100,001.10 + 1,760,000.00
    #   = 10,560,001.10 (and 23,383,502.16 + 10,560,001.10 = 33,943,503.26, the book)
    #   twp90 = 100 * 1,760,000.00 / 10,560,001.10 = 16.6666649... -> 16.67; tkb90 83.33
    assert report(api, b2, d(0)) == expected_report(
        d(0),
        4,
        "10560001.10",
        [(0, "0.00"), (1, "2200000.00"), (1, "5500000.00"), (1, "1100001.10"), (1, "1760000.00")],
        "16.67",
        "83.33",
    )
    # The operator's own book is empty.
    assert report(api, op, d(0)) == expected_report(d(0), 0, "0.00", [(0, "0.00")] * 5, "0.00", "100.00")

    # -- the report as of today (T = D+10): every payment counts ------------------------------
    # CURRENT:         LATE (week 1 due T, not before T) 2,200,000.00                     -> 1
    # SPECIAL_MENTION: L00 (weeks 3-4 missed, T - D = 10) 5,280,000.00;
    #                  STARTD (week 1 due D+7: 3) 1,100,001.10;
    #                  L01 (1 paid, week 2 due D+6 missed: 4) 2,200,000.00 - 44,000.00 = 2,156,000.00;
    #                  CURE (6 paid, week 7 due D+9 missed: 1) 5,500,000.00 - 660,000.00 = 4,840,000.00;
    #                  L31 (4 paid, weeks 5-6 due D-3, D+4 missed: 13)
    #                  1,075,500.00 - 614,571.44 = 460,928.56
    #                  -> 5 loans, 13,836,929.66
    # SUBSTANDARD:     L30 (week 3 due D-30: 40) 1,056,001.06; TIE (week 1 due D-30: 40) 2,200,000.00
    #                  -> 2 loans, 3,256,001.06
    # DOUBTFUL:        R (week 3 due D-61: 71) 2,112,000.00; L60 (week 1 due D-60: 70) 5,500,000.00
    #                  -> 2 loans, 7,612,000.00
    # LOSS:            L91 (1 paid, week 2 due D-84: 94) 5,390,000.00; L90 (100) 1,100,001.10;
    #                  L123 (133) 1,760,000.00 -> 3 loans, 8,250,001.10
    # all: 13 loans, 35,154,931.82 = the 13 totals (37,375,503.30) - every counting payment
    #      (220,000.00 + 44,000.00 + 44,000.04 + 660,000.00 + 614,571.44 + 88,000.00 + 110,000.00
    #       + 440,000.00 = 2,220,571.48)
    # twp90 = 100 * 8,250,001.10 / 35,154,931.82 = 23.4675... -> 23.47; tkb90 76.53
    book_today = expected_report(
        T.isoformat(),
        13,
        "35154931.82",
        [(1, "2200000.00"), (5, "13836929.66"), (2, "3256001.06"), (2, "7612000.00"), (3, "8250001.10")],
        "23.47",
        "76.53",
    )
    assert report(api, op, all_owners=True) == book_today
    assert report(api, op, T.isoformat(), all_owners=True) == book_today

    # -- the report as of D-35: before CURE's collection, before PAID's payoff ---------------
    # Started by D-35: L30, CURE, L31, R, L91, PAID, L60, L90, L123, TIE (not L00, STARTD, L01, LATE).
    # CURRENT:         L30 (2 due, 2 paid) 1,056,001.06; CURE (nothing due yet) 5,500,000.00;
    #                  L31 (nothing due) 1,075,500.00; PAID (3 due, 3 paid by D-44)
    #                  537,750.00 - 230,464.29 = 307,285.71; TIE (nothing due) 2,200,000.00
    #                  -> 5 loans, 10,138,786.77
    # SPECIAL_MENTION: R (6 due, 2 paid, week 3 due D-61: 26) 2,112,000.00;
    #                  L60 (4 due: 25) 5,500,000.00 -> 2 loans, 7,612,000.00
    # SUBSTANDARD:     L91 (8 due: 56) 5,500,000.00; L90 (8 due: 55) 1,100,001.10 -> 2 loans, 6,600,001.10
    # DOUBTFUL:        L123 (23 due, 10 paid, week 11 due D-123: 88) 1,760,000.00 -> 1 loan
    # LOSS:            none -> twp90 0.00, tkb90 100.00
    # all: 10 loans, 10,138,786.77 + 7,612,000.00 + 6,600,001.10 + 1,760,000.00 = 26,110,787.87
    assert report(api, op, d(-35), all_owners=True) == expected_report(
        d(-35),
        10,
        "26110787.87",
        [(5, "10138786.77"), (2, "7612000.00"), (2, "6600001.10"), (1, "1760000.00"), (0, "0.00")],
        "0.00",
        "100.00",
    )

    # -- ListDelinquentLoans: by the due date of the 2nd unpaid installment, then creation ----
    # As of D: L123 (week 12, D-116), L91 (week 2, D-84), L90 (week 2, D-83), R (week 4, D-54),
    # L60 (week 2, D-53), L31 (week 2, D-24), TIE (week 2, D-23), L30 (week 4, D-23): TIE was created
    # before L30.
    at_d = [
        ("L123", 18, 123, b2.user_id),
        ("L91", 13, 91, b1.user_id),
        ("L90", 13, 90, b2.user_id),
        ("R", 9, 61, b1.user_id),
        ("L60", 9, 60, b2.user_id),
        ("L31", 5, 31, b1.user_id),
        ("TIE", 5, 30, b2.user_id),
        ("L30", 5, 30, b1.user_id),
    ]
    assert delinquent(api, op, d(0), all_owners=True) == [(*row, d(0)) for row in at_d]
    assert delinquent(api, b1, d(0)) == [(*row[:3], "", d(0)) for row in at_d if row[3] == b1.user_id]
    assert delinquent(api, b2, d(0)) == [(*row[:3], "", d(0)) for row in at_d if row[3] == b2.user_id]
    # As of D-35: L123 (13 missed, 88 days; week 12 D-116), L91 (8, 56; D-84), L90 (8, 55; D-83),
    # R (4, 26; week 4 D-54), L60 (4, 25; D-53). L30, CURE, L31, PAID and TIE owe nothing overdue.
    at_d35 = [
        ("L123", 13, 88, b2.user_id),
        ("L91", 8, 56, b1.user_id),
        ("L90", 8, 55, b2.user_id),
        ("R", 4, 26, b1.user_id),
        ("L60", 4, 25, b2.user_id),
    ]
    assert delinquent(api, op, d(-35), all_owners=True) == [(*row, d(-35)) for row in at_d35]
    assert delinquent(api, b1, d(-35)) == [(*row[:3], "", d(-35)) for row in at_d35 if row[3] == b1.user_id]

    # -- histories (up to today, T = D+10) ----------------------------------------------------
    histories = {
        # from D-22 (week 2 due D-23); at T 6 due (week 7 due D+12), none paid.
        ("TIE", b2): [(d(-22), "", 6)],
        # 2 paid from D-7; 4 due from D+8 (week 4 due D+7): 2 missed until T at least.
        ("L00", b1): [(d(8), "", 2)],
        # week 1 due D+7 only: never 2 missed.
        ("STARTD", b1): [],
        # weeks 1-2 (D-1, D+6) missed from D+7; the own payment at T leaves 1: current again at T.
        ("L01", b1): [(d(7), d(10), 2)],
        # 2 paid from D-40; 4 due from D-22 (week 4 due D-23); at T 8 due: 6 missed.
        ("L30", b1): [(d(-22), "", 6)],
        # D-25 (week 2 due D-26) to D-8 (4 collected; 4 due: D-12 < D-8), 4 missed on D-11..D-9;
        # then 6 due from D+3 (week 6 due D+2) with 4 paid, until T (6 paid, 7 due): 2 missed.
        ("CURE", b1): [(d(-25), d(-8), 4), (d(3), d(10), 2)],
        # from D-23 (week 2 due D-24); 6 due on D+5..D+9 with none paid; T: 4 paid, still 2 missed.
        ("L31", b1): [(d(-23), "", 6)],
        # with p1 reversed: nothing paid until D-50, from D-67 (week 2 due D-68); p2 leaves 2 of 4
        # due missed on D-50; at T 13 due, 2 paid: 11.
        ("R", b1): [(d(-67), "", 11)],
        # from D-83 (week 2 due D-84); 15 due on D+8..D+9 (week 15 due D+7), none paid; T: 14.
        ("L91", b1): [(d(-83), "", 15)],
        # D-45: 2 due (D-53, D-46), none paid; D-44: 3 collected. Then paid off on D-30.
        ("PAID", b1): [(d(-45), d(-44), 2)],
        # from D-52 (week 2 due D-53); at T 10 due (week 11 due on T): 10.
        ("L60", b2): [(d(-52), "", 10)],
        # from D-82 (week 2 due D-83); at T 15 due (week 15 D+8): 15.
        ("L90", b2): [(d(-82), "", 15)],
        # from D-185 (week 2 due D-186) to D-150 (10 collected, 7 due), 6 missed on D-151;
        # then from D-115 (week 12 due D-116); at T 29 due (7k < 210), 10 paid: 19.
        ("L123", b2): [(d(-185), d(-150), 6), (d(-115), "", 19)],
        ("LATE", b2): [],
    }
    for (loan_id, who), expected in histories.items():
        assert history(api, who, loan_id) == expected, loan_id
        assert history(api, op, loan_id, owner=who.user_id) == expected, loan_id


def test_twp90_is_rounded_half_up_and_covers_empty_and_all_loss_books(api):
    T = today()
    b = person(api, "half")
    # LOSS: 1,000.00 at 0.10 over 10 weeks (total 1,100.00, installments 110.00), started T-100:
    #   week 1 due T-93, nothing paid -> 93 days past due today.
    create(api, b, "LOSS", "1000", (T - dt.timedelta(days=100)).isoformat(), term_weeks=10)
    # CURRENT: 31,000.00 at 0.10 = 34,100.00 = 31 x 1,100.00, starting today.
    create(api, b, "NEW", "31000", T.isoformat())
    # twp90 = 100 * 1,100.00 / 35,200.00 = 3.125 exactly: half up 3.13 (half even would say 3.12).
    assert report(api, b) == expected_report(
        T.isoformat(),
        2,
        "35200.00",
        [(1, "34100.00"), (0, "0.00"), (0, "0.00"), (0, "0.00"), (1, "1100.00")],
        "3.13",
        "96.87",
    )
    # Yesterday NEW had not started: the whole book is LOSS.
    yesterday = (T - dt.timedelta(days=1)).isoformat()
    assert report(api, b, yesterday) == expected_report(
        yesterday,
        1,
        "1100.00",
        [(0, "0.00"), (0, "0.00"), (0, "0.00"), (0, "0.00"), (1, "1100.00")],
        "100.00",
        "0.00",
    )
    # T-3: 90 days past due (week 1 due T-93): DOUBTFUL, not LOSS.
    t3 = (T - dt.timedelta(days=3)).isoformat()
    assert report(api, b, t3) == expected_report(
        t3,
        1,
        "1100.00",
        [(0, "0.00"), (0, "0.00"), (0, "0.00"), (1, "1100.00"), (0, "0.00")],
        "0.00",
        "100.00",
    )
    # Before LOSS started: nothing at all.
    before = (T - dt.timedelta(days=101)).isoformat()
    assert report(api, b, before) == expected_report(before, 0, "0.00", [(0, "0.00")] * 5, "0.00", "100.00")


# == random books against an independent day-by-day oracle (hypothesis) ===================


def _half_up(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)
    return quotient + (1 if 2 * remainder >= denominator else 0)


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


@dataclasses.dataclass
class OraclePayment:
    payment_id: str
    value_date: dt.date
    cents: int
    reversed: bool = False


class OracleLoan:
    """A loan per DESIGN.md sections 1 and 5, computed day by day in plain integers."""

    def __init__(self, loan_id: str, principal: int, rate: int, term: int, start: dt.date) -> None:
        self.loan_id, self.term, self.start = loan_id, term, start
        total = _half_up(principal * (10_000 + rate), 10_000)
        weekly = _half_up(total, term)
        self.installments = [weekly] * (term - 1) + [total - weekly * (term - 1)]
        self.total = total
        self.prefix = [0]
        for cents in self.installments:
            self.prefix.append(self.prefix[-1] + cents)
        self.dues = [start + dt.timedelta(days=7 * k) for k in range(1, term + 1)]
        self.payments: list[OraclePayment] = []

    @property
    def valid(self) -> bool:
        return min(self.installments) >= 1

    def paid(self, day: dt.date | None = None) -> int:
        return sum(p.cents for p in self.payments if not p.reversed and (day is None or p.value_date <= day))

    def covered(self, cents: int) -> int:
        return max(k for k, edge in enumerate(self.prefix) if edge <= cents)

    def standing(self, day: dt.date) -> tuple:
        """(is_delinquent, missed, overdue, days past due, next due date) at the end of ``day``."""
        paid = self.paid(day)
        k = self.covered(paid)
        missed = [w for w in range(k, self.term) if self.dues[w] < day]
        part_paid = paid - self.prefix[k]  # of the first unpaid installment (a reversal leaves that)
        return (
            len(missed) >= 2,
            len(missed),
            _money(sum(self.installments[w] for w in missed) - part_paid if missed else 0),
            (day - self.dues[k]).days if missed else 0,
            self.dues[k].isoformat() if k < self.term else "",
        )

    def second_unpaid_due(self, day: dt.date) -> dt.date:
        return self.dues[self.covered(self.paid(day)) + 1]

    def periods(self, until: dt.date) -> list[tuple]:
        """Delinquent runs judged on every day from the start to ``until``."""
        periods: list[list] = []
        running = False
        day = self.start
        while day <= until:
            _d, missed, *_ = self.standing(day)
            if missed >= 2:
                if not running:
                    periods.append([day.isoformat(), "", missed])
                    running = True
                periods[-1][2] = max(periods[-1][2], missed)
            elif running:
                periods[-1][1] = day.isoformat()
                running = False
            day += dt.timedelta(days=1)
        return [tuple(p) for p in periods]

    def next_amount(self, installments: int) -> int | None:
        """The amount bringing the total paid exactly to the end of the next ``installments``."""
        total = self.paid()
        k = self.covered(total)
        if k == self.term:
            return None
        return self.prefix[min(self.term, k + installments)] - total


def oracle_report(loans: list[OracleLoan], day: dt.date) -> dict:
    buckets = {q: [0, 0] for q in QUALITIES}
    for loan in loans:
        owed = loan.total - loan.paid(day)
        if loan.start > day or owed <= 0:
            continue
        dpd = loan.standing(day)[3]
        quality = (
            "CURRENT"
            if dpd == 0
            else "SPECIAL_MENTION"
            if dpd <= 30
            else "SUBSTANDARD"
            if dpd <= 60
            else "DOUBTFUL"
            if dpd <= 90
            else "LOSS"
        )
        buckets[quality][0] += 1
        buckets[quality][1] += owed
    count = sum(n for n, _ in buckets.values())
    owed = sum(c for _, c in buckets.values())
    twp90 = (
        (Decimal(100) * buckets["LOSS"][1] / owed).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        if owed
        else Decimal("0.00")
    )
    return expected_report(
        day.isoformat(),
        count,
        _money(owed),
        [(n, _money(c)) for n, c in buckets.values()],
        str(twp90),
        str(Decimal(100) - twp90),
    )


_loan_terms = st.tuples(
    st.one_of(st.integers(100_00, 10_000_000_00), st.sampled_from([1_000_001_00, 500_000_00, 333_33])),
    st.one_of(st.sampled_from([0, 755, 1000, 1234, 10_000]), st.integers(0, 10_000)),
    st.integers(1, 10),  # term in weeks
    st.integers(0, 120),  # started this many days before today
)
_actions = st.tuples(
    # "reverse_oldest" after a payoff leaves an unapplied amount whenever the final installment differs.
    st.sampled_from(["collect", "collect", "collect", "own", "reverse", "reverse_oldest"]),
    st.integers(0, 2),  # which loan (modulo the number of loans)
    st.sampled_from([1, 1, 2, 3, 10, 10]),  # how many installments (10: the payoff, as terms are 1-10 weeks)
    st.integers(0, 10**6),  # picks the value date or the payment to reverse
)


@pytest.fixture
def operator(api) -> Person:
    return person(api, "oracle-op", operator=True)


@settings(
    max_examples=50,
    deadline=None,
    # One server for every example (each gets a borrower of its own): the fixture is shared on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    terms=st.lists(_loan_terms, min_size=1, max_size=3),
    actions=st.one_of(
        st.lists(_actions, min_size=2, max_size=12),
        # One installment, the rest at once, then the first taken back: the total paid ends part-way
        # into an installment whenever the final installment differs from the others.
        st.tuples(st.integers(0, 10**6), st.lists(_actions, max_size=8)).map(
            lambda drawn: [
                ("collect", 0, 1, drawn[0]),
                ("own", 0, 10, 0),
                ("reverse_oldest", 0, 1, 0),
                *drawn[1],
            ]
        ),
    ),
    days=st.lists(st.integers(-10, 130), min_size=2, max_size=4),
)
def test_random_books_agree_with_a_day_by_day_oracle(api, operator, terms, actions, days):
    T = today()
    borrower = person(api, "oracle")
    loans: list[OracleLoan] = []
    for n, (principal, rate, term, started) in enumerate(terms):
        loan = OracleLoan(f"H{n}", principal, rate, term, T - dt.timedelta(days=started))
        if not loan.valid:
            continue
        rate_text = f"{rate // 10_000}.{rate % 10_000:04d}"
        reply = create(
            api, borrower, loan.loan_id, _money(principal), loan.start.isoformat(), term, rate_text
        )
        assert (reply.total_amount, reply.weekly_payment) == (
            _money(loan.total),
            _money(loan.installments[0]),
        )
        loans.append(loan)
    if not loans:
        return

    unapplied_seen = False
    for kind, which, installments, pick in actions:
        loan = loans[which % len(loans)]
        if kind.startswith("reverse"):
            standing = [p for p in loan.payments if not p.reversed]
            if not standing:
                continue
            target = standing[0 if kind == "reverse_oldest" else pick % len(standing)]
            reply = reverse(api, operator, target.payment_id)
            assert (reply.reversed, reply.amount) == (True, _money(target.cents))
            target.reversed = True
        else:
            amount = loan.next_amount(installments)
            if amount is None:
                continue
            if kind == "own":
                reply = own_payment(api, borrower, loan.loan_id, _money(amount))
                value_date = T
            else:
                value_date = loan.start + dt.timedelta(days=pick % ((T - loan.start).days + 1))
                reply = collection(
                    api, operator, borrower, loan.loan_id, _money(amount), value_date.isoformat()
                )
            assert reply.value_date == value_date.isoformat()
            loan.payments.append(OraclePayment(reply.payment_id, value_date, amount))
        money = api.billing.GetOutstanding(
            billing_pb2.GetOutstandingRequest(loan_id=loan.loan_id), metadata=borrower.md
        )
        paid = loan.paid()
        k = loan.covered(paid)
        assert (
            money.paid_amount,
            money.outstanding_balance,
            money.installments_paid,
            money.unapplied_amount,
        ) == (
            _money(paid),
            _money(loan.total - paid),
            k,
            _money(paid - loan.prefix[k]),
        ), loan.loan_id
        unapplied_seen |= paid > loan.prefix[k]

    payments = [p for loan in loans for p in loan.payments]
    event(f"payments: {min(len(payments), 6)}{'+' if len(payments) >= 6 else ''}")
    reversals = sum(p.reversed for p in payments)
    event(f"reversed: {min(reversals, 2)}{'+' if reversals >= 2 else ''}")
    event("some payment back-dated" if any(p.value_date < T for p in payments) else "no back-dated payment")
    event("an unapplied amount on the way" if unapplied_seen else "never an unapplied amount")
    periods = [p for loan in loans for p in loan.periods(T)]
    event(f"periods: {min(len(periods), 3)}; ended: {min(sum(bool(p[1]) for p in periods), 2)}")
    for loan in loans:
        assert history(api, borrower, loan.loan_id) == loan.periods(T), loan.loan_id
    for offset in [0, *days]:
        day = T - dt.timedelta(days=offset)
        for loan in loans:
            if day >= loan.start:
                assert status(api, borrower, loan.loan_id, day.isoformat()) == (
                    *loan.standing(day),
                    day.isoformat(),
                ), (loan.loan_id, day)
        assert report(api, borrower, day.isoformat()) == oracle_report(loans, day), day
        listed = sorted(
            (loan for loan in loans if loan.standing(day)[0]),
            key=lambda loan: (loan.second_unpaid_due(day), loans.index(loan)),
        )
        assert delinquent(api, borrower, day.isoformat()) == [
            (loan.loan_id, loan.standing(day)[1], loan.standing(day)[3], "", day.isoformat())
            for loan in listed
        ], day
