import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from lending.v1 import billing_pb2 as _billing_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_LOAN_CREATED: _ClassVar[EventType]
    EVENT_TYPE_PAYMENT_ACCEPTED: _ClassVar[EventType]
    EVENT_TYPE_PAYMENT_REVERSED: _ClassVar[EventType]
    EVENT_TYPE_LOAN_PAID_OFF: _ClassVar[EventType]
    EVENT_TYPE_LOAN_REOPENED: _ClassVar[EventType]
    EVENT_TYPE_DELINQUENCY_STARTED: _ClassVar[EventType]
    EVENT_TYPE_DELINQUENCY_ENDED: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_LOAN_CREATED: EventType
EVENT_TYPE_PAYMENT_ACCEPTED: EventType
EVENT_TYPE_PAYMENT_REVERSED: EventType
EVENT_TYPE_LOAN_PAID_OFF: EventType
EVENT_TYPE_LOAN_REOPENED: EventType
EVENT_TYPE_DELINQUENCY_STARTED: EventType
EVENT_TYPE_DELINQUENCY_ENDED: EventType

class Event(_message.Message):
    __slots__ = ("sequence", "type", "loan_id", "owner", "occur_time", "effective_date", "loan", "payment", "delinquency")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_DATE_FIELD_NUMBER: _ClassVar[int]
    LOAN_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    DELINQUENCY_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    type: EventType
    loan_id: str
    owner: str
    occur_time: _timestamp_pb2.Timestamp
    effective_date: str
    loan: _billing_pb2.Loan
    payment: _billing_pb2.Payment
    delinquency: _billing_pb2.DelinquencyStatus
    def __init__(self, sequence: _Optional[int] = ..., type: _Optional[_Union[EventType, str]] = ..., loan_id: _Optional[str] = ..., owner: _Optional[str] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., effective_date: _Optional[str] = ..., loan: _Optional[_Union[_billing_pb2.Loan, _Mapping]] = ..., payment: _Optional[_Union[_billing_pb2.Payment, _Mapping]] = ..., delinquency: _Optional[_Union[_billing_pb2.DelinquencyStatus, _Mapping]] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("after_sequence", "page_size", "loan_id")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    page_size: int
    loan_id: str
    def __init__(self, after_sequence: _Optional[int] = ..., page_size: _Optional[int] = ..., loan_id: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_sequence", "loan_id")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LOAN_ID_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    loan_id: str
    def __init__(self, after_sequence: _Optional[int] = ..., loan_id: _Optional[str] = ...) -> None: ...
