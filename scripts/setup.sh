#!/usr/bin/env bash
# setup.sh: install what building and testing idem needs on Debian 12.
# Safe to run again: packages already present are left alone.
set -euo pipefail

packages=(postgresql-15 postgresql-server-dev-15 libipc-run-perl
          libcurl4-openssl-dev libssl-dev make gcc
          pgbouncer sqlsmith python3-psycopg prometheus-postgres-exporter prometheus python3-psycopg-pool python3-fastapi python3-uvicorn python3-pytest python3-httpx)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup.sh: missing packages ${missing[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${missing[@]}" >/dev/null
fi
