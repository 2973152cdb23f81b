#!/usr/bin/env bash
# How long a node with many partitions takes to come back: creates a topic of N partitions
# (64 KiB rings), writes R records spread over them by key, stops weftd, starts it again and
# times start-to-ready (every partition's log recovered: segments scanned, CRCs checked,
# indexes rebuilt). Usage: recovery_startup.sh [BUILD_DIR] [PARTITIONS] [RECORDS]
set -euo pipefail
build=${1:-build/release}
partitions=${2:-1000}
records=${3:-200000}
dir=$(mktemp -d /tmp/weft-recovery-XXXXXX)
pid=
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
sock="$dir/weftd.sock"
start() {
  "$build/tools/weftd" --socket "$sock" --data-dir "$dir/data" --no-hugepages --log-level warn >>"$dir/weftd.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 6000); do
    "$build/tools/weft" --socket "$sock" status >/dev/null 2>&1 && return 0
    sleep 0.005
  done
  echo "weftd did not come up" >&2; cat "$dir/weftd.log" >&2; return 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }

start
"$build/tools/weft" --socket "$sock" topic create many --partitions "$partitions" --config ring.capacity.bytes=65536 --config max.batch.bytes=16384 >/dev/null
seq 1 "$records" | sed 's/^\(.*\)$/key\1:value-\1-padding-padding-padding-padding/' |
  "$build/tools/weft" --socket "$sock" produce many --key-sep : 2>/dev/null
stop
du -sh "$dir/data" | awk '{print "data directory: " $1}'
began=$(date +%s%N)
start
ready=$(date +%s%N)
echo "partitions=$partitions records=$records restart_to_serving_ms=$(( (ready - began) / 1000000 ))"
"$build/tools/weft" --socket "$sock" topic describe many | head -3
