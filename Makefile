# Makefile for idem, built with PGXS.
#
#   make && make install            build and install into the PostgreSQL found by pg_config
#   make installcheck               pg_regress, isolation specs and TAP tests against a running server
#
# MODULE_big (not MODULES) so that SHLIB_LINK is honoured when libcurl is linked.

MODULE_big = idem
OBJS = idem.o callsite.o keytable.o keylock.o \
	sync.o sync_format.o sync_worker.o dynamodb.o
SHLIB_LINK += -lcurl

EXTENSION = idem
DATA = idem--1.0.sql
PGFILEDESC = "idem - idempotency keys for PostgreSQL"

REGRESS = setup call replay mismatch failure expiry roles bad_input replayed_flag hostile key_table
REGRESS_OPTS =
ISOLATION = first_writer_wins rollback_frees_key many_waiters wait_timeout repeatable_read expired_record
ISOLATION_OPTS =
TAP_TESTS = 1

# -Wextra without unused-parameter: callbacks and PG_FUNCTION_ARGS take arguments they do not use
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
