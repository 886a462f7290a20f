-- bench/schema.sql: the objects the benchmark variants call.
--
-- Every variant ends up running bench.place_order, which inserts one row
-- into bench.orders (the side effect) and returns a small jsonb (the
-- outcome).  The row carries the idempotency key in "ref", so executions
-- per key can be counted afterwards.

CREATE SCHEMA bench;

CREATE TABLE bench.orders (
    id bigint GENERATED ALWAYS AS IDENTITY,
    placed_at timestamptz NOT NULL DEFAULT now(),
    ref text NOT NULL,
    payload jsonb NOT NULL
);

CREATE FUNCTION bench.place_order(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO bench.orders (ref, payload)
    VALUES (payload ->> 'ref', payload)
    RETURNING id INTO new_id;
    RETURN jsonb_build_object('order_id', new_id, 'status', 'placed');
END
$$;

-- Variant "floor": the least a scheme that records outcomes can do.  First
-- calls: one plain INSERT of the outcome under a fresh key (no claim, no
-- check).  Replays: one primary-key SELECT.  The statements themselves are
-- in bench/run; this is only the table.
CREATE TABLE bench.floor_records (
    key text COLLATE "C" PRIMARY KEY,
    outcome jsonb NOT NULL
);

-- Variant "checked": floor plus a lookup of the key before a first call's
-- insert, and a replay that evaluates the call's arguments as well; its own
-- table, so that it holds as many rows as floor's.
CREATE TABLE bench.checked_records (
    key text COLLATE "C" PRIMARY KEY,
    outcome jsonb NOT NULL
);

-- Variant "plpgsql": the pattern careful users write by hand.  Claim the
-- key with INSERT .. ON CONFLICT DO NOTHING (which waits for a concurrent
-- claimer to finish); on conflict replay the stored outcome, otherwise run
-- the function and UPDATE the claimed row with its outcome.
CREATE TABLE bench.pl_records (
    key text COLLATE "C" PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    outcome jsonb
);

CREATE FUNCTION bench.pl_call(p_key text, p_payload jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    result jsonb;
BEGIN
    INSERT INTO bench.pl_records (key) VALUES (p_key) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT r.outcome INTO result FROM bench.pl_records r WHERE r.key = p_key;
        RETURN result;
    END IF;
    result := bench.place_order(p_payload);
    UPDATE bench.pl_records SET outcome = result WHERE key = p_key;
    RETURN result;
END
$$;

-- Variant "handwritten" of the lease workloads: the key table application
-- code keeps for work done outside the database.  A request claims its key
-- by inserting a 'processing' row (INSERT .. ON CONFLICT DO NOTHING
-- RETURNING), does the work, then UPDATEs the row to 'succeeded' with the
-- response; a request whose insert finds the row SELECTs the stored
-- response.  The statements are in bench/run.
CREATE TABLE bench.idempotency_keys (
    key text PRIMARY KEY,
    status text NOT NULL,
    response jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
