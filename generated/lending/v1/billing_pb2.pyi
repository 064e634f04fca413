import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoanState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAN_STATE_UNSPECIFIED: _ClassVar[LoanState]
    LOAN_STATE_ACTIVE: _ClassVar[LoanState]
    LOAN_STATE_PAID_OFF: _ClassVar[LoanState]

class FundingQuality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUNDING_QUALITY_UNSPECIFIED: _ClassVar[FundingQuality]
    FUNDING_QUALITY_CURRENT: _ClassVar[FundingQuality]
    FUNDING_QUALITY_SPECIAL_MENTION: _ClassVar[FundingQuality]
    FUNDING_QUALITY_SUBSTANDARD: _ClassVar[FundingQuality]
    FUNDING_QUALITY_DOUBTFUL: _ClassVar[FundingQuality]
    FUNDING_QUALITY_LOSS: _ClassVar[FundingQuality]
LOAN_STATE_UNSPECIFIED: LoanState
LOAN_STATE_ACTIVE: LoanState
LOAN_STATE_PAID_OFF: LoanState
FUNDING_QUALITY_UNSPECIFIED: FundingQuality
FUNDING_QUALITY_CURRENT: FundingQuality
FUNDING_QUALITY_SPECIAL_MENTION: FundingQuality
FUNDING_QUALITY_SUBSTANDARD: FundingQuality
FUNDING_QUALITY_DOUBTFUL: FundingQuality
FUNDING_QUALITY_LOSS: FundingQuality

