"""What deleting old segments costs a producer: fills a topic of 256 MiB segments, syncs the disk
(retention deletes old, clean segments), then sends 1 KiB records at a steady pace (acks=1,
linger.ms=0) while retention.ms expires the filled segments. Prints the acknowledgement latency
of the first seconds (before retention can act: the same run's baseline) and of the rest, and
every second whose slowest acknowledgement took over 10 ms.

usage: /usr/bin/python3 bench/kafka/retention_stall.py BOOTSTRAP [FILL_MIB=1024] [RETENTION_MS=20000] [SECONDS=30]
"""
import os
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from fill import fill

RATE = 2000  # records/s in the paced run
QUIET_SECONDS = 10  # the paced run's first seconds: retention cannot act yet (RETENTION_MS >= 20 s)


def percentiles(latencies):
    latencies = sorted(latencies)
    if not latencies:
        return "no record"
    at = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1e3
    return f"p50 {at(0.5):.2f} ms, p99 {at(0.99):.2f} ms, p99.9 {at(0.999):.2f} ms, max {latencies[-1] * 1e3:.1f} ms ({len(latencies)} records)"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    bootstrap = sys.argv[1]
    fill_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    retention_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 30
    if retention_ms < 2000 * QUIET_SECONDS:
        sys.exit(f"RETENTION_MS must be at least {2000 * QUIET_SECONDS}: the first {QUIET_SECONDS} s are the baseline")
    topic = f"retention-stall-{os.getpid()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"segment.bytes": str(256 << 20), "retention.ms": str(retention_ms)}
    admin.create_topics([NewTopic(topic, 1, 1, config=config)])[topic].result(10)
    value = b"x" * 1024
    filler = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5, "queue.buffering.max.kbytes": 1048576})
    fill_seconds = fill(filler, topic, fill_mib * 1024, value)
    print(f"filled {fill_mib} MiB in {fill_seconds:.1f} s; syncing", flush=True)
    os.sync()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 0})
    acked = []  # (second of the run, latency)
    start = time.perf_counter()
    total = int(seconds * RATE)
    for i in range(total):
        due = start + i / RATE
        while (now := time.perf_counter()) < due:
            producer.poll(min(0.0005, due - now))
        producer.produce(topic, value, partition=0, on_delivery=lambda err, msg, t=now: acked.append((t - start, time.perf_counter() - t)))
    producer.flush(30)
    slow = {}
    for at, latency in acked:
        slow[int(at)] = max(slow.get(int(at), 0), latency)
    for second, latency in sorted(slow.items()):
        if latency > 0.010:
            print(f"  second {second:3}: slowest acknowledgement {latency * 1e3:.1f} ms")
    print(f"acks=1 at {RATE}/s, first {QUIET_SECONDS} s: {percentiles([l for a, l in acked if a < QUIET_SECONDS])}")
    print(f"acks=1 at {RATE}/s, the rest:       {percentiles([l for a, l in acked if a >= QUIET_SECONDS])}")
    print(f"acknowledged {len(acked)} of {total}")
    admin.delete_topics([topic])[topic].result(10)


if __name__ == "__main__":
    main()
