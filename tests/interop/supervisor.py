"""Supervisor consumer across clients (docs/wire.md, "Supervisor").

1. pika -> edp-supervisor: a backlog of 300 messages; the supervisor
   scales past one consumer and every message is processed exactly once.
2. edp-load -> pika: the load generator's messages ({"seq","sent_ms"})
   read back, ids and seqs in order.
"""
import json

import pika

from wire import RUN, Timer, check, connect, drain, finish, ok, start

N = 300
t = Timer()
conn = connect()
ch = conn.channel()
ch.confirm_delivery()

q = "interop.sup." + RUN
ch.queue_declare(q, durable=True)
for i in range(1, N + 1):
    ch.basic_publish("", q, json.dumps({"seq": i}).encode(), pika.BasicProperties(
        delivery_mode=2, message_id="s-%d" % i, content_type="application/json"),
        mandatory=True)
ev = finish(start("edp-supervisor", "--queue", q, "--work-ms", "10", "--per-consumer", "10",
                  "--max", "6", "--interval-ms", "200", "--count", str(N)), 90)
done = [e["message_id"] for e in ev if e["event"] == "processed"]
check(sorted(done) == sorted("s-%d" % i for i in range(1, N + 1)),
      "processed %d (%d distinct) of %d" % (len(done), len(set(done)), N))
most = max(e["consumers"] for e in ev if e["event"] == "scale")
check(most > 1, "the supervisor never scaled past one consumer")
check(ch.queue_declare(q, passive=True).method.message_count == 0, "queue not empty")
ok("pika -> edp-supervisor: %d messages processed once, up to %d consumers" % (N, most))

q2 = "interop.load." + RUN
ev = finish(start("edp-load", "--queue", q2, "--rate", "400", "--duration", "1s",
                  "--id-prefix", "L"))
sent = [e for e in ev if e["event"] == "sent"]
check(len(sent) >= 390, "edp-load sent %d" % len(sent))
got = drain(ch, q2, len(sent))
for i, (m, p, body) in enumerate(got, 1):
    b = json.loads(body)
    check(p.message_id == "L-%d" % i and b["seq"] == i and isinstance(b["sent_ms"], int)
          and p.content_type == "application/json" and p.delivery_mode == 2,
          "load message %d: %r %r" % (i, p, body))
for name in (q, q2, q2 + ".dlq"):
    ch.queue_delete(name)
conn.close()
ok("edp-load -> pika: %d messages in order (%s)" % (len(sent), t))
