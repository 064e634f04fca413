"""Validation of request fields that are not money: identifiers, dates, account data.

Each function takes the raw value as it arrived and returns the clean value
or raises InvalidArgument naming the field.
"""

from __future__ import annotations

import datetime as dt
import re

from lending_grpc.core.errors import InvalidArgument

LOAN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PAYMENT_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
USER_ID_RE = PAYMENT_ID_RE  # public user ids are lower-case UUIDs too
MIN_USERNAME_CHARS = 3
MAX_USERNAME_CHARS = 150
USERNAME_RE = re.compile(rf"[A-Za-z0-9@.+_-]{{{MIN_USERNAME_CHARS},{MAX_USERNAME_CHARS}}}")
# An unquoted RFC 5322 local part (dot-atom) and a dotted DNS domain; ASCII only.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_RE = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")
MAX_EMAIL_LOCAL_CHARS = 64
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MIN_START_DATE = dt.date(1900, 1, 1)
MAX_START_DATE = dt.date(2999, 12, 31)
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
MAX_EMAIL_CHARS = 254


def _short(value: str, limit: int = 40) -> str:
    """Echo a bad value back safely: repr-escaped and truncated."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def loan_id(value: str, field: str = "loan_id") -> str:
    """A client-chosen loan identifier: 1-64 letters, digits and ``._-``."""
    if not value:
        raise InvalidArgument(field, "is required")
    if not LOAN_ID_RE.fullmatch(value):
        raise InvalidArgument(field, f"{_short(value)} must be 1-64 characters of letters, digits and ._-")
    return value


def payment_id(value: str, field: str = "payment_id") -> str:
    """A payment's id as the service issued it: a lower-case UUID."""
    if not value:
        raise InvalidArgument(field, "is required")
    if not PAYMENT_ID_RE.fullmatch(value):
        raise InvalidArgument(field, f"{_short(value)} is not a payment id (a UUID as the service issued it)")
    return value


def is_user_id(value: str) -> bool:
    """Whether ``value`` has the shape of a public user id as the service issues them (a lower-case UUID)."""
    return USER_ID_RE.fullmatch(value) is not None


def request_id(value: str, field: str = "request_id") -> str | None:
    """An optional idempotency key (AIP-155); empty means none."""
    if not value:
        return None
    if not REQUEST_ID_RE.fullmatch(value):
        raise InvalidArgument(field, f"{_short(value)} must be 1-128 characters of letters, digits and ._:-")
    return value


def calendar_date(
    value: str, field: str, *, low: dt.date = dt.date.min, high: dt.date = dt.date.max
) -> dt.date:
    """A ``YYYY-MM-DD`` date within [low, high]."""
    if not DATE_RE.fullmatch(value):
        raise InvalidArgument(field, f"{_short(value)} is not a date in the form YYYY-MM-DD")
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(field, f"{_short(value)} is not a real calendar date") from None
    if not low <= day <= high:
        raise InvalidArgument(field, f"must be between {low.isoformat()} and {high.isoformat()}")
    return day


def optional_date(value: str, field: str, default: dt.date, **bounds: dt.date) -> dt.date:
    """A ``YYYY-MM-DD`` date, or ``default`` when empty."""
    return calendar_date(value, field, **bounds) if value else default


def username(value: str, field: str = "username") -> str:
    """3-150 ASCII letters, digits and ``@.+-_``."""
    if not USERNAME_RE.fullmatch(value):
        raise InvalidArgument(
            field,
            f"must be {MIN_USERNAME_CHARS}-{MAX_USERNAME_CHARS} characters of letters, digits and @.+-_",
        )
    return value


def username_key(value: str) -> str:
    """The case-insensitive form under which usernames are unique."""
    return value.lower()


def password(value: str, field: str = "password") -> str:
    """At least 8 characters (and at most 1024, to bound hashing work)."""
    if len(value) < MIN_PASSWORD_CHARS:
        raise InvalidArgument(field, f"must be at least {MIN_PASSWORD_CHARS} characters")
    if len(value) > MAX_PASSWORD_CHARS:
        raise InvalidArgument(field, f"must be at most {MAX_PASSWORD_CHARS} characters")
    return value


def email(value: str, field: str = "email") -> str:
    """A well-formed address like ``ada@example.com``."""
    if not value:
        raise InvalidArgument(field, "is required")
    local = value.partition("@")[0]
    if len(value) > MAX_EMAIL_CHARS or len(local) > MAX_EMAIL_LOCAL_CHARS or not EMAIL_RE.fullmatch(value):
        raise InvalidArgument(field, "is not a well-formed email address")
    return value


class FieldChecks:
    """Collects the InvalidArgument of each field check, to refuse them all at once.

        checks = fields.FieldChecks()
        loan_id = checks.run(fields.loan_id, request.loan_id)
        ...
        checks.raise_any()
    """

    def __init__(self) -> None:
        self._errors: list[InvalidArgument] = []

    def run(self, check, *args, **kwargs):
        """``check(*args, **kwargs)``, or None after noting the field it refused."""
        try:
            return check(*args, **kwargs)
        except InvalidArgument as exc:
            self._errors.append(exc)
            return None

    def raise_any(self) -> None:
        """Raise one InvalidArgument naming every refused field, if any was."""
        if self._errors:
            raise InvalidArgument.combined(self._errors)
