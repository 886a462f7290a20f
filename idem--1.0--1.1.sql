/* idem--1.0--1.1.sql: update idem 1.0 to 1.1 */

\echo Use "ALTER EXTENSION idem UPDATE TO '1.1'" to load this file. \quit

-- Every object this script creates or changes is defined exactly as in
-- idem--1.1.sql; t/040_upgrade.pl compares the two from the catalogs.

-- ---------------------------------------------------------------------
-- hardening
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- DynamoDB sync status
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- monitoring
-- ---------------------------------------------------------------------
