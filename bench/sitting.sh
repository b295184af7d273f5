#!/usr/bin/env bash
# One sitting: Metamorph, Temporal and DBOS on W1-W4 interleaved (one run at a time), then Metamorph W5-W7.
#
#   bench/sitting.sh [OUT_DIR]            (default bench/results)
#
# BROKERS (default "noida apache") lists the brokers Metamorph runs W1-W4 on, each in the same sitting:
# the embedded noida-db and real Apache Kafka (tests/apache; needs Java and Maven, see tests/setup.sh).
# PEERS_DIR points at the peer harness (default ../shared/bench/peers next to the repository). Before each run
# it waits until no process matching $QUIET_WAIT (default: pytest) is running, because the machine has 2 cores
# and any other load moves the numbers; a watcher logs every 2 s whether such a process appeared mid-run.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PEERS_DIR="${PEERS_DIR:-$(cd "$ROOT/.." && pwd)/shared/bench/peers}"
PY="${PYTHON:-python3}"
OUT="${1:-$HERE/results}"
DAY="$(date +%F)"
QUIET_WAIT="${QUIET_WAIT:-pytest}"
PEERS="${PEERS:-temporal dbos}"
REPS="${REPS:-3}"
BROKERS="${BROKERS:-noida apache}"
mkdir -p "$OUT"
ours="$OUT/metamorph-$DAY.jsonl"; peers="$OUT/peers-$DAY.jsonl"; events="$OUT/sitting-$DAY.log"

quiet() { while pgrep -f "$QUIET_WAIT" >/dev/null; do sleep 5; done; }
( while true; do if pgrep -f "$QUIET_WAIT" >/dev/null; then echo "$(date +%T) other load: $QUIET_WAIT running" >>"$events"; fi; sleep 2; done ) &
watcher=$!
trap 'kill $watcher 2>/dev/null' EXIT

run() {  # label command...
  local label="$1"; shift
  quiet
  echo "$(date +%T) start $label" | tee -a "$events" >&2
  "$@" >/dev/null || echo "$(date +%T) $label reported errors" | tee -a "$events" >&2
  echo "$(date +%T) end $label" | tee -a "$events" >&2
}

for w in ${WORKLOADS-W1 W2 W3 W4}; do
  for b in $BROKERS; do
    run "metamorph/$b $w" bash -c "cd '$ROOT' && '$PY' -m bench --broker $b --workloads $w --reps $REPS --out '$ours'"
  done
  for p in $PEERS; do
    run "$p $w" "$PEERS_DIR/run.sh" "$p" "$w" --reps "$REPS" --out "$peers"
  done
done
for w in ${EXTRA-W5 W6 W7}; do
  run "metamorph $w" bash -c "cd '$ROOT' && '$PY' -m bench --workloads $w --reps $REPS --out '$ours'"
done
cd "$ROOT" && "$PY" -m bench.report "$ours" "$peers"
