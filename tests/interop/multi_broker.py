"""Multi-broker across clients (docs/wire.md, "Multi-broker"). The two
"brokers" are two vhosts of the test node (EDP_INTEROP_VHOSTS, made by
integ_interop.sh): to a client, a vhost is as separate as a broker.

1. pika -> edp-multi-receiver: 200 messages of 8 keys, each sent to the
   broker the key hashes to (FNV-1a 32 % 2, computed here from the
   document); the receiver drains both, every key from its broker only,
   in x-edp-kseq order.
2. edp-multi-sender --key-mode -> pika: every key on the broker the same
   hash names, kseq in order; round-robin mode: both brokers used.
"""
import collections
import os

import pika

from wire import RUN, Timer, check, connect, drain, finish, fnv1a32, ok, start

VH = os.environ["EDP_INTEROP_VHOSTS"].split(",")
N, KEYS = 200, 8
t = Timer()
# The worked example of docs/wire.md.
check(fnv1a32("ACC-0") == 0x9D490E9F and fnv1a32("ACC-1") % 2 == 0, "FNV-1a example")
chans = []
for v in VH:
    c = connect(v).channel()
    c.confirm_delivery()
    chans.append(c)

# 1. A foreign producer picks the broker by key.
q = "interop.multi." + RUN
for c in chans:
    c.queue_declare(q, durable=True)
per_broker = [0, 0]
for i in range(1, N + 1):
    key, kseq = "ACC-%d" % ((i - 1) % KEYS), (i - 1) // KEYS + 1
    b = fnv1a32(key) % len(VH)
    per_broker[b] += 1
    chans[b].basic_publish("", q, ("(%d) %s" % (i, key)).encode(), pika.BasicProperties(
        delivery_mode=2, message_id="py-%d" % i, content_type="text/plain",
        headers={"x-edp-key": key, "x-edp-kseq": kseq}), mandatory=True)
check(all(per_broker), "all keys hash to one broker: %r" % per_broker)
ev = finish(start("edp-multi-receiver", "--queue", q, "--count", str(N), vhosts=VH), 60)
seen = collections.defaultdict(list)
for e in ev:
    if e["event"] == "processed":
        check(e["broker"] == fnv1a32(e["key"]) % len(VH), "key %s from broker %d"
              % (e["key"], e["broker"]))
        seen[e["key"]].append(e["kseq"])
check(len(seen) == KEYS and all(v == list(range(1, N // KEYS + 1)) for v in seen.values()),
      "per-key kseq %r" % dict(seen))
ok("pika -> edp-multi-receiver: %d messages of %d keys over brokers %r by FNV-1a, "
   "each key from its broker in kseq order" % (N, KEYS, per_broker))

# 2. edp's sender, a foreign consumer on each broker.
q2 = "interop.multi.key." + RUN
ev = finish(start("edp-multi-sender", "--queue", q2, "--key-mode", "--count", str(N),
                  "--keys", str(KEYS), "--id-prefix", "M", vhosts=VH), 60)
check(sum(e["event"] == "confirmed" for e in ev) == N, "multi-sender confirmed")
seen = collections.defaultdict(list)
for b, c in enumerate(chans):
    n = c.queue_declare(q2, passive=True).method.message_count
    for m, p, body in drain(c, q2, n):
        key = p.headers["x-edp-key"]
        check(fnv1a32(key) % len(VH) == b and isinstance(p.headers["x-edp-kseq"], int)
              and p.message_id.startswith("M-") and p.delivery_mode == 2,
              "broker %d holds %r %r" % (b, p, body))
        seen[key].append(p.headers["x-edp-kseq"])
check(sum(map(len, seen.values())) == N and len(seen) == KEYS
      and all(v == list(range(1, N // KEYS + 1)) for v in seen.values()),
      "key mode: per-key kseq %r" % dict(seen))
q3 = "interop.multi.rr." + RUN
finish(start("edp-multi-sender", "--queue", q3, "--count", str(N), vhosts=VH), 60)
depths = [c.queue_declare(q3, passive=True).method.message_count for c in chans]
check(sum(depths) == N and all(depths), "round-robin depths %r" % depths)
for c in chans:
    for name in (q, q2, q3):
        c.queue_delete(name)
    c.connection.close()
ok("edp-multi-sender -> pika: key mode, %d messages each on the broker its key hashes "
   "to, kseq in order; round-robin %r (%s)" % (N, depths, t))
