"""idem_client: idempotency keys for Python applications on PostgreSQL's idem extension (lease API)."""

from ._common import Recovery
from .aio import AsyncStep, aonce
from .errors import (ArbiterUnavailable, IdemError, InvalidKey, KeyInFlight, ReentrantCall, RequestMismatch,
                     StaleToken)
from .sync import Step, idempotent, once

__all__ = ["once", "aonce", "idempotent", "Step", "AsyncStep", "Recovery", "IdemError", "InvalidKey",
           "KeyInFlight", "StaleToken", "RequestMismatch", "ArbiterUnavailable", "ReentrantCall"]
