"""LendingClient: one method per RPC, plain Python values in and out."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc, events_pb2, events_pb2_grpc

from lending_grpc.client import exceptions, from_messages
from lending_grpc.client.connection import TlsConfig, open_channel
from lending_grpc.client.from_messages import DateLike, DecimalLike
from lending_grpc.client.reachability import wait_until_connected
from lending_grpc.client.session import Session
from lending_grpc.client.types import (
    DelinquencyHistory,
    DelinquencyStatus,
    Event,
    Loan,
    Outstanding,
    Page,
    Payment,
    PortfolioReport,
    Schedule,
    Tokens,
    User,
)
from lending_grpc.client.watch import EventWatch

DEFAULT_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


class LendingClient:
    """A client of one lending-grpc server.

    >>> with LendingClient("127.0.0.1:50051", username="ada", password="correct horse battery") as client:
    ...     loan = client.create_loan("L-1001", Decimal("5000000"))
    ...     client.make_payment("L-1001", loan.weekly_payment)

    Every call has a deadline (``timeout`` seconds, overridable per call);
    UNAVAILABLE and ABORTED are retried by gRPC with exponential backoff (up
    to ``max_attempts`` attempts within that deadline). BillingService and
    EventService calls log in on first use when ``username``/``password`` are
    given, renew the access token with the refresh token before it expires,
    and log in again when the refresh token has expired too. ``tokens``
    resumes a saved session; ``on_tokens`` receives every new pair so it can
    be saved. Failed calls raise `lending_grpc.client.exceptions.LendingError`
    subclasses. `watch_events` is the exception to the deadline: it follows
    the event log until closed, reconnecting by itself.

    Operators (a role granted on the server host) may name another user's
    loan with ``owner`` (the borrower's public user id) in the reads and in
    `make_payment`, back-date a payment with ``value_date``, reverse payments
    and report on the whole book; anyone else doing so gets PermissionDenied.
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
        self._events = events_pb2_grpc.EventServiceStub(self._channel)
        self._session = Session(
            self._auth,
            timeout,
            tokens=tokens,
            username=username,
            password=password,
            on_tokens=on_tokens,
            clock=clock,
        )

    def connect(self, timeout: float | None = None) -> None:
        """Connect now instead of on the first call (which then uses this connection).

        Raises `Unavailable` ("cannot reach HOST:PORT (connection refused)", reason
        SERVER_UNREACHABLE) when the server cannot be reached within ``timeout``
        seconds (default: the client's timeout), so a program can tell an absent
        server from one that answers UNAVAILABLE itself.
        """
        wait_until_connected(self._channel, self.target, timeout or self.timeout)

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

    def logout(self, *, timeout: float | None = None) -> None:
        """End the session on the server (its access and refresh tokens stop working at once), then
        forget the tokens here. A session the server had already ended (revoked, or its refresh
        token expired) raises Unauthenticated, and is forgotten here too."""
        try:
            self._authorized_call(self._auth.Logout, auth_pb2.LogoutRequest(), timeout)
        except exceptions.Unauthenticated:
            self._session.forget()
            raise
        self._session.forget()

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

    def get_loan(self, loan_id: str, *, owner: str = "", timeout: float | None = None) -> Loan:
        """One of the caller's loans (an operator: anyone's, naming its ``owner``)."""
        request = billing_pb2.GetLoanRequest(loan_id=loan_id, owner=owner)
        return from_messages.loan(self._billing_call("GetLoan", request, timeout))

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

    def get_schedule(self, loan_id: str, *, owner: str = "", timeout: float | None = None) -> Schedule:
        """Every installment with its due date, amount and payment."""
        request = billing_pb2.GetScheduleRequest(loan_id=loan_id, owner=owner)
        return from_messages.schedule(self._billing_call("GetSchedule", request, timeout))

    def get_outstanding(self, loan_id: str, *, owner: str = "", timeout: float | None = None) -> Outstanding:
        """What has been paid and what is still owed."""
        request = billing_pb2.GetOutstandingRequest(loan_id=loan_id, owner=owner)
        return from_messages.outstanding(self._billing_call("GetOutstanding", request, timeout))

    def make_payment(
        self,
        loan_id: str,
        amount: DecimalLike,
        *,
        request_id: str | None = None,
        owner: str = "",
        value_date: DateLike | None = None,
        timeout: float | None = None,
    ) -> Payment:
        """Pay whole installments, oldest first.

        Every payment carries a ``request_id`` (a fresh UUID unless given), and
        every retry of the call sends the same one, so a payment whose reply was
        lost is never recorded twice. To repeat a payment after this method
        raised (say DeadlineExceeded), pass the same ``request_id`` again: the
        server then returns the original payment if it was recorded.

        Operators only: ``owner`` records the payment on another user's loan (a
        field officer's collection) and ``value_date`` says when the money was
        received, from the loan's start date to today (default: today). A
        back-dated payment still pays the oldest unpaid installments; it changes
        the loan's standing from that date on.
        """
        request = billing_pb2.MakePaymentRequest(
            loan_id=loan_id,
            amount=from_messages.decimal_text(amount, "amount"),
            request_id=request_id or str(uuid.uuid4()),
            owner=owner,
            value_date=from_messages.date_text(value_date),
        )
        return from_messages.payment(self._billing_call("MakePayment", request, timeout))

    def reverse_payment(self, payment_id: str, reason: str, *, timeout: float | None = None) -> Payment:
        """Operators only: take back a bounced or mistaken payment; it stops counting anywhere.

        The loan's balance rises by the amount (a paid-off loan is ACTIVE
        again) and its later payments are re-applied oldest first. ``reason``
        (1-500 characters) is kept with the payment. Reversing it again returns
        it unchanged, so retrying is safe.
        """
        request = billing_pb2.ReversePaymentRequest(payment_id=payment_id, reason=reason)
        return from_messages.payment(self._billing_call("ReversePayment", request, timeout))

    def list_payments(
        self,
        loan_id: str,
        page_size: int = 0,
        page_token: str = "",
        *,
        owner: str = "",
        timeout: float | None = None,
    ) -> Page[Payment]:
        """One page of a loan's payments, oldest first (reversed ones included, marked)."""
        request = billing_pb2.ListPaymentsRequest(
            loan_id=loan_id, page_size=page_size, page_token=page_token, owner=owner
        )
        response = self._billing_call("ListPayments", request, timeout)
        return Page(
            tuple(from_messages.payment(item) for item in response.payments), response.next_page_token
        )

    def iter_payments(self, loan_id: str, page_size: int = 0, *, owner: str = "") -> Iterator[Payment]:
        """Every payment of a loan, fetching pages as needed."""
        return _iterate(lambda token: self.list_payments(loan_id, page_size, token, owner=owner))

    def get_delinquency_status(
        self,
        loan_id: str,
        as_of: DateLike | None = None,
        *,
        owner: str = "",
        timeout: float | None = None,
    ) -> DelinquencyStatus:
        """Whether the loan is delinquent as of a date (default: today in the service time zone).

        For a past date: the loan as it stood at the end of that day, as known
        now (payments by value date, reversed ones not at all).
        """
        request = billing_pb2.GetDelinquencyStatusRequest(
            loan_id=loan_id, as_of=from_messages.date_text(as_of), owner=owner
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

    def get_delinquency_history(
        self, loan_id: str, *, owner: str = "", timeout: float | None = None
    ) -> DelinquencyHistory:
        """The periods in which the loan was delinquent, oldest first, the one still running included."""
        request = billing_pb2.GetDelinquencyHistoryRequest(loan_id=loan_id, owner=owner)
        return from_messages.history(self._billing_call("GetDelinquencyHistory", request, timeout))

    def get_portfolio_report(
        self, as_of: DateLike | None = None, *, all_owners: bool = False, timeout: float | None = None
    ) -> PortfolioReport:
        """The funding-quality report (TKB90/TWP90) as of a date (default today).

        Over the caller's loans, or the whole book for an operator with ``all_owners``.
        """
        request = billing_pb2.GetPortfolioReportRequest(
            as_of=from_messages.date_text(as_of), all_owners=all_owners
        )
        return from_messages.portfolio_report(self._billing_call("GetPortfolioReport", request, timeout))

    # -- EventService --

    def list_events(
        self,
        after_sequence: int = 0,
        page_size: int = 0,
        loan_id: str = "",
        *,
        timeout: float | None = None,
    ) -> tuple[Event, ...]:
        """Up to ``page_size`` events after ``after_sequence``, oldest first; empty once caught up.

        The next page starts after the last event's sequence. Owners see their
        own loans' events, operators everyone's; ``loan_id`` narrows to one loan.
        """
        request = events_pb2.ListEventsRequest(
            after_sequence=after_sequence, page_size=page_size, loan_id=loan_id
        )
        response = self._authorized_call(self._events.ListEvents, request, timeout)
        return tuple(from_messages.event(item) for item in response.events)

    def iter_events(self, after_sequence: int = 0, page_size: int = 0, loan_id: str = "") -> Iterator[Event]:
        """Every event after ``after_sequence`` up to the end of the log as it is now, page by page."""
        while True:
            events = self.list_events(after_sequence, page_size, loan_id)
            if not events:
                return
            yield from events
            after_sequence = events[-1].sequence

    def watch_events(
        self,
        after_sequence: int = 0,
        loan_id: str = "",
        *,
        initial_backoff: float = 0.2,
        max_backoff: float = 5.0,
        max_reconnects: int | None = None,
        on_reconnect: Callable[[exceptions.LendingError, float], None] | None = None,
    ) -> EventWatch:
        """Follow the event log: every event after ``after_sequence``, then each new one as it commits.

        >>> with client.watch_events(after_sequence=saved) as events:
        ...     for event in events:
        ...         handle(event)
        ...         saved = event.sequence

        Runs until closed (``close()``, leaving the ``with`` block, or dropping
        the iterator). When the server shuts down or the connection drops
        (UNAVAILABLE) it reconnects with exponential backoff and resumes after
        the last event it yielded; when the access token expires mid-stream
        (UNAUTHENTICATED) it renews the session's tokens and resumes; so each
        event is seen exactly once, in sequence order. See `EventWatch`.
        """
        return EventWatch(
            self._events,
            self._session,
            after_sequence,
            loan_id,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            max_reconnects=max_reconnects,
            on_reconnect=on_reconnect,
        )

    # -- plumbing --

    def _unary(self, method, request, timeout: float | None):
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise exceptions.from_rpc_error(err) from None

    def _billing_call(self, name: str, request, timeout: float | None):
        return self._authorized_call(getattr(self._billing, name), request, timeout)

    def _authorized_call(self, method, request, timeout: float | None):
        """Call with a fresh access token; when the server refuses the token, renew it and try once more."""
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
