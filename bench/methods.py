"""The benchmarked methods: full paths and the request messages the load generators send."""

from __future__ import annotations

AUTH = "/lending.v1.AuthService/"
BILLING = "/lending.v1.BillingService/"

CREATE_LOAN = BILLING + "CreateLoan"
MAKE_PAYMENT = BILLING + "MakePayment"
GET_DELINQUENCY = BILLING + "GetDelinquencyStatus"
GET_OUTSTANDING = BILLING + "GetOutstanding"
GET_SCHEDULE = BILLING + "GetSchedule"
GET_LOAN = BILLING + "GetLoan"
LIST_DELINQUENT = BILLING + "ListDelinquentLoans"
LOGIN = AUTH + "Login"

ALL_METHODS = (
    CREATE_LOAN,
    MAKE_PAYMENT,
    GET_DELINQUENCY,
    GET_OUTSTANDING,
    GET_SCHEDULE,
    GET_LOAN,
    LIST_DELINQUENT,
    LOGIN,
)

# Loans the payment runs pay: term 520 weeks of exactly 110.00, so every
# payment of PAYMENT_AMOUNT is one whole installment (until the 519th).
PAY_LOAN_PREFIX = "P-"
PAY_LOANS = 1024
PAY_PRINCIPAL = "52000.00"
PAY_TERM_WEEKS = 520
PAYMENT_AMOUNT = "110.00"
