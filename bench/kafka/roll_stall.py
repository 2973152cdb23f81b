"""What a segment roll costs producers: sends FILL_MIB of 1 KiB records as fast as one
confluent-kafka producer can (acks=1, linger.ms=5) into a topic of SEGMENT_MIB segments, and
prints the slowest acknowledgement of every quarter second. Run it with segments larger than the
fill (no roll: the same run's baseline) and with small ones.

usage: /usr/bin/python3 bench/kafka/roll_stall.py BOOTSTRAP [FILL_MIB=1536] [SEGMENT_MIB=256]
"""
import os
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from fill import fill


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    bootstrap = sys.argv[1]
    fill_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1536
    segment_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    topic = f"roll-stall-{os.getpid()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"segment.bytes": str(segment_mib << 20)})])[topic].result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5, "queue.buffering.max.kbytes": 65536})
    value = b"x" * 1024
    acked = []  # (time sent, latency)
    start = time.perf_counter()
    elapsed = fill(producer, topic, fill_mib * 1024, value,
                   lambda sent: lambda err, msg: acked.append((sent - start, time.perf_counter() - sent)))
    print(f"{fill_mib} MiB in {elapsed:.2f} s = {fill_mib / elapsed:.0f} MiB/s, {segment_mib} MiB segments")
    slowest = {}
    for at, latency in acked:
        slowest[int(at * 4)] = max(slowest.get(int(at * 4), 0), latency)
    print("slowest acknowledgement per 250 ms (ms): " + " ".join(f"{v * 1e3:.0f}" for _, v in sorted(slowest.items())))
    print(f"slowest overall: {max(slowest.values()) * 1e3:.0f} ms")
    admin.delete_topics([topic])[topic].result(10)


if __name__ == "__main__":
    main()
