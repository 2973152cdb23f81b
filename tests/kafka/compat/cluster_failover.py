"""A Kafka client (confluent-kafka, librdkafka) producing and consuming through leader changes.

Usage: cluster_failover.py BOOTSTRAP TOPIC STOP_FILE

Creates TOPIC (one partition, replication factor 3), prints READY, then produces numbered
records with an idempotent acks=all producer while a consumer group member reads them, until
STOP_FILE exists (the test kills leaders meanwhile). Then it checks what Kafka promises:
every acknowledged record is in the partition exactly once, in the order it was sent, and the
group member saw every one of them. Prints OK with the counts, or FAIL with the reason, and
exits non-zero on failure. Every wait is bounded.
"""
import os
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOUND_S = 240  # the whole run, a backstop behind the test's own bound


def fail(message):
    print("FAIL " + message, flush=True)
    sys.exit(1)


def create_topic(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)], operation_timeout=10)
    try:
        futures[topic].result(20)
    except KafkaException as e:
        fail("creating %s: %s" % (topic, e))
    # Wait until the partition has a leader and its whole in-sync set.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=5)
        t = md.topics.get(topic)
        if t is not None and t.error is None and 0 in t.partitions:
            p = t.partitions[0]
            if p.leader >= 0 and len(p.isrs) == 3:
                return
        time.sleep(0.1)
    fail("%s has no leader with three in-sync replicas after 30 s" % topic)


def read_all(bootstrap, topic, expected_end, group=None, stop=None, seen=None):
    """Reads the partition from its start to `expected_end` (or until `stop` is set, for the
    group member). Returns the values in order."""
    settings = {
        "bootstrap.servers": bootstrap,
        "enable.auto.commit": group is not None,
        "auto.offset.reset": "earliest",
        "group.id": group or "verify-%d" % os.getpid(),
        "session.timeout.ms": 10000,
        "topic.metadata.refresh.interval.ms": 500,
    }
    consumer = Consumer(settings)
    if group is None:
        consumer.assign([TopicPartition(topic, 0, 0)])
    else:
        consumer.subscribe([topic])
    values = seen if seen is not None else []
    deadline = time.monotonic() + (BOUND_S if group is not None else 90)
    try:
        while time.monotonic() < deadline:
            # The group member may see a record twice (a rebalance re-reads uncommitted ones).
            if stop is not None and stop.is_set() and expected_end() is not None and len(set(values)) >= expected_end():
                break
            if stop is None and len(values) >= expected_end():
                break
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            values.append(int(message.value()))
    finally:
        consumer.close()
    return values


def committed(bootstrap, topic, group):
    """Prints the offset `group` has committed for the topic's partition 0, as a new member of
    the group asks for it (from whichever node coordinates the group now)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                answer = consumer.committed([TopicPartition(topic, 0)], timeout=5)
            except Exception as error:  # the coordinator is moving: ask again
                print("retry: %s" % error, flush=True)
                time.sleep(0.5)
                continue
            print("COMMITTED %d" % answer[0].offset, flush=True)
            return
    finally:
        consumer.close()
    fail("no committed offset for group %s within 60 s" % group)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--committed":
        committed(*sys.argv[2:5])
        return
    if len(sys.argv) != 4:
        fail("usage: cluster_failover.py BOOTSTRAP TOPIC STOP_FILE | --committed BOOTSTRAP TOPIC GROUP")
    bootstrap, topic, stop_file = sys.argv[1:4]
    started = time.monotonic()
    create_topic(bootstrap, topic)

    # The group member reads while leaders change.
    group_seen = []
    group_stop = threading.Event()
    acked_total = [None]
    member = threading.Thread(target=read_all, args=(bootstrap, topic, lambda: acked_total[0], "failover-group", group_stop, group_seen))
    member.start()

    acked = []
    errors = []

    def delivered(err, message):
        if err is None:
            acked.append((int(message.value()), message.offset()))
        else:
            errors.append(str(err))

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "message.timeout.ms": 120000,
        "topic.metadata.refresh.interval.ms": 500,
        "retry.backoff.ms": 50,
    })
    print("READY", flush=True)
    sent = 0
    while not os.path.exists(stop_file):
        if time.monotonic() - started > BOUND_S / 2:
            fail("the stop file %s did not appear within %d s" % (stop_file, BOUND_S // 2))
        for _ in range(50):
            producer.produce(topic, value=str(sent).encode(), partition=0, on_delivery=delivered)
            sent += 1
        producer.poll(0.01)  # about 5,000 records/s: a steady stream across every leader change
    remaining = producer.flush(90)
    if remaining != 0:
        fail("%d of %d records still unacknowledged 90 s after the last send" % (remaining, sent))
    if errors:
        fail("%d sends failed, first: %s" % (len(errors), errors[0]))

    # Every acknowledged record, exactly once, in send order (idempotence keeps retries single).
    acked_values = sorted(v for v, _ in acked)
    if acked_values != list(range(sent)):
        fail("acknowledged %d of %d sends" % (len(acked_values), sent))
    log = read_all(bootstrap, topic, lambda: sent)
    if len(log) != sent or log != list(range(sent)):
        duplicates = len(log) - len(set(log))
        missing = sorted(set(range(sent)) - set(log))[:10]
        fail("the partition holds %d records for %d acknowledged sends: %d duplicates, missing %s" % (len(log), sent, duplicates, missing))
    offsets = sorted(o for _, o in acked)
    if offsets != list(range(offsets[0], offsets[0] + sent)):
        fail("acknowledged offsets are not one contiguous run")

    acked_total[0] = sent
    group_stop.set()
    member.join(100)
    if member.is_alive():
        fail("the group member did not finish within 100 s")
    if set(group_seen) != set(range(sent)):
        fail("the group member saw %d distinct of %d records" % (len(set(group_seen)), sent))
    print("OK sent=%d acknowledged=%d in_log=%d group_member_saw=%d seconds=%.1f" %
          (sent, len(acked), len(log), len(group_seen), time.monotonic() - started), flush=True)


if __name__ == "__main__":
    main()
