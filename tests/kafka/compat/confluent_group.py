"""confluent-kafka (librdkafka) consumer groups against weft's Kafka listener.

usage: /usr/bin/python3 confluent_group.py BOOTSTRAP TOPIC_PREFIX

On <prefix>-group (4 partitions), one group, members polled in turn from this thread:
  1. member a alone is assigned all 4 partitions and reads wave 1; it commits synchronously;
  2. member b joins: after the rebalance each holds 2 partitions, disjoint; ListGroups and
     DescribeGroups (AdminClient.list_groups) show the group Stable, protocol consumer/range,
     with both members and the assignments their on_assign callbacks reported;
  3. wave 2 is read by the two together: every record once, by the member holding its partition,
     in order, none of wave 1 again; both commit, and committed() reads the offsets back;
  4. a leaves (close): b is assigned all 4; b leaves: the group is Empty;
  5. wave 3 is produced and a new member c of the same group reads exactly wave 3: it resumes at
     the committed offsets (auto.offset.reset=earliest would replay waves 1 and 2 otherwise).

Exits 0 when all holds, 1 with a FAIL line otherwise; the whole run is bounded at 60 s.
"""

import faulthandler
import struct
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from report import fail, step

PARTITIONS = 4
ALL = set(range(PARTITIONS))





class Member:
    """One consumer of the group, with what its rebalance callbacks and polls saw."""

    def __init__(self, name, bootstrap, group, topic):
        self.name = name
        self.client_id = f"weft-compat-{name}"
        self.assignments = []  # each on_assign's partitions, in order
        self.current = set()
        self.records = []  # (partition, offset, value) in poll order
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "client.id": self.client_id,
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "partition.assignment.strategy": "range",
            # Kafka's smallest session timeout: a member the broker failed to drop costs seconds.
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "max.poll.interval.ms": 20000,
        })
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer, partitions):
        self.current = {tp.partition for tp in partitions}
        self.assignments.append(sorted(self.current))
        step(f"{self.name}: assigned {sorted(self.current)}")

    def _on_revoke(self, consumer, partitions):
        self.current = set()
        step(f"{self.name}: revoked {sorted(tp.partition for tp in partitions)}")

    def poll(self, timeout_s):
        msg = self.consumer.poll(timeout_s)
        if msg is None:
            return
        if msg.error() is not None:
            fail(f"{self.name}: consume: {msg.error()}")
        self.records.append((msg.partition(), msg.offset(), msg.value().decode()))

    def commit(self, topic, want_offset):
        try:
            committed = self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            fail(f"{self.name}: synchronous commit: {e}")
        offsets = {tp.partition: tp.offset for tp in committed if tp.error is None}
        errors = [f"[{tp.partition}] {tp.error}" for tp in committed if tp.error is not None]
        if errors or offsets != {p: want_offset for p in self.current}:
            fail(f"{self.name}: commit gave {offsets} errors {errors}; want offset {want_offset} on {sorted(self.current)}")
        # committed() asks the coordinator (OffsetFetch), not the client's cache.
        check_committed(self.consumer, topic, self.current, want_offset, self.name)
        step(f"{self.name}: committed offset {want_offset} on {sorted(self.current)}")


def check_committed(consumer, topic, partitions, want_offset, who):
    try:
        fetched = consumer.committed([TopicPartition(topic, p) for p in sorted(partitions)], timeout=10)
    except KafkaException as e:
        fail(f"{who}: committed(): {e}")
    got = {tp.partition: tp.offset for tp in fetched}
    if got != {p: want_offset for p in partitions}:
        fail(f"{who}: committed() gave {got}; want offset {want_offset} on {sorted(partitions)}")


def poll_until(members, done, seconds, what):
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            state = "; ".join(f"{m.name}: assigned {sorted(m.current)} history {m.assignments} "
                              f"{len(m.records)} records" for m in members)
            fail(f"{what}: not reached in {seconds} s ({state})")
        for m in members:
            m.poll(0.1)


