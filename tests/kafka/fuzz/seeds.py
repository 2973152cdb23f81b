"""Writes a seed corpus for kafka_request_fuzzer: one well-formed request (header + body, no
size prefix) per API and several versions, so the fuzzer starts from every decoder's happy path.

usage: python3 seeds.py DIR
"""
import os
import struct
import sys


def i8(v): return struct.pack(">b", v)
def i16(v): return struct.pack(">h", v)
def i32(v): return struct.pack(">i", v)
def i64(v): return struct.pack(">q", v)


def uvarint(v):
    out = b""
    while v >= 0x80:
        out += bytes([(v & 0x7F) | 0x80])
        v >>= 7
    return out + bytes([v])


class W:
    def __init__(self, flex): self.flex, self.b = flex, b""
    def raw(self, x): self.b += x; return self
    def s(self, text):
        data = text.encode()
        self.b += (uvarint(len(data) + 1) if self.flex else i16(len(data))) + data
        return self
    def ns(self, text):
        if text is None:
            self.b += uvarint(0) if self.flex else i16(-1)
            return self
        return self.s(text)
    def by(self, data):
        self.b += (uvarint(len(data) + 1) if self.flex else i32(len(data))) + data
        return self
    def arr(self, n):
        self.b += uvarint(n + 1) if self.flex else i32(n)
        return self
    def tags(self):
        if self.flex: self.b += uvarint(0)
        return self


def frame(key, version, flex, body):
    header = i16(key) + i16(version) + i32(1) + i16(4) + b"fuzz" + (uvarint(0) if flex else b"")
    return header + body


def seeds():
    out = {}
    out["apiversions_v0"] = frame(18, 0, False, b"")
    out["apiversions_v3"] = frame(18, 3, True, W(True).s("kcat").s("1.7").tags().b)
    for v in (0, 1, 4, 9, 12):
        f = v >= 9
        w = W(f).arr(1)
        if v >= 10: w.raw(b"\0" * 16)
        w.s("t").tags()
        if v >= 4: w.raw(i8(1))
        if 8 <= v <= 10: w.raw(i8(0))
        if v >= 8: w.raw(i8(0))
        out[f"metadata_v{v}"] = frame(3, v, f, w.tags().b)
    for v in (3, 9):
        f = v >= 9
        w = W(f).ns(None).raw(i16(1) + i32(1000)).arr(1).s("t").arr(1).raw(i32(0)).by(b"\0" * 70).tags().tags().tags()
        out[f"produce_v{v}"] = frame(0, v, f, w.b)
    for v in (4, 7, 11, 12):
        f = v >= 12
        w = W(f).raw(i32(-1) + i32(100) + i32(1) + i32(1 << 20) + i8(0))
        if v >= 7: w.raw(i32(0) + i32(-1))
        w.arr(1).s("t").arr(1).raw(i32(0))
        if v >= 9: w.raw(i32(-1))
        w.raw(i64(0))
        if v >= 12: w.raw(i32(-1))
        if v >= 5: w.raw(i64(-1))
        w.raw(i32(1 << 20)).tags().tags()
        if v >= 7: w.arr(0)
        if v >= 11: w.s("")
        out[f"fetch_v{v}"] = frame(1, v, f, w.tags().b)
    for v in (1, 6):
        f = v >= 6
        w = W(f).raw(i32(-1))
        if v >= 2: w.raw(i8(0))
        w.arr(1).s("t").arr(1).raw(i32(0))
        if v >= 4: w.raw(i32(-1))
        out[f"listoffsets_v{v}"] = frame(2, v, f, w.raw(i64(-2)).tags().tags().tags().b)
    out["findcoordinator_v0"] = frame(10, 0, False, W(False).s("g").b)
    out["findcoordinator_v4"] = frame(10, 4, True, W(True).raw(i8(0)).arr(1).s("g").tags().b)
    for v in (0, 5, 6, 9):
        f = v >= 6
        w = W(f).s("g").raw(i32(10000))
        if v >= 1: w.raw(i32(10000))
        w.s("")
        if v >= 5: w.ns(None)
        w.s("consumer").arr(1).s("range").by(b"meta").tags()
        if v >= 8: w.ns(None)
        out[f"joingroup_v{v}"] = frame(11, v, f, w.tags().b)
    out["syncgroup_v0"] = frame(14, 0, False, W(False).s("g").raw(i32(1)).s("m").arr(1).s("m").by(b"a").b)
    out["syncgroup_v5"] = frame(14, 5, True, W(True).s("g").raw(i32(1)).s("m").ns(None).ns("consumer").ns("range").arr(1).s("m").by(b"a").tags().tags().b)
    out["heartbeat_v4"] = frame(12, 4, True, W(True).s("g").raw(i32(1)).s("m").ns(None).tags().b)
    out["leavegroup_v0"] = frame(13, 0, False, W(False).s("g").s("m").b)
    out["leavegroup_v5"] = frame(13, 5, True, W(True).s("g").arr(1).s("m").ns(None).ns("bye").tags().tags().b)
    out["offsetcommit_v2"] = frame(8, 2, False, W(False).s("g").raw(i32(-1)).s("").raw(i64(-1)).arr(1).s("t").arr(1).raw(i32(0) + i64(5)).ns("md").b)
    out["offsetcommit_v8"] = frame(8, 8, True, W(True).s("g").raw(i32(-1)).s("").ns(None).arr(1).s("t").arr(1).raw(i32(0) + i64(5) + i32(-1)).ns(None).tags().tags().tags().b)
    out["offsetfetch_v1"] = frame(9, 1, False, W(False).s("g").arr(1).s("t").arr(1).raw(i32(0)).b)
    out["offsetfetch_v8"] = frame(9, 8, True, W(True).arr(1).s("g").arr(1).s("t").arr(1).raw(i32(0)).tags().tags().raw(i8(0)).tags().b)
    out["listgroups_v4"] = frame(16, 4, True, W(True).arr(1).s("Stable").tags().b)
    out["describegroups_v5"] = frame(15, 5, True, W(True).arr(1).s("g").raw(i8(0)).tags().b)
    out["createtopics_v0"] = frame(19, 0, False, W(False).arr(1).s("n").raw(i32(2) + i16(1)).arr(0).arr(1).s("retention.ms").ns("1000").raw(i32(1000)).b)
    out["createtopics_v5"] = frame(19, 5, True, W(True).arr(1).s("n").raw(i32(-1) + i16(-1)).arr(0).arr(0).tags().raw(i32(1000) + i8(1)).tags().b)
    out["deletetopics_v0"] = frame(20, 0, False, W(False).arr(1).s("n").raw(i32(1000)).b)
    out["deletetopics_v6"] = frame(20, 6, True, W(True).arr(1).ns("n").raw(b"\0" * 16).tags().raw(i32(1000)).tags().b)
    out["describeconfigs_v0"] = frame(32, 0, False, W(False).arr(1).raw(i8(2)).s("t").arr(-1 if False else 0).b)
    out["describeconfigs_v4"] = frame(32, 4, True, W(True).arr(1).raw(i8(4)).s("0").raw(uvarint(0)).tags().raw(i8(0) + i8(0)).tags().b)
    out["initproducerid_v0"] = frame(22, 0, False, W(False).ns(None).raw(i32(1000)).b)
    out["initproducerid_v4"] = frame(22, 4, True, W(True).ns(None).raw(i32(1000) + i64(-1) + i16(-1)).tags().b)
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: seeds.py DIR")
    os.makedirs(sys.argv[1], exist_ok=True)
    for name, data in seeds().items():
        with open(os.path.join(sys.argv[1], name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
