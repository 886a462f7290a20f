-- Arguments without a type.  Drivers send bind parameters with no type, as
-- PREPARE without parameter types does here; such calls take the overload
-- of VARIADIC idem.untyped[] and read each argument as an untyped literal.
-- Typed values keep going through "any", and a typed value of the wrong
-- type is still refused (42804).
CREATE FUNCTION t.label(n int8, note text, extra jsonb) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t.effects (fn, arg) VALUES ('label', note);
    RETURN format('%s #%s %s', note, n, coalesce(extra::text, 'none'));
END
$$;
CREATE TEMP TABLE before AS SELECT t.runs() AS runs;

-- A bind parameter of unknown type given for a jsonb parameter.
PREPARE call_json AS SELECT idem.idempotent_call($1, 't.place_order(jsonb)', $2) -> 'payload' AS payload;
SELECT parameter_types FROM pg_prepared_statements WHERE name = 'call_json';
EXECUTE call_json('untyped-1', '{"sku": 1}');
EXECUTE call_json('untyped-1', '{"sku": 1}');
SELECT idem.last_call_replayed() AS replayed;
-- The same request as a typed value or an untyped literal is the same
-- request: it replays.
SELECT idem.idempotent_call('untyped-1', 't.place_order(jsonb)', '{"sku": 1}'::jsonb) -> 'payload' AS payload;
SELECT idem.last_call_replayed() AS replayed;
SELECT idem.idempotent_call('untyped-1', 't.place_order(jsonb)', '{"sku":1}') -> 'payload' AS payload;
SELECT idem.last_call_replayed() AS replayed;
-- Another request under the key is refused as always.
SELECT t.try($$EXECUTE call_json('untyped-1', '{"sku": 2}')$$);
-- What the parameter is not, its type's input function says.
SELECT t.try($$EXECUTE call_json('untyped-2', 'not json')$$);

-- Several parameters of unknown type for parameters of three types, NULL
-- among them.
PREPARE call_label AS SELECT idem.idempotent_call($1, 't.label(int8, text, jsonb)', $2, $3, $4);
EXECUTE call_label('untyped-3', '7', 'gift', '{"wrap": true}');
EXECUTE call_label('untyped-3', '7', 'gift', '{"wrap": true}');
SELECT idem.last_call_replayed() AS replayed;
EXECUTE call_label('untyped-4', '8', 'card', NULL);
SELECT t.try($$EXECUTE call_label('untyped-5', 'eight', 'card', NULL)$$);

-- A typed argument among them sends the call through "any", where a
-- parameter of unknown type has no type to take.
SELECT t.try($$PREPARE mixed AS SELECT idem.idempotent_call($1, 't.label(int8, text, jsonb)', 9::int8, $2, $3)$$);
-- Typed values of the wrong type are refused, untyped ones or not.
SELECT t.try($$SELECT idem.idempotent_call('untyped-6', 't.place_order(jsonb)', '{"a": 1}'::text)$$);
SELECT t.try($$SELECT idem.idempotent_call('untyped-6', 't.place_order(jsonb)', 42)$$);
PREPARE typed_text(text, text) AS SELECT idem.idempotent_call($1, 't.place_order(jsonb)', $2);
SELECT t.try($$EXECUTE typed_text('untyped-6', '{"a": 1}')$$);

-- The wrong number of untyped arguments, and the array given explicitly.
SELECT t.try($$SELECT idem.idempotent_call('untyped-7', 't.place_order(jsonb)', '{}', '{}')$$);
SELECT idem.idempotent_call('untyped-8', 't.place_order(jsonb)', VARIADIC ARRAY['{"v": 1}']::idem.untyped[]) -> 'payload' AS payload;
SELECT t.try($$SELECT idem.idempotent_call('untyped-9', 't.place_order(jsonb)', VARIADIC ARRAY['{}', '{}']::idem.untyped[])$$);
SELECT t.try($$SELECT idem.idempotent_call('untyped-9', 't.place_order(jsonb)', VARIADIC NULL::idem.untyped[])$$);
-- A VARIADIC array of another type is still refused.
SELECT t.try($$SELECT idem.idempotent_call('untyped-9', 'upper(text)', VARIADIC ARRAY['a'])$$);

-- Executions: untyped-1, untyped-3, untyped-4 and untyped-8, once each.
SELECT t.runs() - runs AS executions FROM before;
DEALLOCATE ALL;
