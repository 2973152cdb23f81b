#!/usr/bin/env bash
# How long a node with many partitions takes to come back: creates a topic of N partitions
# (64 KiB rings, segments of SEGMENT_BYTES), writes R records spread over them by key, stops
# weftd, then times start-to-ready three times (every partition's log recovered: closed
# segments below the recovery point opened from their indexes, the rest read through with
# CRCs checked, indexes rebuilt), the third with the recovery points removed (everything read
# through). Usage: recovery_startup.sh [BUILD_DIR] [PARTITIONS] [RECORDS] [SEGMENT_BYTES]
set -euo pipefail
build=${1:-build/release}
partitions=${2:-1000}
records=${3:-200000}
segment_bytes=${4:-1073741824}
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
"$build/tools/weft" --socket "$sock" topic create many --partitions "$partitions" --config ring.capacity.bytes=65536 --config max.batch.bytes=16384 --config segment.bytes="$segment_bytes" >/dev/null
seq 1 "$records" | sed 's/^\(.*\)$/key\1:value-\1-padding-padding-padding-padding/' |
  "$build/tools/weft" --socket "$sock" produce many --key-sep : 2>/dev/null
stop
du -sh "$dir/data" | awk '{print "data directory: " $1}'
restart() {
  local began ready
  began=$(date +%s%N)
  start
  ready=$(date +%s%N)
  echo "$1: partitions=$partitions records=$records segment_bytes=$segment_bytes restart_to_serving_ms=$(( (ready - began) / 1000000 ))"
}
restart "first restart"
"$build/tools/weft" --socket "$sock" topic describe many | head -3
stop
restart "second restart"
stop
find "$dir/data" -name recovery-point -delete
restart "without recovery points (every segment read through)"
