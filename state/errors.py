"""The state layer's exceptions, and the one place where SQLAlchemy's errors become ours.

Exception tree::

    Exception
    └── StateError          any failure of the state database; ``retryable`` says whether to try again
        │                   (retryable=True: connection refused or lost, timeout, lock/serialisation
        │                   conflict; retryable=False: constraint violated, bad schema, bad SQL)
        └── CustodyError    retryable=False: a waste handover out of order, from the wrong point, or
                            for a bag whose chain is closed
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc


class StateError(Exception):
    """A state operation failed; ``retryable`` tells the caller whether trying again may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class CustodyError(StateError):
    """A waste handover that the custody chain refuses (wrong order, wrong point, closed chain)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def is_retryable(exc: BaseException) -> bool:
    """Whether a SQLAlchemy error is transient: connection trouble, timeouts, lock or serialisation conflicts."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Re-raise SQLAlchemy errors raised inside the block as :class:`StateError` naming ``what`` failed."""
    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
        detail = str(exc.orig) if isinstance(exc, sa_exc.DBAPIError) else str(exc)
        raise StateError(f"{what}: {detail.strip().splitlines()[0] if detail.strip() else type(exc).__name__}",
                         retryable=is_retryable(exc)) from exc
