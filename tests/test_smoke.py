"""The worked example end to end through the real server."""

from lending.v1 import billing_pb2


def test_worked_example(api, alice):
    loan = api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="5000000", start_date="2026-01-05"),
        metadata=alice,
    )
    assert (loan.total_amount, loan.weekly_payment, loan.final_payment) == (
        "5500000.00",
        "110000.00",
        "110000.00",
    )
    payment = api.billing.MakePayment(
        billing_pb2.MakePaymentRequest(loan_id="L1", amount="110000.00", request_id="r1"), metadata=alice
    )
    assert payment.outstanding_balance == "5390000.00"
    outstanding = api.billing.GetOutstanding(billing_pb2.GetOutstandingRequest(loan_id="L1"), metadata=alice)
    assert outstanding.outstanding_balance == "5390000.00"
    status = api.billing.GetDelinquencyStatus(
        billing_pb2.GetDelinquencyStatusRequest(loan_id="L1", as_of="2026-01-27"), metadata=alice
    )
    assert status.is_delinquent and status.missed_payments == 2