class Loan(_message.Message):
    __slots__ = ("loan_id", "principal_amount", "interest_rate", "term_weeks", "weekly_payment", "total_amount", "outstanding_balance", "start_date", "state", "create_time", "final_payment", "paid_amount", "installments_paid", "maturity_date", "unapplied_amount")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INTEREST_RATE_FIELD_NUMBER: _ClassVar[int]
    TERM_WEEKS_FIELD_NUMBER: _ClassVar[int]
    WEEKLY_PAYMENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_BALANCE_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINAL_PAYMENT_FIELD_NUMBER: _ClassVar[int]
    PAID_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INSTALLMENTS_PAID_FIELD_NUMBER: _ClassVar[int]
    MATURITY_DATE_FIELD_NUMBER: _ClassVar[int]
    UNAPPLIED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    principal_amount: str
    interest_rate: str
    term_weeks: int
    weekly_payment: str
    total_amount: str
    outstanding_balance: str
    start_date: str
    state: LoanState
    create_time: _timestamp_pb2.Timestamp
    final_payment: str
    paid_amount: str
    installments_paid: int
    maturity_date: str
    unapplied_amount: str
    def __init__(self, loan_id: _Optional[str] = ..., principal_amount: _Optional[str] = ..., interest_rate: _Optional[str] = ..., term_weeks: _Optional[int] = ..., weekly_payment: _Optional[str] = ..., total_amount: _Optional[str] = ..., outstanding_balance: _Optional[str] = ..., start_date: _Optional[str] = ..., state: _Optional[_Union[LoanState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., final_payment: _Optional[str] = ..., paid_amount: _Optional[str] = ..., installments_paid: _Optional[int] = ..., maturity_date: _Optional[str] = ..., unapplied_amount: _Optional[str] = ...) -> None: ...

class CreateLoanRequest(_message.Message):
    __slots__ = ("loan_id", "principal_amount", "start_date", "term_weeks", "interest_rate")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    TERM_WEEKS_FIELD_NUMBER: _ClassVar[int]
    INTEREST_RATE_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    principal_amount: str
    start_date: str
    term_weeks: int
    interest_rate: str
    def __init__(self, loan_id: _Optional[str] = ..., principal_amount: _Optional[str] = ..., start_date: _Optional[str] = ..., term_weeks: _Optional[int] = ..., interest_rate: _Optional[str] = ...) -> None: ...

class GetLoanRequest(_message.Message):
    __slots__ = ("loan_id", "owner")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    owner: str
    def __init__(self, loan_id: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ListLoansRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLoansResponse(_message.Message):
    __slots__ = ("loans", "next_page_token")
    LOANS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    loans: _containers.RepeatedCompositeFieldContainer[Loan]
    next_page_token: str
    def __init__(self, loans: _Optional[_Iterable[_Union[Loan, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetScheduleRequest(_message.Message):
    __slots__ = ("loan_id", "owner")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    owner: str
    def __init__(self, loan_id: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("loan_id", "installments", "total_amount")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    INSTALLMENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    installments: _containers.RepeatedCompositeFieldContainer[Installment]
    total_amount: str
    def __init__(self, loan_id: _Optional[str] = ..., installments: _Optional[_Iterable[_Union[Installment, _Mapping]]] = ..., total_amount: _Optional[str] = ...) -> None: ...

class Installment(_message.Message):
    __slots__ = ("week", "due_date", "due_amount", "paid", "payment_time", "payment_id")
    WEEK_FIELD_NUMBER: _ClassVar[int]
    DUE_DATE_FIELD_NUMBER: _ClassVar[int]
    DUE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PAID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TIME_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    week: int
    due_date: str
    due_amount: str
    paid: bool
    payment_time: _timestamp_pb2.Timestamp
    payment_id: str
    def __init__(self, week: _Optional[int] = ..., due_date: _Optional[str] = ..., due_amount: _Optional[str] = ..., paid: _Optional[bool] = ..., payment_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_id: _Optional[str] = ...) -> None: ...

class GetOutstandingRequest(_message.Message):
    __slots__ = ("loan_id", "owner")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    owner: str
    def __init__(self, loan_id: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class Outstanding(_message.Message):
    __slots__ = ("loan_id", "outstanding_balance", "paid_amount", "total_amount", "installments_paid", "installments_remaining", "unapplied_amount")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_BALANCE_FIELD_NUMBER: _ClassVar[int]
    PAID_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INSTALLMENTS_PAID_FIELD_NUMBER: _ClassVar[int]
    INSTALLMENTS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    UNAPPLIED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    outstanding_balance: str
    paid_amount: str
    total_amount: str
    installments_paid: int
    installments_remaining: int
    unapplied_amount: str
    def __init__(self, loan_id: _Optional[str] = ..., outstanding_balance: _Optional[str] = ..., paid_amount: _Optional[str] = ..., total_amount: _Optional[str] = ..., installments_paid: _Optional[int] = ..., installments_remaining: _Optional[int] = ..., unapplied_amount: _Optional[str] = ...) -> None: ...

class MakePaymentRequest(_message.Message):
    __slots__ = ("loan_id", "amount", "request_id", "owner", "value_date")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    VALUE_DATE_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    amount: str
    request_id: str
    owner: str
    value_date: str
    def __init__(self, loan_id: _Optional[str] = ..., amount: _Optional[str] = ..., request_id: _Optional[str] = ..., owner: _Optional[str] = ..., value_date: _Optional[str] = ...) -> None: ...

class ReversePaymentRequest(_message.Message):
    __slots__ = ("payment_id", "reason")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    reason: str
    def __init__(self, payment_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Payment(_message.Message):
    __slots__ = ("payment_id", "loan_id", "amount", "payment_time", "first_week", "last_week", "outstanding_balance", "request_id", "value_date", "reversed", "reverse_time", "reversal_reason")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TIME_FIELD_NUMBER: _ClassVar[int]
    FIRST_WEEK_FIELD_NUMBER: _ClassVar[int]
    LAST_WEEK_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_BALANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_DATE_FIELD_NUMBER: _ClassVar[int]
    REVERSED_FIELD_NUMBER: _ClassVar[int]
    REVERSE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVERSAL_REASON_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    loan_id: str
    amount: str
    payment_time: _timestamp_pb2.Timestamp
    first_week: int
    last_week: int
    outstanding_balance: str
    request_id: str
    value_date: str
    reversed: bool
    reverse_time: _timestamp_pb2.Timestamp
    reversal_reason: str
    def __init__(self, payment_id: _Optional[str] = ..., loan_id: _Optional[str] = ..., amount: _Optional[str] = ..., payment_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_week: _Optional[int] = ..., last_week: _Optional[int] = ..., outstanding_balance: _Optional[str] = ..., request_id: _Optional[str] = ..., value_date: _Optional[str] = ..., reversed: _Optional[bool] = ..., reverse_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reversal_reason: _Optional[str] = ...) -> None: ...

class ListPaymentsRequest(_message.Message):
    __slots__ = ("loan_id", "page_size", "page_token", "owner")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    page_size: int
    page_token: str
    owner: str
    def __init__(self, loan_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ListPaymentsResponse(_message.Message):
    __slots__ = ("payments", "next_page_token")
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payments: _containers.RepeatedCompositeFieldContainer[Payment]
    next_page_token: str
    def __init__(self, payments: _Optional[_Iterable[_Union[Payment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDelinquencyStatusRequest(_message.Message):
    __slots__ = ("loan_id", "as_of", "owner")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    as_of: str
    owner: str
    def __init__(self, loan_id: _Optional[str] = ..., as_of: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class DelinquencyStatus(_message.Message):
    __slots__ = ("loan_id", "is_delinquent", "missed_payments", "overdue_amount", "days_past_due", "next_due_date", "as_of", "owner")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    IS_DELINQUENT_FIELD_NUMBER: _ClassVar[int]
    MISSED_PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DAYS_PAST_DUE_FIELD_NUMBER: _ClassVar[int]
    NEXT_DUE_DATE_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    is_delinquent: bool
    missed_payments: int
    overdue_amount: str
    days_past_due: int
    next_due_date: str
    as_of: str
    owner: str
    def __init__(self, loan_id: _Optional[str] = ..., is_delinquent: _Optional[bool] = ..., missed_payments: _Optional[int] = ..., overdue_amount: _Optional[str] = ..., days_past_due: _Optional[int] = ..., next_due_date: _Optional[str] = ..., as_of: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ListDelinquentLoansRequest(_message.Message):
    __slots__ = ("as_of", "page_size", "page_token", "all_owners")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALL_OWNERS_FIELD_NUMBER: _ClassVar[int]
    as_of: str
    page_size: int
    page_token: str
    all_owners: bool
    def __init__(self, as_of: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., all_owners: _Optional[bool] = ...) -> None: ...

class ListDelinquentLoansResponse(_message.Message):
    __slots__ = ("loans", "next_page_token")
    LOANS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    loans: _containers.RepeatedCompositeFieldContainer[DelinquencyStatus]
    next_page_token: str
    def __init__(self, loans: _Optional[_Iterable[_Union[DelinquencyStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDelinquencyHistoryRequest(_message.Message):
    __slots__ = ("loan_id", "owner")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    owner: str
    def __init__(self, loan_id: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class DelinquencyHistory(_message.Message):
    __slots__ = ("loan_id", "periods")
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    loan_id: str
    periods: _containers.RepeatedCompositeFieldContainer[DelinquencyPeriod]
    def __init__(self, loan_id: _Optional[str] = ..., periods: _Optional[_Iterable[_Union[DelinquencyPeriod, _Mapping]]] = ...) -> None: ...

class DelinquencyPeriod(_message.Message):
    __slots__ = ("start_date", "end_date", "max_missed_payments")
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    MAX_MISSED_PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    start_date: str
    end_date: str
    max_missed_payments: int
    def __init__(self, start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., max_missed_payments: _Optional[int] = ...) -> None: ...

class GetPortfolioReportRequest(_message.Message):
    __slots__ = ("as_of", "all_owners")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    ALL_OWNERS_FIELD_NUMBER: _ClassVar[int]
    as_of: str
    all_owners: bool
    def __init__(self, as_of: _Optional[str] = ..., all_owners: _Optional[bool] = ...) -> None: ...

class PortfolioReport(_message.Message):
    __slots__ = ("as_of", "loans", "outstanding_amount", "categories", "twp90", "tkb90")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    LOANS_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TWP90_FIELD_NUMBER: _ClassVar[int]
    TKB90_FIELD_NUMBER: _ClassVar[int]
    as_of: str
    loans: int
    outstanding_amount: str
    categories: _containers.RepeatedCompositeFieldContainer[FundingQualityCategory]
    twp90: str
    tkb90: str
    def __init__(self, as_of: _Optional[str] = ..., loans: _Optional[int] = ..., outstanding_amount: _Optional[str] = ..., categories: _Optional[_Iterable[_Union[FundingQualityCategory, _Mapping]]] = ..., twp90: _Optional[str] = ..., tkb90: _Optional[str] = ...) -> None: ...

class FundingQualityCategory(_message.Message):
    __slots__ = ("quality", "loans", "outstanding_amount")
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    LOANS_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    quality: FundingQuality
    loans: int
    outstanding_amount: str
    def __init__(self, quality: _Optional[_Union[FundingQuality, str]] = ..., loans: _Optional[int] = ..., outstanding_amount: _Optional[str] = ...) -> None: ...
