#!/usr/bin/env bash
# soak.sh: the race-with-kills test (t/020_race_kills.pl) run for as long as asked.
#
#   scripts/soak.sh --minutes N [--workers W] [--seed S]
#
# Many sessions retry a moving window of a few hundred keys through a function
# that writes a side effect and sleeps a few milliseconds, while backends are
# killed with SIGKILL and the server is stopped in immediate mode and restarted
# at random moments.  Then it checks every key (one side effect per committed
# record, none without a record, no key stuck, every client got the recorded
# outcome, amcheck on the key table's index) and prints its tallies.  Builds
# and installs idem below a scratch folder like scripts/test.sh; exits non-zero
# if any check failed.
set -euo pipefail

minutes=
workers=6
seed=
while [ $# -gt 0 ]; do
    case $1 in
        --minutes) minutes=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        *) echo "usage: $0 --minutes N [--workers W] [--seed S]" >&2; exit 2 ;;
    esac
done
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -lt 1 ]; then
    echo "usage: $0 --minutes N [--workers W] [--seed S]   (N >= 1)" >&2; exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
# shellcheck source=cluster.sh
source "$root/scripts/cluster.sh"

scratch=$(mktemp -d /tmp/idem-soak.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

stage_build "$root" "$scratch"

echo "== soak: race with kills for $minutes minute(s), $workers clients"
status=0
as_pg env IDEM_RACE_SECONDS=$((minutes * 60)) IDEM_RACE_WORKERS="$workers" ${seed:+IDEM_RACE_SEED=$seed} \
    make -C "$scratch/src" -s installcheck REGRESS= ISOLATION= \
    PROVE_TESTS=t/020_race_kills.pl PROVE_FLAGS=--verbose >"$scratch/soak.log" 2>&1 || status=$?
grep -E '^# (seed|tally)|^(not )?ok ' "$scratch/soak.log" || true
if [ "$status" -ne 0 ]; then
    echo "== soak FAILED; log of the test:"
    tail -100 "$scratch/src/tmp_check/log/regress_log_020_race_kills" 2>/dev/null || tail -100 "$scratch/soak.log"
    exit 1
fi
echo "== soak passed"
