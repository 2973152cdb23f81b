"""Sending many records as fast as one confluent-kafka producer can, for the benchmarks here."""
import sys
import time


def fill(producer, topic, records, value, on_delivery=None):
    """Sends `records` copies of `value` to partition 0 of `topic`, waiting (bounded: 100 s) while
    the producer's queue is full, and flushes. `on_delivery(sent)`, given, makes each record's
    delivery callback from its send time. Returns the seconds taken; exits when records stay
    unacknowledged for 60 s after the last send."""
    start = time.perf_counter()
    for i in range(records):
        sent = time.perf_counter()
        callback = on_delivery(sent) if on_delivery else None
        for _ in range(100_000):
            try:
                producer.produce(topic, value, partition=0, on_delivery=callback)
                break
            except BufferError:
                producer.poll(0.001)
        if i % 256 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        sys.exit("records were not acknowledged within 60 s")
    return time.perf_counter() - start
