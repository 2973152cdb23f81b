"""confluent-kafka (librdkafka) against weft's Kafka listener: admin, producers, a consumer.

usage: /usr/bin/python3 confluent_producer_consumer.py BOOTSTRAP TOPIC_PREFIX

Creates <prefix>-pc (3 partitions) with the AdminClient and finds it in the metadata (broker 0,
the controller, leads every partition); a second create is refused with TOPIC_ALREADY_EXISTS.
Produces keyed records with acks=all (no idempotence), with an idempotent producer, and with
each compression codec (none, gzip, snappy, lz4, zstd, with headers); reads the topic from the
beginning with assign() and checks that every partition holds exactly the records sent to it,
in send order, at offsets 0..n-1 (the offsets the delivery reports gave), with their
timestamps and headers, and that each key sits on the partition Java's murmur2 partitioner
picks. Then deletes the topic and waits for it to leave the metadata.

Exits 0 when all holds, 1 with a FAIL line otherwise; the whole run is bounded at 60 s.
"""

import faulthandler
import sys
import time

from confluent_kafka import (OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from report import fail, step

PARTITIONS = 3
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PER_CODEC = 200
TIMESTAMP_BASE_MS = 1_700_000_000_000





def murmur2(data):
    """Java's org.apache.kafka.common.utils.Utils.murmur2, as unsigned 32 bits."""
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    whole = len(data) & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[whole:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key, partitions):
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def check_murmur2_itself():
    # Kafka's UtilsTest vectors (signed in Java): a wrong hash here would blame the broker.
    vectors = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
               b"a-little-bit-longer-string": -1486304829,
               b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}
    for data, want in vectors.items():
        if murmur2(data) != want & 0xFFFFFFFF:
            fail(f"the test's own murmur2 is wrong for {data!r}")


def create_topic(admin, topic):
    futures = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)],
                                  operation_timeout=10, request_timeout=15)
    try:
        futures[topic].result(timeout=20)
    except KafkaException as e:
        fail(f"CreateTopics {topic}: {e}")
    step(f"created {topic} with {PARTITIONS} partitions")

    again = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], request_timeout=15)
    try:
        again[topic].result(timeout=20)
        fail(f"CreateTopics {topic} a second time succeeded; want TOPIC_ALREADY_EXISTS")
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            fail(f"CreateTopics {topic} a second time: {e}; want TOPIC_ALREADY_EXISTS")


def check_metadata(admin, topic, bootstrap):
    md = admin.list_topics(timeout=10)
    if list(md.brokers) != [0]:
        fail(f"metadata brokers {md.brokers}; want the one broker, node 0")
    broker = md.brokers[0]
    if f"{broker.host}:{broker.port}" != bootstrap:
        fail(f"broker 0 advertised as {broker.host}:{broker.port}; want {bootstrap} (the listen address)")
    if md.controller_id != 0:
        fail(f"metadata controller {md.controller_id}; want 0")
    if topic not in md.topics:
        fail(f"{topic} missing from list_topics(): {sorted(md.topics)}")
    t = md.topics[topic]
    if t.error is not None:
        fail(f"metadata for {topic}: {t.error}")
    if sorted(t.partitions) != list(range(PARTITIONS)):
        fail(f"{topic} has partitions {sorted(t.partitions)}; want 0..{PARTITIONS - 1}")
    for p in t.partitions.values():
        if p.error is not None or p.leader != 0 or list(p.replicas) != [0] or list(p.isrs) != [0]:
            fail(f"{topic} [{p.id}]: leader {p.leader} replicas {p.replicas} isrs {p.isrs} error {p.error}; want node 0")
    step(f"list_topics: broker 0 at {bootstrap}, controller 0, {topic} with {PARTITIONS} partitions led by 0")


def check_describe_configs(admin, topic):
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)], request_timeout=15)
    for resource, future in futures.items():
        try:
            configs = future.result(timeout=20)
        except KafkaException as e:
            fail(f"DescribeConfigs {resource}: {e}")
        if not isinstance(configs, dict):
            fail(f"DescribeConfigs {resource} returned {configs!r}")
    step(f"describe_configs {topic}: {len(configs)} entries")


class Sent:
    """What one produce phase sent, in send order, and what the delivery reports said."""

    def __init__(self):
        self.records = []  # (partition or None, key, value, timestamp_ms, headers) in send order
        self.reports = {}  # send index -> (partition, offset)
        self.errors = []


def produce_phase(bootstrap, topic, sent, name, extra, count, make):
    config = {"bootstrap.servers": bootstrap, "acks": "all", "partitioner": "murmur2_random",
              "linger.ms": 20, "message.timeout.ms": 20000, "client.id": f"weft-compat-{name}"}
    config.update(extra)
    producer = Producer(config)
    start = len(sent.records)
    for i in range(count):
        key, value, timestamp_ms, headers = make(i)
        index = len(sent.records)
        sent.records.append((key, value, timestamp_ms, headers))

        def on_delivery(err, msg, index=index):
            if err is not None:
                sent.errors.append(f"{name} record {index - start}: {err}")
            else:
                sent.reports[index] = (msg.partition(), msg.offset())

        kwargs = {"key": key, "value": value, "on_delivery": on_delivery}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if headers:
            kwargs["headers"] = headers
        producer.produce(topic, **kwargs)
        producer.poll(0)
    left = producer.flush(30)
    if left:
        fail(f"{name}: {left} records still undelivered after 30 s")
    if sent.errors:
        fail(f"{name}: delivery failed: {sent.errors[:5]}")
    step(f"{name}: {count} records delivered")


