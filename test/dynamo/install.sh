#!/bin/sh
# install.sh: prepare the node harness of idem's DynamoDB sync tests.
# Idempotent: installs nodejs/npm from apt only when node is missing, then
# runs "npm ci" (exact versions from package-lock.json) unless node_modules
# already matches the lock file.
set -eu
cd "$(dirname "$0")"
if ! command -v node >/dev/null 2>&1; then
	apt-get update
	apt-get install -y nodejs npm
fi
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json .installed-lock; then
	npm ci --no-audit --no-fund
	cp package-lock.json .installed-lock
fi
# Let the postgres user (who runs the TAP tests) read the harness.
chmod -R a+rX .
