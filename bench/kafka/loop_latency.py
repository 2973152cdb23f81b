"""How long a Kafka listener's loop keeps small requests waiting while other connections ask for
slow work: the latency of requests sent every 0.5 ms on a connection of their own, from a process
of its own (so the load's Python threads never hold its interpreter), p50 / p99 / max.

usage: /usr/bin/python3 bench/kafka/loop_latency.py PORT LOAD [AMOUNT]

LOAD (on 127.0.0.1:PORT, a weftd started with --data-dir and --kafka-listen):
  metadata-create  AMOUNT Metadata v1 requests in a row, each naming 16 new topics (default 10)
  produce-create   a Produce v3 (acks=1) to each of AMOUNT new topics, again until stored (160)
  offsets          OffsetCommit v0 (each fsynced) and OffsetFetch v1 back to back, AMOUNT s (5)
  fsync-log        a confluent-kafka producer (acks=all) into a topic with fsync=always for
                   AMOUNT s (10); the probes then also read that topic's log: ListOffsets
                   earliest and by time, and a Fetch v4 from offset 0
The probe is an ApiVersions v0, the same-run baseline of every other figure.
"""
import json
import os
import socket
import struct
import sys
import threading
import time

HOST = "127.0.0.1"


def frame(key, version, correlation, body):
    client = b"loop-latency"
    message = struct.pack(">hhih", key, version, correlation, len(client)) + client + body
    return struct.pack(">i", len(message)) + message


