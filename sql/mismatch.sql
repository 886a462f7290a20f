-- Rule 4: the same key with another function or other arguments is an error
-- naming the key; arguments compare as values.
SELECT t.runs() AS runs_before, t.records() AS records_before;

-- Other arguments.
SELECT t.try($$SELECT idem.idempotent_call('order-1', 't.place_order(jsonb)', '{"sku": 2}'::jsonb)$$);
-- Another function with the same argument.
CREATE FUNCTION t.cancel_order(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT payload $$;
SELECT t.try($$SELECT idem.idempotent_call('order-1', 't.cancel_order(jsonb)', '{"sku": 1}'::jsonb)$$);
-- A NULL argument where the first call had a value.
SELECT t.try($$SELECT idem.idempotent_call('order-1', 't.place_order(jsonb)', NULL::jsonb)$$);

-- Nothing ran, nothing changed.
SELECT t.runs() AS runs_after, t.records() AS records_after;
SELECT outcome FROM idem.records WHERE key = 'order-1';

-- Key order and white space in jsonb do not matter.
SELECT idem.idempotent_call('order-6', 't.place_order(jsonb)', '{"a": 1, "b": [1, 2]}'::jsonb) ->> 'effect' IS NOT NULL AS first;
SELECT idem.last_call_replayed() AS replayed_1,
       idem.idempotent_call('order-6', 't.place_order(jsonb)', '{ "b":[1,2],   "a":1 }'::jsonb) ->> 'payload' AS reordered,
       idem.last_call_replayed() AS replayed_2;
-- Numbers compare as numbers.
SELECT idem.idempotent_call('order-6', 't.place_order(jsonb)', '{"a": 1.0, "b": [1, 2.00]}'::jsonb) ->> 'payload' AS same_numbers;
SELECT count(*) AS order_6_runs FROM t.effects WHERE arg LIKE '%"a": 1%';

-- Scalar arguments compare as values too.
CREATE FUNCTION t.amount(x numeric, who text) RETURNS numeric LANGUAGE plpgsql AS $$
BEGIN INSERT INTO t.effects (fn, arg) VALUES ('amount', x::text); RETURN x; END $$;
SELECT idem.idempotent_call('pay-1', 't.amount(numeric,text)', 10.50, 'ann'::text);
SELECT idem.idempotent_call('pay-1', 't.amount(numeric,text)', 10.5000, 'ann'::text) AS same_value;
SELECT t.try($$SELECT idem.idempotent_call('pay-1', 't.amount(numeric,text)', 10.51, 'ann'::text)$$);
SELECT t.try($$SELECT idem.idempotent_call('pay-1', 't.amount(numeric,text)', 10.50, 'Ann'::text)$$);
-- Argument order matters.
CREATE FUNCTION t.pair_text(a text, b text) RETURNS text LANGUAGE sql AS $$ SELECT a || b $$;
SELECT idem.idempotent_call('pair-text', 't.pair_text(text,text)', 'x'::text, 'y'::text);
SELECT t.try($$SELECT idem.idempotent_call('pair-text', 't.pair_text(text,text)', 'y'::text, 'x'::text)$$);
SELECT count(*) AS amount_runs FROM t.effects WHERE fn = 'amount';
