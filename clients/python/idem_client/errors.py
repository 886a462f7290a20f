"""Typed exceptions for idem's IK SQLSTATEs, each with the HTTP status to answer."""

import contextlib

import psycopg


class IdemError(Exception):
    """An error of idem about an idempotency key; `http_status` is the status to answer."""

    sqlstate = None
    http_status = 500

    def __init__(self, message, *, key=None, detail=None, retry_after=None, cause=None):
        super().__init__(message)
        self.key = key
        self.detail = detail
        self.retry_after = retry_after
        self.__cause__ = cause


class InvalidKey(IdemError):
    """IK400: the key is empty or longer than idem.max_key_length."""

    sqlstate = "IK400"
    http_status = 400


class KeyInFlight(IdemError):
    """IK409: another holder's lease is live and did not end within the wait."""

    sqlstate = "IK409"
    http_status = 409


class StaleToken(IdemError):
    """IK412: this holder's token no longer holds the key (its lease lapsed and a retry took it over)."""

    sqlstate = "IK412"
    http_status = 409


class RequestMismatch(IdemError):
    """IK422: the key was used for a different request."""

    sqlstate = "IK422"
    http_status = 422


class ArbiterUnavailable(IdemError):
    """IK503: arbiter mode could not claim the key in DynamoDB; nothing ran, retry later."""

    sqlstate = "IK503"
    http_status = 503


class ReentrantCall(IdemError):
    """IK508: a call used its own key again."""

    sqlstate = "IK508"
    http_status = 500


_BY_SQLSTATE = {cls.sqlstate: cls for cls in
                (InvalidKey, KeyInFlight, StaleToken, RequestMismatch, ArbiterUnavailable, ReentrantCall)}


def translate(exc, key=None):
    """The typed error for a psycopg error with an IK SQLSTATE, or None for any other error."""
    if not isinstance(exc, psycopg.Error):
        return None
    cls = _BY_SQLSTATE.get(getattr(exc, "sqlstate", None))
    if cls is None:
        return None
    diag = exc.diag
    return cls(diag.message_primary or str(exc), key=key, detail=diag.message_detail, cause=exc)


@contextlib.contextmanager
def translated(key):
    """Raise the typed error in place of a psycopg error with an IK SQLSTATE, for the key at hand.

    A plain `with` works around awaits too, so the sync and async halves share it."""
    try:
        yield
    except psycopg.Error as exc:
        typed = translate(exc, key)
        if typed is None:
            raise
        raise typed from exc
