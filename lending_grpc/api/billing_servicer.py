"""BillingService: validate, call the core for the authenticated caller, convert."""

from __future__ import annotations

from lending.v1 import billing_pb2, billing_pb2_grpc

from lending_grpc.api import messages
from lending_grpc.api.call import current_call
from lending_grpc.core.auth import AuthCore
from lending_grpc.core.billing import BillingCore
from lending_grpc.core.delinquency import DelinquencyCore


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    """Thin adapter: the caller comes from the pipeline's Call, the rules from the core."""

    def __init__(self, billing: BillingCore, delinquency: DelinquencyCore, auth: AuthCore) -> None:
        self._billing = billing
        self._delinquency = delinquency
        self._auth = auth

    def _owner(self, request) -> int:
        """Whose loan a request is about: the caller's, or (operators only) the `owner` it names."""
        call = current_call()
        if not request.owner:
            return call.user.id
        self._auth.require_operator(call.actor, "owner")
        return self._billing.resolve_owner(request.owner, request.loan_id)

    def _scope(self, all_owners: bool) -> int | None:
        """The caller's own loans, or (operators only) every owner's: None."""
        call = current_call()
        if not all_owners:
            return call.user.id
        self._auth.require_operator(call.actor, "all_owners")
        return None

    def CreateLoan(self, request, context):
        return messages.loan(
            self._billing.create_loan(
                current_call().actor,
                loan_id=request.loan_id,
                principal_amount=request.principal_amount,
                start_date=request.start_date,
                term_weeks=request.term_weeks,
                interest_rate=request.interest_rate,
            )
        )

    def GetLoan(self, request, context):
        return messages.loan(self._billing.get_loan(self._owner(request), request.loan_id))

    def ListLoans(self, request, context):
        page = self._billing.list_loans(current_call().user.id, request.page_size, request.page_token)
        return billing_pb2.ListLoansResponse(
            loans=[messages.loan(view) for view in page.items], next_page_token=page.next_page_token
        )

    def GetSchedule(self, request, context):
        return messages.schedule(self._billing.get_schedule(self._owner(request), request.loan_id))

    def GetOutstanding(self, request, context):
        return messages.outstanding(self._billing.get_loan(self._owner(request), request.loan_id))

    def MakePayment(self, request, context):
        call = current_call()
        owner = None
        if request.value_date:
            self._auth.require_operator(call.actor, "value_date")
        if request.owner:
            owner = self._owner(request)
        return messages.payment(
            self._billing.make_payment(
                call.actor,
                request.loan_id,
                request.amount,
                request.request_id,
                owner=owner,
                value_date=request.value_date,
            )
        )

    def ReversePayment(self, request, context):
        actor = current_call().actor
        self._auth.require_operator(actor, "ReversePayment")
        return messages.payment(self._billing.reverse_payment(actor, request.payment_id, request.reason))

    def ListPayments(self, request, context):
        page = self._billing.list_payments(
            self._owner(request), request.loan_id, request.page_size, request.page_token
        )
        return billing_pb2.ListPaymentsResponse(
            payments=[messages.payment(view) for view in page.items],
            next_page_token=page.next_page_token,
        )

    def GetDelinquencyStatus(self, request, context):
        return messages.delinquency(
            self._delinquency.get_delinquency(self._owner(request), request.loan_id, request.as_of)
        )

    def ListDelinquentLoans(self, request, context):
        page = self._delinquency.list_delinquent(
            self._scope(request.all_owners), request.as_of, request.page_size, request.page_token
        )
        return billing_pb2.ListDelinquentLoansResponse(
            loans=[messages.delinquency(view) for view in page.items],
            next_page_token=page.next_page_token,
        )

    def GetDelinquencyHistory(self, request, context):
        return messages.history(self._delinquency.get_history(self._owner(request), request.loan_id))

    def GetPortfolioReport(self, request, context):
        return messages.portfolio_report(
            self._delinquency.portfolio_report(self._scope(request.all_owners), request.as_of)
        )
