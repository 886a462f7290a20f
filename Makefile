# Makefile for idem, built with PGXS.
#
#   make && make install            build and install into the PostgreSQL found by pg_config
#   make installcheck               pg_regress, isolation specs and TAP tests against a running server
#   make dist                       idem-VERSION.zip for PGXN, from git (VERSION: META.json's)
#
# MODULE_big (not MODULES) so that SHLIB_LINK is honoured when libcurl is linked.
# The SQL entry points are in idem.c; every other source file is in src/,
# one concept each (DESIGN.md has the map).

MODULE_big = idem
OBJS = idem.o \
	src/catalog.o src/key.o src/fingerprint.o src/callsite.o \
	src/keytable.o src/keylock.o src/lease.o src/arbiter.o \
	src/sync.o src/sync_secrets.o src/sync_outbox.o src/sync_format.o \
	src/sync_worker.o src/dynamodb.o src/stats.o
SHLIB_LINK += -lcurl
PG_CONFIG ?= pg_config
# PostgreSQL built with OpenSSL: the request fingerprint uses its digest directly
ifneq (,$(findstring -lcrypto,$(shell $(PG_CONFIG) --libs)))
SHLIB_LINK += -lcrypto
endif

EXTENSION = idem
# every version script: t/040_upgrade.pl walks them all
DATA = $(wildcard idem--*.sql)
PGFILEDESC = "idem - idempotency keys for PostgreSQL"

REGRESS = setup call replay mismatch failure expiry roles purge bad_input replayed_flag hostile key_table lease lease_waits lease_sync_commit arbiter untyped_args fn_versions stats reserved_prefix
REGRESS_OPTS =
ISOLATION = first_writer_wins rollback_frees_key many_waiters wait_timeout repeatable_read expired_record lease_holders reindex_key key_order_deadlock
ISOLATION_OPTS =
TAP_TESTS = 1

PG_CPPFLAGS = -I$(srcdir)/src
# -Wextra without unused-parameter: callbacks and PG_FUNCTION_ARGS take arguments they do not use
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wmissing-prototypes

EXTRA_CLEAN = src/*.o src/*.bc

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The PGXN archive: the committed tree (or DIST_REF) below idem-VERSION/,
# without what .gitattributes marks export-ignore.  Run from a git checkout.
DIST_VERSION = $(shell perl -MJSON::PP -e 'print decode_json(join "", <>)->{version}' $(srcdir)/META.json)
DIST_REF ?= HEAD
DIST_DIR ?= $(CURDIR)
.PHONY: dist
dist:
	git -C $(srcdir) archive --format=zip --prefix=idem-$(DIST_VERSION)/ -o $(abspath $(DIST_DIR))/idem-$(DIST_VERSION).zip $(DIST_REF)
	@echo $(abspath $(DIST_DIR))/idem-$(DIST_VERSION).zip
