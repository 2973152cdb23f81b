#!/usr/bin/env bash
# The replication issue's numbers with real processes: an etcd, three weftd in one cluster and a
# fourth weftd alone, all on loopback ports, then `weft perf --bootstrap` (librdkafka and the bare
# wire client, 1 KiB records, acks=all) against the single node and against the cluster, in the
# same run. Everything it starts it stops by pid; its files go in a temporary folder.
#
# Before the nodes start it measures the one disk under all four (O_DIRECT, 1 MiB writes into new
# files): one writer, as the single node writes, and three at once, as the three replicas do.
#
# Usage: bench/cluster/weftd_cluster_perf.sh [BUILD_DIR] [RECORDS] [LATENCY_RATE] [LOG_WRITES]
# (LOG_WRITES: every node's log_writes, buffered as weftd's default, or direct)
# With CLUSTER_JOB set, that command runs instead of `weft perf`, the three nodes' bootstrap list
# its last argument (bench/cluster/topics_while_writing.py).
set -euo pipefail

build=${1:-build/release}
records=${2:-300000}
rate=${3:-10000}
log_writes=${4:-buffered}
weftd=$build/tools/weftd
weft=$build/tools/weft
for tool in "$weftd" "$weft" /usr/bin/etcd; do
  [[ -x $tool ]] || { echo "missing $tool (build first: make build; etcd: Debian package etcd-server)" >&2; exit 2; }
done

work=$(mktemp -d /tmp/weftd-cluster-perf-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Free ports, picked by the kernel, for every listener (one left to the kernel at a node's start
# could take a port picked here for a node not started yet).
read -r -a ports <<<"$(/usr/bin/python3 -c '
import socket
s=[socket.socket() for _ in range(11)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"
etcd_client=${ports[0]} etcd_peer=${ports[1]}

# MB/s of `writers` dd processes at once, each writing `mib` MiB with O_DIRECT into its own new file.
disk_mb_per_sec() {
  local writers=$1 mib=$2 start end writing=()
  start=$(date +%s%N)
  for w in $(seq "$writers"); do
    dd if=/dev/zero of="$work/disk$w" bs=1M count="$mib" oflag=direct status=none &
    writing+=($!)
  done
  for pid in "${writing[@]}"; do wait "$pid" || { echo "dd with O_DIRECT failed under $work" >&2; return 1; }; done
  end=$(date +%s%N)
  rm -f "$work"/disk*
  echo $(( writers * mib * 1048576 * 1000 / (end - start) ))
}
one=$(disk_mb_per_sec 1 512) || exit 1
three=$(disk_mb_per_sec 3 256) || exit 1
echo "== the disk under the nodes (O_DIRECT, 1 MiB writes): one writer $one MB/s, three at once $three MB/s in all"
echo "   (replication factor 3 writes every byte three times: it is disk-bound below $((three / 3)) MB/s of records)"

/usr/bin/etcd --name perf --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "perf=http://127.0.0.1:$etcd_peer" --heartbeat-interval 50 --election-timeout 500 \
  --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  /usr/bin/python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$etcd_client/health', timeout=1)" 2>/dev/null && break
  sleep 0.1
done

cluster=()
for id in 1 2 3; do
  kafka=${ports[$((1 + id))]}
  "$weftd" --node-id "$id" --etcd "http://127.0.0.1:$etcd_client" --data-dir "$work/node$id" --socket "$work/node$id.sock" \
    --kafka-listen "127.0.0.1:$kafka" --metrics-listen "127.0.0.1:${ports[$((4 + id))]}" \
    --replication-listen "127.0.0.1:${ports[$((7 + id))]}" --default-replication-factor 3 \
    --lease-ttl-s 1 --log-writes "$log_writes" >"$work/node$id.log" 2>&1 &
  pids+=($!)
  cluster+=("127.0.0.1:$kafka")
done
single_port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$weftd" --data-dir "$work/single" --socket "$work/single.sock" --kafka-listen "127.0.0.1:$single_port" --metrics-listen off --log-writes "$log_writes" \
  >"$work/single.log" 2>&1 &
pids+=($!)
# Ready when etcd lists three live nodes and a controller, and every Kafka port answers
# (bounded: 10 s).
ready=0
for _ in $(seq 100); do
  status=$("$weft" cluster status --etcd "http://127.0.0.1:$etcd_client" 2>/dev/null || true)
  if [[ $status == *"3 live nodes, controller"* ]] &&
    /usr/bin/python3 -c '
import socket, sys
for port in sys.argv[1:]:
    socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()' \
      "${ports[2]}" "${ports[3]}" "${ports[4]}" "$single_port" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if (( ! ready )); then
  echo "the nodes did not come up in 10 s:" >&2
  tail -n 5 "$work"/*.log >&2
  exit 1  # the EXIT trap stops what was started
fi
bootstrap=$(IFS=,; echo "${cluster[*]}")
if [[ -n ${CLUSTER_JOB:-} ]]; then
  $CLUSTER_JOB "$bootstrap"
  exit
fi

# Latency first, on idle nodes (after the throughput runs, three replicas' writeback on one disk
# stalls writes for a while), then throughput.
for target in "single node|127.0.0.1:$single_port" "three nodes, replication factor 3|$bootstrap"; do
  echo "== ${target%%|*}: acks=all latency at $rate records/s"
  "$weft" perf --bootstrap "${target#*|}" --acks all --record-size 1024 --records 10000 \
    --latency-records $((rate * 3)) --latency-rate "$rate" | grep -E "latency|acks="
done
for target in "single node|127.0.0.1:$single_port" "three nodes, replication factor 3|$bootstrap"; do
  echo "== ${target%%|*}: acks=all throughput, $records records"
  "$weft" perf --bootstrap "${target#*|}" --acks all --record-size 1024 --records "$records" --latency-records 0 | tail -n +2
  sync
done
"$weft" cluster status --etcd "http://127.0.0.1:$etcd_client" | head -6
