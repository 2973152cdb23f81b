"""kafka-python (pure Python, its own protocol code) against weft's Kafka listener.

usage: /usr/bin/python3 kafka_python_clients.py BOOTSTRAP TOPIC_PREFIX

Creates <prefix>-kp (3 partitions) with KafkaAdminClient; a KafkaProducer (acks=all) sends 500
keyed records and every future's metadata gives offsets 0, 1, 2, ... per partition in send
order; a KafkaConsumer in a group (subscribe) reads all 500 within a bounded time, each once at
the offset the producer was told, commits synchronously, and committed() gives each partition's
count; after it closes, the admin client reads the same offsets back (OffsetFetch) and lists
the group.

Exits 0 when all holds, 1 with a FAIL line otherwise; the whole run is bounded at 60 s.
"""

import faulthandler
import logging
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, NoBrokersAvailable

from report import fail, step

PARTITIONS = 3
RECORDS = 500


def connect(what, make):
    try:
        return make()
    except NoBrokersAvailable:
        fail(f"{what}: kafka-python found no broker it can talk to (its ApiVersions probe or the connection failed)")
    except KafkaError as e:
        fail(f"{what}: {e!r}")


def create_topic(admin, topic):
    try:
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], timeout_ms=10000)
    except KafkaError as e:
        fail(f"CreateTopics {topic}: {e!r}")
    step(f"created {topic} with {PARTITIONS} partitions")


def produce(bootstrap, topic):
    """Returns {(partition, offset): (key, value)} from the futures' metadata."""
    producer = connect("KafkaProducer", lambda: KafkaProducer(
        bootstrap_servers=bootstrap, client_id="weft-compat-kafka-python-producer", acks="all", linger_ms=5,
        max_block_ms=10000, request_timeout_ms=10000))
    sent = []
    for i in range(RECORDS):
        key, value = f"key-{i % 31}".encode(), f"kafka-python-{i}".encode()
        try:
            sent.append((key, value, producer.send(topic, key=key, value=value)))
        except KafkaError as e:
            fail(f"send record {i}: {e!r}")
    producer.flush(timeout=30)
    stored = {}
    offsets = {}
    for i, (key, value, future) in enumerate(sent):
        try:
            md = future.get(timeout=10)
        except KafkaError as e:
            fail(f"record {i}: {e!r}")
        if md.topic != topic or not 0 <= md.partition < PARTITIONS:
            fail(f"record {i}: metadata {md}")
        offsets.setdefault(md.partition, []).append(md.offset)
        stored[(md.partition, md.offset)] = (key, value)
    producer.close(timeout=10)
    for partition, got in sorted(offsets.items()):
        # A fresh topic: the broker hands out 0, 1, 2, ... in the order the records were sent.
        if got != list(range(len(got))):
            fail(f"partition {partition}: offsets in send order {got[:10]}...; want 0..{len(got) - 1}, increasing")
    step(f"produced {RECORDS} records; offsets per partition "
         f"{ {p: len(o) for p, o in sorted(offsets.items())} } increase from 0 in send order")
    return stored


def consume_and_commit(bootstrap, topic, group, stored):
    consumer = connect("KafkaConsumer", lambda: KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, client_id="weft-compat-kafka-python-consumer",
        auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=10000,
        heartbeat_interval_ms=1000, max_poll_interval_ms=15000, request_timeout_ms=20000))
    consumer.subscribe([topic])
    seen = {}
    deadline = time.monotonic() + 40
    while len(seen) < RECORDS:
        if time.monotonic() > deadline:
            fail(f"consumed {len(seen)} of {RECORDS} records in 40 s (assignment {consumer.assignment()})")
        try:
            batches = consumer.poll(timeout_ms=500)
        except KafkaError as e:
            fail(f"poll: {e!r}")
        for tp, records in batches.items():
            for r in records:
                where = (r.partition, r.offset)
                if where in seen:
                    fail(f"partition {r.partition} offset {r.offset} consumed twice")
                if stored.get(where) != (r.key, r.value):
                    fail(f"partition {r.partition} offset {r.offset}: got {r.key!r}={r.value!r}, "
                         f"the producer was told {stored.get(where)!r} is there")
                seen[where] = r
    if set(seen) != set(stored):
        fail(f"consumed {sorted(set(seen) ^ set(stored))[:5]}... differ from what was produced")
    assignment = sorted(tp.partition for tp in consumer.assignment())
    if assignment != list(range(PARTITIONS)):
        fail(f"the group's only member is assigned {assignment}; want all {PARTITIONS} partitions")
    step(f"consumed all {RECORDS} records, each once, in group {group}")

    want = {p: sum(1 for (q, _) in stored if q == p) for p in range(PARTITIONS)}
    try:
        consumer.commit()
    except KafkaError as e:
        fail(f"commit: {e!r}")
    for p in range(PARTITIONS):
        got = consumer.committed(TopicPartition(topic, p))
        if got != want[p]:
            fail(f"committed({topic}, {p}) = {got}; want {want[p]}")
    consumer.close(autocommit=False)
    step(f"committed {want}; committed() agrees")
    return want


def check_group_offsets(admin, topic, group, want):
    try:
        fetched = admin.list_consumer_group_offsets(group)
        groups = admin.list_consumer_groups()
    except KafkaError as e:
        fail(f"OffsetFetch / ListGroups for {group}: {e!r}")
    got = {tp.partition: om.offset for tp, om in fetched.items() if tp.topic == topic}
    if got != want:
        fail(f"the broker has {got} committed for {group}; want {want}")
    if (group, "consumer") not in [tuple(g) for g in groups]:
        fail(f"ListGroups: {group} (consumer) missing from {groups}")
    step(f"admin reads the committed offsets back and lists {group}")


def main():
    if len(sys.argv) != 3:
        fail(f"usage: {sys.argv[0]} BOOTSTRAP TOPIC_PREFIX")
    # Dumps every thread's stack and exits 1 if anything below blocks past the bound.
    faulthandler.dump_traceback_later(60, exit=True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="kafka-python %(levelname)s %(name)s: %(message)s")
    bootstrap, topic = sys.argv[1], f"{sys.argv[2]}-kp"
    group = f"{topic}-readers"
    admin = connect("KafkaAdminClient", lambda: KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="weft-compat-kafka-python-admin", request_timeout_ms=15000))
    create_topic(admin, topic)
    stored = produce(bootstrap, topic)
    want = consume_and_commit(bootstrap, topic, group, stored)
    check_group_offsets(admin, topic, group, want)
    admin.close()
    step("ok")


if __name__ == "__main__":
    main()