def read_frame(sock):
    def exact(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the listener closed the connection")
            data += chunk
        return data
    return exact(struct.unpack(">i", exact(4))[0])


def string(text):
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def connect(port):
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# ---- a one-record RecordBatch v2, CRC-32C and all -------------------------------------------

CRC_TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    CRC_TABLE.append(c)


def crc32c(data):
    c = 0xFFFFFFFF
    for byte in data:
        c = CRC_TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def varint(value):
    value = (value << 1) ^ (value >> 63)
    out = b""
    while value >= 0x80:
        out += bytes([(value & 0x7F) | 0x80])
        value >>= 7
    return out + bytes([value])


def one_record_batch(value=b"v" * 100):
    record = b"\x00" + varint(0) + varint(0) + varint(-1) + varint(len(value)) + value + varint(0)
    record = varint(len(record)) + record
    now = int(time.time() * 1000)
    # attributes .. records: what the CRC covers
    covered = struct.pack(">hiqqqhii", 0, 0, now, now, -1, -1, -1, 1) + record
    length = 4 + 1 + 4 + len(covered)  # partitionLeaderEpoch, magic, crc, the rest
    return struct.pack(">qiibI", 0, length, -1, 2, crc32c(covered)) + covered


# ---- the probes, in a child process ---------------------------------------------------------

def probe_requests(log_topic):
    probes = [("ApiVersions (baseline)", 18, 0, b"")]
    if log_topic:
        topic = string(log_topic) + struct.pack(">i", 1)
        probes += [
            ("ListOffsets earliest", 2, 1, struct.pack(">ii", -1, 1) + topic + struct.pack(">iq", 0, -2)),
            ("ListOffsets by time", 2, 1, struct.pack(">ii", -1, 1) + topic + struct.pack(">iq", 0, 1)),
            ("Fetch v4 from 0", 1, 4, struct.pack(">iiiibi", -1, 0, 0, 65536, 0, 1) + topic + struct.pack(">iqi", 0, 0, 16384)),
        ]
    return probes


def start_probes(port, log_topic):
    """Forks the prober; returns (pid, stop file, pipe) for finish_probes."""
    read_end, write_end = os.pipe()
    stop_file = "/tmp/loop-latency-stop-%d" % os.getpid()
    if os.path.exists(stop_file):
        os.unlink(stop_file)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        probes = probe_requests(log_topic)
        latencies = {name: [] for name, *_ in probes}
        sock = connect(port)
        deadline = time.time() + 600  # bounded, whatever the parent does
        correlation = 0
        while not os.path.exists(stop_file) and time.time() < deadline:
            for name, key, version, body in probes:
                sent = time.perf_counter()
                sock.sendall(frame(key, version, correlation, body))
                read_frame(sock)
                latencies[name].append(time.perf_counter() - sent)
                correlation += 1
            time.sleep(0.0005)
        os.write(write_end, json.dumps(latencies).encode())
        os._exit(0)
    os.close(write_end)
    time.sleep(0.3)  # its connection up before the load starts
    return pid, stop_file, read_end


def finish_probes(prober):
    pid, stop_file, read_end = prober
    time.sleep(0.3)
    open(stop_file, "w").close()
    data = b""
    while True:
        chunk = os.read(read_end, 1 << 20)
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    os.unlink(stop_file)
    for name, latencies in json.loads(data).items():
        latencies.sort()
        if not latencies:
            continue
        ms = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1e3
        print(f"  {name:24} n={len(latencies)} p50 {ms(0.5):.3f} ms  p99 {ms(0.99):.3f} ms  max {latencies[-1] * 1e3:.3f} ms")


# ---- the loads --------------------------------------------------------------------------------

def metadata_create(port, rounds):
    sock = connect(port)
    prefix = "mc%d-" % int(time.time())
    started = time.perf_counter()
    for r in range(rounds):
        names = ["%s%d-%d" % (prefix, r, i) for i in range(16)]
        sock.sendall(frame(3, 1, r, struct.pack(">i", len(names)) + b"".join(string(n) for n in names)))
        read_frame(sock)
    print(f"{rounds} Metadata requests made {rounds * 16} topics in {time.perf_counter() - started:.2f} s")


def produce_create(port, topics):
    sock = connect(port)
    batch = one_record_batch()
    prefix = "pc%d-" % int(time.time())
    requests = 0
    started = time.perf_counter()
    for i in range(topics):
        name = prefix + str(i)
        body = struct.pack(">hhii", -1, 1, 10_000, 1) + string(name) + struct.pack(">iii", 1, 0, len(batch)) + batch
        for _ in range(1000):  # bounded: 1000 tries, 2 ms apart
            requests += 1
            sock.sendall(frame(0, 3, requests, body))
            answer = read_frame(sock)
            at = 4 + 4 + 2 + len(name.encode()) + 4 + 4  # correlation, topics, name, partitions, index
            if struct.unpack(">h", answer[at:at + 2])[0] == 0:
                break
            time.sleep(0.002)
    print(f"{topics} topics made by Produce and stored to in {time.perf_counter() - started:.2f} s ({requests} Produce requests)")


def offsets(port, seconds):
    admin = connect(port)
    admin.sendall(frame(3, 1, 0, struct.pack(">i", 1) + string("loop-latency"))); read_frame(admin)
    time.sleep(0.2)
    done = {"commits": 0, "fetches": 0}
    stop = time.time() + seconds

    def commit():
        sock = connect(port)
        while time.time() < stop:
            body = string("g") + struct.pack(">i", 1) + string("loop-latency") + struct.pack(">iiq", 1, 0, done["commits"]) + string("")
            sock.sendall(frame(8, 0, done["commits"], body)); read_frame(sock); done["commits"] += 1

    def fetch():
        sock = connect(port)
        while time.time() < stop:
            body = string("g") + struct.pack(">i", 1) + string("loop-latency") + struct.pack(">ii", 1, 0)
            sock.sendall(frame(9, 1, done["fetches"], body)); read_frame(sock); done["fetches"] += 1

    threads = [threading.Thread(target=commit), threading.Thread(target=fetch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{seconds:.0f} s: {done['commits']} offset commits, {done['fetches']} offset fetches")


def fsync_log_topic(port):
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": f"{HOST}:{port}"})
    topic = "loop-latency-fsync-%d" % int(time.time())
    for future in admin.create_topics([NewTopic(topic, 1, 1, config={"fsync": "always"})]).values():
        future.result(10)
    return topic


def fsync_log(port, seconds, topic):
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": f"{HOST}:{port}", "acks": "all", "linger.ms": 1})
    acknowledged = [0]
    value = b"x" * 1024
    stop = time.time() + seconds
    while time.time() < stop:
        try:
            producer.produce(topic, value, on_delivery=lambda err, msg: acknowledged.__setitem__(0, acknowledged[0] + (err is None)))
        except BufferError:
            producer.poll(0.001)
        producer.poll(0)
    producer.flush(10)
    print(f"{seconds:.0f} s: {acknowledged[0]} records of 1 KiB acknowledged (acks=all, fsync=always)")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    port, load = int(sys.argv[1]), sys.argv[2]
    amount = float(sys.argv[3]) if len(sys.argv) > 3 else None
    if load == "metadata-create":
        prober = start_probes(port, None)
        metadata_create(port, int(amount or 10))
    elif load == "produce-create":
        prober = start_probes(port, None)
        produce_create(port, int(amount or 160))
    elif load == "offsets":
        prober = start_probes(port, None)
        offsets(port, amount or 5)
    elif load == "fsync-log":
        topic = fsync_log_topic(port)
        prober = start_probes(port, topic)
        fsync_log(port, amount or 10, topic)
    else:
        sys.exit(__doc__)
    finish_probes(prober)


if __name__ == "__main__":
    main()
