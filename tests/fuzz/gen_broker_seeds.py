#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_broker (tests/fuzz/broker/): what a
broker sends to the client of fuzz_broker.c, byte for byte, from
connection.start on, in a few variants. Run from the repository root."""
import os
import struct

def frame(kind, ch, payload):
    return struct.pack(">BHI", kind, ch, len(payload)) + payload + b"\xce"

def method(ch, cls, mid, args=b""):
    return frame(1, ch, struct.pack(">HH", cls, mid) + args)

def sstr(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack(">B", len(s)) + s

def lstr(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(s)) + s

def table(entries):
    body = b"".join(sstr(k) + v for k, v in entries)
    return struct.pack(">I", len(body)) + body

def deliver(ch, tag, body, props=b"\x00\x00", headers=None):
    args = sstr("ctag") + struct.pack(">QB", tag, 0) + sstr("") + sstr("q")
    if headers is not None:
        # property flags: message_id (bit 11), headers (bit 13)
        props = struct.pack(">H", (1 << 13) | (1 << 11)) + table(headers) + sstr("m-%d" % tag)
    head = struct.pack(">HHQ", 60, 0, len(body)) + props
    return method(ch, 60, 60, args) + frame(2, ch, head) + frame(3, ch, body)

caps = table([("publisher_confirms", b"t\x01"), ("consumer_cancel_notify", b"t\x01"),
              ("connection.blocked", b"t\x01")])
start = method(0, 10, 10, b"\x00\x09" + table([("capabilities", b"F" + caps),
                                               ("product", b"S" + lstr("RabbitMQ"))])
               + lstr("PLAIN AMQPLAIN") + lstr("en_US"))
tune = method(0, 10, 30, struct.pack(">HIH", 2047, 131072, 0))
open_ok = method(0, 10, 41, sstr(""))
login = start + tune + open_ok
chan = method(1, 20, 11, lstr(""))
confirm = method(1, 85, 11)
declare = method(1, 50, 11, sstr("q") + struct.pack(">II", 0, 0))
consume = method(1, 60, 21, sstr("ctag"))
ack = method(1, 60, 80, struct.pack(">QB", 1, 0))
session = login + chan + confirm + declare + consume
headers = [("s", b"S" + lstr("v")), ("i", b"I" + struct.pack(">i", -5)),
           ("l", b"l" + struct.pack(">q", 1 << 40)), ("b", b"t\x01"),
           ("d", b"d" + struct.pack(">d", 1.5)), ("x", b"x" + lstr(b"\x00\xff")),
           ("a", b"A" + struct.pack(">I", 5) + b"I" + struct.pack(">i", 3)),
           ("t", b"F" + table([("k", b"V")])), ("k", b"s" + struct.pack(">h", 2))]
conn_close = method(0, 10, 50, struct.pack(">H", 320) + sstr("CONNECTION_FORCED - bye")
                    + struct.pack(">HH", 0, 0))
seeds = {
    "login-refused": start + tune + method(0, 10, 50, struct.pack(">H", 530)
                                           + sstr("NOT_ALLOWED - vhost not found")
                                           + struct.pack(">HH", 10, 40)),
    "login-only": login,
    "channel-refused": login + method(1, 20, 40, struct.pack(">H", 504) + sstr("CHANNEL_ERROR")
                                      + struct.pack(">HH", 20, 10)),
    "session": session + ack,
    "deliveries": session + ack + deliver(1, 1, b"hello") + deliver(1, 2, b"", headers=headers),
    "deliveries-close": session + ack + deliver(1, 1, b"hello") + conn_close,
    "nack-return": session + method(1, 60, 50, struct.pack(">H", 312) + sstr("NO_ROUTE")
                                    + sstr("") + sstr("q"))
                   + frame(2, 1, struct.pack(">HHQ", 60, 0, 5) + b"\x00\x00") + frame(3, 1, b"hello")
                   + method(1, 60, 120, struct.pack(">QB", 1, 0)),
    "channel-close": session + method(1, 20, 40, struct.pack(">H", 406) + sstr("PRECONDITION_FAILED")
                                      + struct.pack(">HH", 60, 40))
                     + method(2, 20, 11, lstr("")) + method(2, 85, 11) + declare.replace(b"\x00\x01", b"\x00\x02", 1),
    "blocked": session + method(0, 10, 60, sstr("low on memory")) + ack + method(0, 10, 61),
    "cancel": session + ack + method(1, 60, 30, sstr("ctag") + b"\x00") + deliver(1, 1, b"late"),
    "heartbeat": login + frame(8, 0, b"") + chan + frame(8, 0, b"") + confirm,
}
out = "tests/fuzz/broker"
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