def drain(members, seconds):
    """Polls a while longer, so that a record delivered twice shows up before the check."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in members:
            m.poll(0.1)


def produce_wave(bootstrap, topic, wave, per_partition):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "message.timeout.ms": 20000})
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(f"[{msg.partition()}] {err}")

    values = set()
    for p in range(PARTITIONS):
        for i in range(per_partition):
            value = f"w{wave}-p{p}-{i}"
            values.add(value)
            producer.produce(topic, value=value.encode(), partition=p, on_delivery=on_delivery)
    left = producer.flush(30)
    if left or errors:
        fail(f"wave {wave}: {left} undelivered after 30 s, errors {errors[:5]}")
    step(f"wave {wave}: {len(values)} records produced")
    return values


def check_read(members, records_of, want_values, what):
    """Every wanted value read once, by the member holding its partition, in offset order."""
    seen = {}
    for m in members:
        per_partition = {}
        for partition, offset, value in records_of(m):
            if partition not in m.current:
                fail(f"{what}: {m.name} read {value} from partition {partition}, assigned {sorted(m.current)}")
            if value in seen:
                fail(f"{what}: {value} read twice ({seen[value]} and {m.name} at offset {offset})")
            seen[value] = f"{m.name} at offset {offset}"
            per_partition.setdefault(partition, []).append((offset, int(value.rsplit("-", 1)[1])))
        for partition, got in per_partition.items():
            offsets, sequence = [o for o, _ in got], [i for _, i in got]
            if offsets != sorted(offsets) or sequence != sorted(sequence):
                fail(f"{what}: {m.name} read partition {partition} out of order: (offset, i) {got[:10]}")
    if set(seen) != want_values:
        missing, extra = sorted(want_values - set(seen)), sorted(set(seen) - want_values)
        fail(f"{what}: missing {len(missing)} {missing[:5]}, unexpected {len(extra)} {extra[:5]}")


def decode_string(data, pos):
    (n,) = struct.unpack_from(">h", data, pos)
    return data[pos + 2:pos + 2 + n].decode(), pos + 2 + n


def decode_subscription(data):
    """ConsumerProtocolSubscription: version, [topic], user data...; returns the topics."""
    (n,) = struct.unpack_from(">i", data, 2)
    pos, topics = 6, []
    for _ in range(n):
        topic, pos = decode_string(data, pos)
        topics.append(topic)
    return topics


def decode_assignment(data):
    """ConsumerProtocolAssignment: version, [topic, [partition]], user data; returns {topic: [partition]}."""
    (n,) = struct.unpack_from(">i", data, 2)
    pos, out = 6, {}
    for _ in range(n):
        topic, pos = decode_string(data, pos)
        (count,) = struct.unpack_from(">i", data, pos)
        out[topic] = sorted(struct.unpack_from(f">{count}i", data, pos + 4))
        pos += 4 + 4 * count
    return out


def describe_group(admin, group):
    try:
        described = admin.list_groups(group, timeout=10)
    except KafkaException as e:
        fail(f"DescribeGroups {group} (list_groups(group)): {e}")
    if len(described) != 1 or described[0].id != group or described[0].error is not None:
        fail(f"DescribeGroups {group}: got {described!r}")
    return described[0]


def check_group_listed(admin, group, topic, members):
    try:
        listed = admin.list_groups(timeout=10)
    except KafkaException as e:
        fail(f"ListGroups (list_groups()): {e}")
    if group not in [g.id for g in listed]:
        fail(f"ListGroups does not show {group}: {[g.id for g in listed]}")

    g = describe_group(admin, group)
    if (g.state, g.protocol_type, g.protocol) != ("Stable", "consumer", "range"):
        fail(f"DescribeGroups {group}: state {g.state} protocol {g.protocol_type}/{g.protocol}; want Stable consumer/range")
    by_client = {m.client_id: m for m in g.members}
    if sorted(by_client) != sorted(m.client_id for m in members) or len(g.members) != len(members):
        fail(f"DescribeGroups {group}: members {[(m.id, m.client_id) for m in g.members]}; "
             f"want one each for {[m.client_id for m in members]}")
    for m in members:
        described = by_client[m.client_id]
        if not described.id:
            fail(f"DescribeGroups {group}: {m.client_id} has an empty member id")
        if decode_subscription(described.metadata) != [topic]:
            fail(f"DescribeGroups {group}: {m.client_id} subscribed to {decode_subscription(described.metadata)}")
        if decode_assignment(described.assignment) != {topic: sorted(m.current)}:
            fail(f"DescribeGroups {group}: {m.client_id} assigned {decode_assignment(described.assignment)}; "
                 f"its on_assign said {sorted(m.current)}")
    step(f"list_groups: {group} Stable consumer/range, members {sorted(by_client)} with their assignments")


def wait_group_empty(admin, group):
    deadline = time.monotonic() + 10
    while True:
        g = describe_group(admin, group)
        if g.state == "Empty" and not g.members:
            break
        if time.monotonic() > deadline:
            fail(f"{group} is {g.state} with {len(g.members)} members 10 s after its last member closed; want Empty")
        time.sleep(0.2)
    step(f"{group}: Empty after every member left")


def main():
    if len(sys.argv) != 3:
        fail(f"usage: {sys.argv[0]} BOOTSTRAP TOPIC_PREFIX")
    # Dumps every thread's stack and exits 1 if anything below blocks past the bound.
    faulthandler.dump_traceback_later(60, exit=True)
    bootstrap, topic = sys.argv[1], f"{sys.argv[2]}-group"
    group = f"{topic}-readers"
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "weft-compat-admin"})
    try:
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)],
                            operation_timeout=10, request_timeout=15)[topic].result(timeout=20)
    except KafkaException as e:
        fail(f"CreateTopics {topic}: {e}")

    wave1 = produce_wave(bootstrap, topic, 1, 40)
    a = Member("a", bootstrap, group, topic)
    poll_until([a], lambda: a.current == ALL and len(a.records) >= len(wave1), 30, "a alone assigned all and read wave 1")
    if a.assignments[0] != sorted(ALL):
        fail(f"a, alone in the group, was first assigned {a.assignments[0]}; want all of {sorted(ALL)}")
    check_read([a], lambda m: m.records, wave1, "wave 1 (a alone)")
    a.commit(topic, 40)

    b = Member("b", bootstrap, group, topic)
    mark_a = len(a.records)
    poll_until([a, b], lambda: len(a.current) == 2 and len(b.current) == 2 and a.current | b.current == ALL,
               30, "rebalance to 2 + 2 after b joined")
    if len(b.assignments[0]) != 2:
        fail(f"b's first assignment was {b.assignments[0]}; want 2 of the 4 partitions")
    check_group_listed(admin, group, topic, [a, b])

    wave2 = produce_wave(bootstrap, topic, 2, 40)
    poll_until([a, b], lambda: len(a.records) - mark_a + len(b.records) >= len(wave2), 30, "a and b read wave 2")
    drain([a, b], 1.0)
    check_read([a, b], lambda m: m.records[mark_a:] if m is a else m.records, wave2, "wave 2 (a and b)")
    step(f"wave 2: a read {len(a.records) - mark_a} from {sorted(a.current)}, b read {len(b.records)} "
         f"from {sorted(b.current)}, each record once")
    a.commit(topic, 80)
    b.commit(topic, 80)

    a.consumer.close()
    step("a: closed")
    mark_b = len(b.records)
    poll_until([b], lambda: b.current == ALL, 30, "b assigned all 4 after a left")
    if len(b.records) != mark_b:
        fail(f"b, given a's partitions at their committed offsets, read {b.records[mark_b:][:5]}; want nothing")
    b.consumer.close()
    step("b: closed")
    wait_group_empty(admin, group)

    wave3 = produce_wave(bootstrap, topic, 3, 10)
    c = Member("c", bootstrap, group, topic)
    check_committed(c.consumer, topic, ALL, 80, "c (before joining)")
    poll_until([c], lambda: c.current == ALL and len(c.records) >= len(wave3), 30, "c read wave 3")
    drain([c], 1.0)
    check_read([c], lambda m: m.records, wave3, "wave 3 (c resumes at the committed offsets)")
    c.consumer.close()
    step("c: resumed at offset 80 of each partition and read only wave 3")
    step("ok")


if __name__ == "__main__":
    main()
