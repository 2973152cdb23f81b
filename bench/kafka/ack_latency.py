"""Acknowledgement latency of one producer sending one 1 KiB record at a time (confluent-kafka,
linger.ms=0): the time from produce() to its delivery report, p50 / p99 / max.

usage: /usr/bin/python3 bench/kafka/ack_latency.py BOOTSTRAP ACKS [RECORDS]   (ACKS: 0, 1 or -1)
"""
import sys
import time

from confluent_kafka import Producer


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    bootstrap, acks = sys.argv[1], sys.argv[2]
    records = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 0})
    latencies = []
    for _ in range(records):
        sent = time.perf_counter()
        producer.produce("ack-latency", b"x" * 1024, on_delivery=lambda err, msg, t=sent: latencies.append(time.perf_counter() - t))
        deadline = sent + 2.0  # bounded: a record not acknowledged in 2 s is counted missing
        while len(latencies) < _ + 1 and time.perf_counter() < deadline:
            producer.poll(0.0001)
    producer.flush(10)
    latencies.sort()
    if not latencies:
        sys.exit("no record was acknowledged")
    us = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1e6
    print(f"acks={acks} records={len(latencies)}/{records} p50={us(0.5):.0f}us p99={us(0.99):.0f}us max={latencies[-1] * 1e6:.0f}us")


if __name__ == "__main__":
    main()
