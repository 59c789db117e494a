"""Event forwarding across clients (docs/wire.md, "Forwarding").

1. pika -> edp-forward-receiver: 200 persistent, confirmed messages, one
   of them poison; 199 processed exactly once, the poison in <queue>.dlq
   with x-edp-retries, x-edp-reason, x-edp-original-queue and its own
   properties and headers.
2. edp-forward-sender -> pika: 200 messages read back in order, with the
   documented properties.
"""
import pika

from wire import RUN, Timer, check, connect, drain, ok, run

N = 200
t = Timer()
conn = connect()
ch = conn.channel()

# 1. A foreign producer feeds the edp receiver.
q = "interop.fwd.in." + RUN
ch.queue_declare(q, durable=True)  # wire.md: durable, no arguments
ch.queue_declare(q + ".dlq", durable=True)
ch.confirm_delivery()
ids = ["py-%d" % i for i in range(1, N + 1)]
for i, mid in enumerate(ids):
    body = b"order %d" % (i + 1) if i != 7 else b"POISON order"
    ch.basic_publish("", q, body, pika.BasicProperties(
        delivery_mode=2, message_id=mid, content_type="text/plain",
        headers={"origin": "pika"}), mandatory=True)
# A count of retries set by the producer: at the limit, the first failure
# is the last.
ch.basic_publish("", q, b"POISON again", pika.BasicProperties(
    delivery_mode=2, message_id="py-pre", headers={"x-edp-retries": 5}), mandatory=True)
ev = run("edp-forward-receiver", "--queue", q, "--fail-match", "POISON",
         "--max-retries", "2", "--idle-timeout", "1500", timeout=60)
done = [e["message_id"] for e in ev if e["event"] == "processed"]
dead = [e["message_id"] for e in ev if e["event"] == "dead_lettered"]
retried = [e["message_id"] for e in ev if e["event"] == "retried"]
check(sorted(done) == sorted(ids[:7] + ids[8:]),
      "processed %d ids, not the 199 non-poison ones" % len(done))
check(sorted(dead) == ["py-8", "py-pre"] and retried == ["py-8", "py-8"],
      "poison: retried %s, dead-lettered %s" % (retried, dead))
dlq = {p.message_id: (p, body) for _, p, body in drain(ch, q + ".dlq", 2)}
p, body = dlq["py-8"]
h = p.headers
check(body == b"POISON order", "dlq copy: %r" % body)
check(h.get("x-edp-retries") == 3 and h.get("x-edp-original-queue") == q
      and "POISON" in h.get("x-edp-reason", "") and h.get("origin") == "pika",
      "dlq headers: %r" % h)
check(p.delivery_mode == 2 and p.content_type == "text/plain", "dlq properties: %r" % p)
check(ch.queue_declare(q, passive=True).method.message_count == 0, "queue not empty")
ok("pika -> edp-forward-receiver: %d processed once, poison in .dlq after 2 retries "
   "(x-edp-retries=3), one with x-edp-retries=5 at its first failure" % len(done))

# 2. edp's sender, a foreign consumer.
q2 = "interop.fwd.out." + RUN
ev = run("edp-forward-sender", "--queue", q2, "--count", str(N), "--id-prefix", "E")
check(sum(e["event"] == "confirmed" for e in ev) == N, "sender did not confirm %d" % N)
got = drain(ch, q2, N)
check([p.message_id for _, p, _ in got] == ["E-%d" % i for i in range(1, N + 1)],
      "message_ids not E-1..E-%d in order" % N)
for _, p, body in got:
    check(p.delivery_mode == 2 and p.content_type == "text/plain" and p.timestamp,
          "properties: %r" % p)
ch.queue_delete(q)
ch.queue_delete(q + ".dlq")
ch.queue_delete(q2)
ch.queue_delete(q2 + ".dlq")
conn.close()
ok("edp-forward-sender -> pika: %d messages, ids in order, persistent (%s)" % (N, t))
