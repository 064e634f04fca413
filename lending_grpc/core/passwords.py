"""Password hashing with argon2id at the OWASP Password Storage Cheat Sheet's parameters."""

from __future__ import annotations

import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP: argon2id, m=19 MiB, t=2, p=1.
OWASP_MEMORY_KIB = 19 * 1024
OWASP_TIME_COST = 2
# Far cheaper parameters for test suites only (LENDING_INSECURE_FAST_PASSWORD_HASH).
TEST_ONLY_MEMORY_KIB = 64
TEST_ONLY_TIME_COST = 1


class Passwords:
    """Hashes and verifies passwords, bounding how many hashes run at once.

    Each hash costs ~19 MiB and tens of milliseconds of CPU; the semaphore keeps
    a login burst from exhausting memory or starving the other RPCs.
    """

    def __init__(self, *, fast_insecure: bool = False, max_concurrent: int = 2) -> None:
        if fast_insecure:
            self._hasher = PasswordHasher(
                time_cost=TEST_ONLY_TIME_COST, memory_cost=TEST_ONLY_MEMORY_KIB, parallelism=1
            )
        else:
            self._hasher = PasswordHasher(
                time_cost=OWASP_TIME_COST, memory_cost=OWASP_MEMORY_KIB, parallelism=1
            )
        self._slots = threading.BoundedSemaphore(max_concurrent)
        # Verified against when the username is unknown, so that an unknown
        # user costs the same time as a wrong password (no timing oracle).
        self._decoy_hash = self._hasher.hash("decoy password that matches nothing")

    def hash(self, password: str) -> str:
        """An argon2id hash string (salt and parameters included)."""
        with self._slots:
            return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; with ``stored_hash`` None, spends the same time and fails."""
        with self._slots:
            try:
                return (
                    self._hasher.verify(stored_hash or self._decoy_hash, password) and stored_hash is not None
                )
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether the hash was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(stored_hash)
