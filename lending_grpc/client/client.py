"""LendingClient: one method per RPC, plain Python values in and out."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc

from lending_grpc.client import exceptions, from_messages
from lending_grpc.client.connection import TlsConfig, open_channel
from lending_grpc.client.from_messages import DateLike, DecimalLike
from lending_grpc.client.session import Session
from lending_grpc.client.types import (
    DelinquencyStatus,
    Loan,
    Outstanding,
    Page,
    Payment,
    Schedule,
    Tokens,
    User,
)

DEFAULT_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


class LendingClient:
    """A client of one lending-grpc server.

    >>> with LendingClient("127.0.0.1:50051", username="ada", password="correct horse battery") as client:
    ...     loan = client.create_loan("L-1001", Decimal("5000000"))
    ...     client.make_payment("L-1001", loan.weekly_payment)

    Every call has a deadline (``timeout`` seconds, overridable per call);
    UNAVAILABLE and ABORTED are retried by gRPC with exponential backoff (up
    to ``max_attempts`` attempts within that deadline). BillingService calls
    log in on first use when ``username``/``password`` are given, renew the
    access token with the refresh token before it expires, and log in again
    when the refresh token has expired too. ``tokens`` resumes a saved session;
    ``on_tokens`` receives every new pair so it can be saved. Failed calls
    raise `lending_grpc.client.exceptions.LendingError` subclasses.
    """

    def __init__(
        self,
        target: str,
        *,
        tls: TlsConfig | bool | None = None,
        username: str | None = None,
        password: str | None = None,
        tokens: Tokens | None = None,
        on_tokens: Callable[[Tokens], None] | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_attempts: int = 5,
        channel_options: Sequence[tuple[str, Any]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        tls_config = TlsConfig() if tls is True else (tls or None)
        self.target = target
        self.timeout = timeout
        self._channel = open_channel(target, tls_config, max_attempts=max_attempts, options=channel_options)
        self._auth = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._billing = billing_pb2_grpc.BillingServiceStub(self._channel)
        self._session = Session(
            self._auth,
            timeout,
            tokens=tokens,
            username=username,
            password=password,
            on_tokens=on_tokens,
            clock=clock,
        )

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> LendingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def tokens(self) -> Tokens | None:
        """The current token pair (None before login)."""
        return self._session.tokens

    # -- AuthService --

    def register(self, username: str, password: str, email: str, *, timeout: float | None = None) -> User:
        """Create an account (not retried: see `connection.service_config`)."""
        request = auth_pb2.RegisterRequest(username=username, password=password, email=email)
        return from_messages.user(self._unary(self._auth.Register, request, timeout))

    def login(self, username: str, password: str, *, timeout: float | None = None) -> Tokens:
        """Log in; later calls use (and renew) these tokens."""
        return self._session.login(username, password, timeout)

    def refresh_token(self, *, timeout: float | None = None) -> Tokens:
        """Swap the refresh token for a new pair now (the client also does this by itself)."""
        return self._session.refresh(timeout)

    # -- BillingService --

    def create_loan(
        self,
        loan_id: str,
        principal_amount: DecimalLike,
        *,
        start_date: DateLike | None = None,
        term_weeks: int | None = None,
        interest_rate: DecimalLike | None = None,
        timeout: float | None = None,
    ) -> Loan:
        """Create a loan (idempotent on loan_id: the same terms return the existing loan).

        Omitted terms take the server's defaults: start today, 50 weeks, 0.10.
        """
        request = billing_pb2.CreateLoanRequest(
            loan_id=loan_id,
            principal_amount=from_messages.decimal_text(principal_amount, "principal_amount"),
            start_date=from_messages.date_text(start_date),
            term_weeks=term_weeks or 0,
            interest_rate=(
                "" if interest_rate is None else from_messages.decimal_text(interest_rate, "interest_rate")
            ),
        )
        return from_messages.loan(self._billing_call("CreateLoan", request, timeout))

    def get_loan(self, loan_id: str, *, timeout: float | None = None) -> Loan:
        """One of the caller's loans."""
        return from_messages.loan(
            self._billing_call("GetLoan", billing_pb2.GetLoanRequest(loan_id=loan_id), timeout)
        )

    def list_loans(
        self, page_size: int = 0, page_token: str = "", *, timeout: float | None = None
    ) -> Page[Loan]:
        """One page of the caller's loans, oldest first."""
        request = billing_pb2.ListLoansRequest(page_size=page_size, page_token=page_token)
        response = self._billing_call("ListLoans", request, timeout)
        return Page(tuple(from_messages.loan(item) for item in response.loans), response.next_page_token)

    def iter_loans(self, page_size: int = 0) -> Iterator[Loan]:
        """Every loan of the caller, fetching pages as needed."""
        return _iterate(lambda token: self.list_loans(page_size, token))

    def get_schedule(self, loan_id: str, *, timeout: float | None = None) -> Schedule:
        """Every installment with its due date, amount and payment."""
        request = billing_pb2.GetScheduleRequest(loan_id=loan_id)
        return from_messages.schedule(self._billing_call("GetSchedule", request, timeout))

    def get_outstanding(self, loan_id: str, *, timeout: float | None = None) -> Outstanding:
        """What has been paid and what is still owed."""
        request = billing_pb2.GetOutstandingRequest(loan_id=loan_id)
        return from_messages.outstanding(self._billing_call("GetOutstanding", request, timeout))

    def make_payment(
        self,
        loan_id: str,
        amount: DecimalLike,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Payment:
        """Pay whole installments, oldest first.

        Every payment carries a ``request_id`` (a fresh UUID unless given), and
        every retry of the call sends the same one, so a payment whose reply was
        lost is never recorded twice. To repeat a payment after this method
        raised (say DeadlineExceeded), pass the same ``request_id`` again: the
        server then returns the original payment if it was recorded.
        """
        request = billing_pb2.MakePaymentRequest(
            loan_id=loan_id,
            amount=from_messages.decimal_text(amount, "amount"),
            request_id=request_id or str(uuid.uuid4()),
        )
        return from_messages.payment(self._billing_call("MakePayment", request, timeout))

    def list_payments(
        self, loan_id: str, page_size: int = 0, page_token: str = "", *, timeout: float | None = None
    ) -> Page[Payment]:
        """One page of a loan's payments, oldest first."""
        request = billing_pb2.ListPaymentsRequest(loan_id=loan_id, page_size=page_size, page_token=page_token)
        response = self._billing_call("ListPayments", request, timeout)
        return Page(
            tuple(from_messages.payment(item) for item in response.payments), response.next_page_token
        )

    def iter_payments(self, loan_id: str, page_size: int = 0) -> Iterator[Payment]:
        """Every payment of a loan, fetching pages as needed."""
        return _iterate(lambda token: self.list_payments(loan_id, page_size, token))

    def get_delinquency_status(
        self, loan_id: str, as_of: DateLike | None = None, *, timeout: float | None = None
    ) -> DelinquencyStatus:
        """Whether the loan is delinquent as of a date (default: today in the service time zone)."""
        request = billing_pb2.GetDelinquencyStatusRequest(
            loan_id=loan_id, as_of=from_messages.date_text(as_of)
        )
        return from_messages.delinquency(self._billing_call("GetDelinquencyStatus", request, timeout))

    def list_delinquent_loans(
        self,
        as_of: DateLike | None = None,
        page_size: int = 0,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> Page[DelinquencyStatus]:
        """One page of the caller's delinquent loans, most overdue first."""
        request = billing_pb2.ListDelinquentLoansRequest(
            as_of=from_messages.date_text(as_of), page_size=page_size, page_token=page_token
        )
        response = self._billing_call("ListDelinquentLoans", request, timeout)
        return Page(
            tuple(from_messages.delinquency(item) for item in response.loans), response.next_page_token
        )

    def iter_delinquent_loans(
        self, as_of: DateLike | None = None, page_size: int = 0
    ) -> Iterator[DelinquencyStatus]:
        """Every delinquent loan of the caller as of a date, fetching pages as needed."""
        return _iterate(lambda token: self.list_delinquent_loans(as_of, page_size, token))

    # -- plumbing --

    def _unary(self, method, request, timeout: float | None):
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise exceptions.from_rpc_error(err) from None

    def _billing_call(self, name: str, request, timeout: float | None):
        """Call with a fresh access token; when the server refuses the token, renew it and try once more."""
        method = getattr(self._billing, name)
        metadata = self._session.metadata()
        try:
            return method(request, timeout=timeout or self.timeout, metadata=metadata)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAUTHENTICATED or not self._session.renew_after_rejection(
                metadata
            ):
                raise exceptions.from_rpc_error(err) from None
        # UNAUTHENTICATED means the call never ran, so sending it again is safe.
        return self._unary(
            lambda req, timeout: method(req, timeout=timeout, metadata=self._session.metadata()),
            request,
            timeout,
        )


def _iterate(fetch: Callable[[str], Page[T]]) -> Iterator[T]:
    token = ""
    while True:
        page = fetch(token)
        yield from page.items
        token = page.next_page_token
        if not token:
            return
