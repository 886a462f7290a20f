#!/bin/sh
# install.sh: install what the HTTP example needs: node and npm (from apt,
# only when missing) and the pg driver, at the exact version in
# package-lock.json, into node_modules here.
# Idempotent and quiet: "npm ci" runs only when node_modules does not match
# the lock file (.installed-lock is the lock file it was installed from).
set -eu
cd "$(dirname "$0")"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	# NodeSource's nodejs package brings its own npm and conflicts with Debian's.
	command -v node >/dev/null 2>&1 || apt-get install -y -q nodejs >/dev/null
	command -v npm >/dev/null 2>&1 || apt-get install -y -q npm >/dev/null
fi
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json .installed-lock; then
	npm ci --no-audit --no-fund --loglevel=error >/dev/null
	cp package-lock.json .installed-lock
fi
# Let the postgres user (who runs the TAP tests and may run the servers) read it.
chmod -R a+rX .
