-- Settings under "idem." that idem does not define.  From PostgreSQL 15 idem
-- reserves the prefix: such a setting is refused, and a placeholder set
-- before idem loads is removed with a warning when it loads.  Before 15 the
-- server cannot reserve a prefix: it keeps them as placeholders and warns
-- when idem loads (expected/reserved_prefix_1.out, where the first query
-- answers f, so that this variant never passes on 15 or later).
SELECT current_setting('server_version_num')::int >= 150000 AS prefix_reserved;
SELECT idem.last_call_replayed() AS loads_the_library;
SELECT t.try($$SET idem.no_such_setting = 1$$);
SELECT t.try($$SET idem.made_up = 1$$);
\c -
SET idem.made_up = 'x';
SELECT idem.last_call_replayed() AS loads_the_library;
SELECT t.try($$SHOW idem.made_up$$), current_setting('idem.made_up', true) AS placeholder;
