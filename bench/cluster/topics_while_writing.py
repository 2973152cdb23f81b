"""What making topics costs a replicated partition's writers: confluent-kafka sends 1 KiB records
at 1 000/s with acks=all to a topic replicated on three nodes for 8 s; 2 s in, an AdminClient
creates 40 topics of one partition (replication factor 3) in one CreateTopics. Prints the
records' acknowledgement latency, p50 / p99 / max, over the whole run and from the CreateTopics
to 1 s after it ended.

usage: /usr/bin/python3 bench/cluster/topics_while_writing.py BOOTSTRAP
(with a cluster: CLUSTER_JOB="/usr/bin/python3 bench/cluster/topics_while_writing.py"
 bench/cluster/weftd_cluster_perf.sh)
"""
import sys
import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

RATE = 1000
SECONDS = 8
TOPICS = 40


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    bootstrap = sys.argv[1]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic("steady", 1, 3)]).values():
        future.result(30)
    time.sleep(2)  # leaders elected and known
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    for _ in range(50):
        producer.produce("steady", b"w")
        producer.flush(10)
    acknowledged = []  # (sent, latency)
    created = []  # (start, end)

    def create():
        start = time.perf_counter()
        futures = admin.create_topics([NewTopic("made-%d" % i, 1, 3) for i in range(TOPICS)])
        for future in futures.values():
            future.result(60)
        created.append((start, time.perf_counter()))

    creator = threading.Thread(target=create)
    start = time.perf_counter()
    for n in range(RATE * SECONDS):
        due = start + n / RATE
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        sent = time.perf_counter()
        producer.produce("steady", b"x" * 1024,
                         on_delivery=lambda err, msg, s=sent: err is None and acknowledged.append((s, time.perf_counter() - s)))
        producer.poll(0)
        if n == RATE * 2:
            creator.start()
    producer.flush(30)
    creator.join()
    (made_from, made_to), = created
    every = sorted(latency for _, latency in acknowledged)
    during = sorted(latency for sent, latency in acknowledged if made_from <= sent <= made_to + 1.0)
    ms = lambda v, q: v[min(len(v) - 1, int(len(v) * q))] * 1e3
    print(f"{TOPICS} topics (replication factor 3) made in {made_to - made_from:.2f} s")
    print(f"acks=all, all records:          n={len(every)} p50 {ms(every, .5):.2f} ms  p99 {ms(every, .99):.2f} ms  max {every[-1] * 1e3:.2f} ms")
    print(f"acks=all, during the creation:  n={len(during)} p50 {ms(during, .5):.2f} ms  p99 {ms(during, .99):.2f} ms  max {during[-1] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