def produce_everything(bootstrap, topic):
    sent = Sent()
    produce_phase(bootstrap, topic, sent, "acks-all", {"enable.idempotence": False}, 1000,
                  lambda i: (f"key-{i % 97}".encode(), f"plain-{i}".encode(), TIMESTAMP_BASE_MS + i, None))
    produce_phase(bootstrap, topic, sent, "idempotent", {"enable.idempotence": True}, 1000,
                  lambda i: (f"key-{i % 89}".encode(), f"idempotent-{i}".encode(), None, None))
    for codec in CODECS:
        # Long, repetitive values so that every codec really shrinks the batch.
        produce_phase(bootstrap, topic, sent, f"compression-{codec}", {"compression.type": codec}, PER_CODEC,
                      lambda i, codec=codec: (f"key-{i % 13}".encode(), f"{codec}-{i}-".encode() + b"weft" * 64, None,
                                              [("codec", codec.encode()), ("seq", str(i).encode())]))
    return sent


def expected_per_partition(sent):
    """partition -> [(offset, key, value, timestamp_ms, headers)] in send order; checks the reports."""
    per_partition = {p: [] for p in range(PARTITIONS)}
    for index, (key, value, timestamp_ms, headers) in enumerate(sent.records):
        if index not in sent.reports:
            fail(f"record {index} ({value[:20]!r}) got no delivery report")
        partition, offset = sent.reports[index]
        want = java_partition(key, PARTITIONS)
        if partition != want:
            fail(f"key {key!r} delivered to partition {partition}; Java's murmur2 partitioner picks {want}")
        per_partition[partition].append((offset, key, value, timestamp_ms, headers))
    for partition, records in per_partition.items():
        offsets = [r[0] for r in records]
        if offsets != list(range(len(records))):
            fail(f"partition {partition}: delivery reports gave offsets {offsets[:10]}...; "
                 f"want 0..{len(records) - 1} in send order")
    return per_partition


def consume_everything(bootstrap, topic, per_partition):
    total = sum(len(r) for r in per_partition.values())
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": True,
                         "client.id": "weft-compat-reader"})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    got = {p: [] for p in range(PARTITIONS)}
    at_end = set()
    count = 0
    deadline = time.monotonic() + 30
    while (count < total or len(at_end) < PARTITIONS) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            if msg.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition())
                continue
            fail(f"consume: {msg.error()}")
        at_end.discard(msg.partition())
        got[msg.partition()].append(msg)
        count += 1
    consumer.close()
    if count != total:
        fail(f"consumed {count} records in 30 s; produced {total} "
             f"(per partition got {[len(got[p]) for p in range(PARTITIONS)]}, "
             f"want {[len(per_partition[p]) for p in range(PARTITIONS)]})")

    for partition in range(PARTITIONS):
        want, have = per_partition[partition], got[partition]
        if len(have) != len(want):
            fail(f"partition {partition}: consumed {len(have)} records, produced {len(want)}")
        for (offset, key, value, timestamp_ms, headers), msg in zip(want, have):
            where = f"partition {partition} offset {msg.offset()}"
            if msg.offset() != offset:
                fail(f"{where}: want offset {offset} ({value[:24]!r}) here: records lost, repeated or reordered")
            if msg.key() != key or msg.value() != value:
                fail(f"{where}: got {msg.key()!r}={msg.value()[:24]!r}, want {key!r}={value[:24]!r}")
            if java_partition(msg.key(), PARTITIONS) != partition:
                fail(f"{where}: key {key!r} stored off its murmur2 partition")
            if timestamp_ms is not None and msg.timestamp() != (TIMESTAMP_CREATE_TIME, timestamp_ms):
                fail(f"{where}: timestamp {msg.timestamp()}, want (CreateTime, {timestamp_ms})")
            if headers and list(msg.headers() or []) != headers:
                fail(f"{where}: headers {msg.headers()}, want {headers}")
    step(f"consumed all {total} records from the beginning: each once, in order, at its reported offset")


def delete_topic(admin, topic):
    futures = admin.delete_topics([topic], operation_timeout=10, request_timeout=15)
    try:
        futures[topic].result(timeout=20)
    except KafkaException as e:
        fail(f"DeleteTopics {topic}: {e}")
    deadline = time.monotonic() + 15
    while topic in admin.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            fail(f"{topic} still listed 15 s after DeleteTopics succeeded")
        time.sleep(0.2)
    step(f"deleted {topic}; list_topics no longer shows it")


def main():
    if len(sys.argv) != 3:
        fail(f"usage: {sys.argv[0]} BOOTSTRAP TOPIC_PREFIX")
    # Dumps every thread's stack and exits 1 if anything below blocks past the bound.
    faulthandler.dump_traceback_later(60, exit=True)
    bootstrap, topic = sys.argv[1], f"{sys.argv[2]}-pc"
    check_murmur2_itself()
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "weft-compat-admin"})
    create_topic(admin, topic)
    check_metadata(admin, topic, bootstrap)
    check_describe_configs(admin, topic)
    per_partition = expected_per_partition(produce_everything(bootstrap, topic))
    consume_everything(bootstrap, topic, per_partition)
    # Every producer and the consumer are gone: none can bring the topic back by asking for it.
    delete_topic(admin, topic)
    step("ok")


if __name__ == "__main__":
    main()
