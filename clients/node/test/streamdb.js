// streamdb.js: the tables and the SQL function of the stream tests.
import { CHECKPOINT_DDL } from './stream.js';

export async function setupSchema(pool) {
  await pool.query(`
    CREATE SCHEMA IF NOT EXISTS stream_test;
    CREATE TABLE IF NOT EXISTS stream_test.ledger (
      id bigserial PRIMARY KEY, scenario text NOT NULL, event text NOT NULL, amount int, charge text);
    CREATE TABLE IF NOT EXISTS stream_test.poison (scenario text, event text, PRIMARY KEY (scenario, event));
    -- One effect of an event: a ledger row.  A poisoned event raises instead.
    CREATE OR REPLACE FUNCTION stream_test.apply(e jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
    DECLARE
        effect bigint;
    BEGIN
        IF EXISTS (SELECT 1 FROM stream_test.poison WHERE scenario = e ->> 's' AND event = e ->> 'id') THEN
            RAISE EXCEPTION 'event % is poisoned', e ->> 'id';
        END IF;
        INSERT INTO stream_test.ledger (scenario, event, amount) VALUES (e ->> 's', e ->> 'id', (e ->> 'amount')::int)
            RETURNING id INTO effect;
        RETURN jsonb_build_object('effect', effect);
    END $$;
    ${CHECKPOINT_DDL};`);
}

/** Effects per event of a scenario: { rows, events, most } (most: the largest count of one event). */
export async function ledgerCounts(pool, scenario) {
  const { rows: [r] } = await pool.query(`SELECT coalesce(sum(n), 0)::int AS rows, count(*)::int AS events,
      coalesce(max(n), 0)::int AS most
    FROM (SELECT event, count(*) AS n FROM stream_test.ledger WHERE scenario = $1 GROUP BY event) g`, [scenario]);
  return r;
}
