"""Pieces shared by the sync and async halves: SQL text, the claim's result, backoff, JSON values."""

import json
import random
from dataclasses import dataclass
from typing import Any, Optional

# The claim fails at once with IK409 when the key is held, so that a waiting caller backs off
# without sitting on a connection that the holder may need to finish.
NO_WAIT = "set_config('idem.wait_timeout', '0', true)"
# Mode 'transaction': the transaction that holds the uncommitted claim is also ended by the server
# once it sits idle for a whole lease (milliseconds, the parameter), as a lapsed lease would free the key.
IDLE_FOR_A_LEASE = "set_config('idle_in_transaction_session_timeout', %s, true)"


def claim_after(*settings):
    """The claim's statement with set_config calls that run before it in the same statement (one round
    trip less each): they are a FROM subquery whose results the lease argument is computed from, so no
    plan can call the claim first.  Their parameters come before the claim's (key, request, lease)."""
    made = ", ".join(f"{setting} AS s{i}" for i, setting in enumerate(settings))
    ran = " AND ".join(f"s.s{i} IS NOT NULL" for i in range(len(settings)))
    return ("SELECT c.state, c.token, c.outcome, c.recovery_point, c.recovery_data"
            f" FROM (SELECT {made}) AS s,"
            f" LATERAL idem.claim(%s, %s, CASE WHEN {ran} THEN make_interval(secs => %s) END) AS c")


# Mode 'lease': (key, request, lease).  Mode 'transaction': (idle milliseconds, key, request, lease).
CLAIM_SQL = claim_after(NO_WAIT)
CLAIM_HELD_SQL = claim_after(NO_WAIT, IDLE_FOR_A_LEASE)
CHECKPOINT_SQL = "SELECT idem.checkpoint(%s, %s, %s, %s)"
EXTEND_SQL = "SELECT idem.extend(%s, %s, make_interval(secs => %s))"
RELEASE_SQL = "SELECT idem.release(%s, %s)"
COMPLETE_SQL = "SELECT idem.complete(%s, %s, %s)"


@dataclass(frozen=True)
class Recovery:
    """The last checkpoint of an earlier holder whose lease lapsed or who released."""

    point: str
    data: Any


def as_json(value):
    """The value as every retry will see it: through JSON, as jsonb gives it back."""
    return json.loads(json.dumps(value))


def backoff_delays(initial=0.05, cap=1.0):
    """Growing pauses with jitter between claims of a key in flight."""
    delay = initial
    while True:
        yield delay * (0.5 + random.random() / 2)
        delay = min(delay * 2, cap)


def recovery_of(row) -> Optional[Recovery]:
    """The Recovery of a claim's row, or None."""
    if row[3] is None:
        return None
    return Recovery(row[3], row[4])
