"""Thread delegate across clients (docs/wire.md, "Thread delegate").

1. pika -> edp-trade-dispatcher: 300 trades of 6 accounts on the topic
   exchange with headers account/seq; every account processed in seq
   order on 4 workers; the seq-5 trade of each account (poisoned) in
   <queue>.dlq with x-edp-context; a trade whose account has a dot is
   unroutable (basic.return to the mandatory publish).
2. edp-trade-sender -> pika: 120 trades of 4 accounts read back in per-
   account seq order with the documented routing key, headers and ids;
   with --shards 2 every account lands in exactly one shard queue.
"""
import collections

import pika

from wire import RUN, Timer, check, connect, drain, finish, ok, start

t = Timer()
conn = connect()
ch = conn.channel()
ch.confirm_delivery()

# 1. A foreign producer feeds the dispatcher.
ex, q = "interop.td.ex." + RUN, "interop.td." + RUN
ch.exchange_declare(ex, "topic", durable=True)
# wire.md: a trade queue is single-active (one dispatcher at a time).
ch.queue_declare(q, durable=True, arguments={"x-single-active-consumer": True})
ch.queue_declare(q + ".dlq", durable=True)
ch.queue_bind(q, ex, "trade.eq.*")
accounts = ["A-%d" % i for i in range(6)]
per = 50
for s in range(1, per + 1):
    for a in accounts:
        ch.basic_publish(ex, "trade.eq." + a, b"%s,BUY,IBM,%d SHARES" % (a.encode(), s),
                         pika.BasicProperties(delivery_mode=2, message_id="%s-%d" % (a, s),
                                              content_type="text/plain",
                                              headers={"account": a, "seq": s}),
                         mandatory=True)
try:
    ch.basic_publish(ex, "trade.eq.B.7", b"B.7,BUY,IBM,1 SHARES",
                     pika.BasicProperties(headers={"account": "B.7", "seq": 1}), mandatory=True)
    check(False, "a trade of account B.7 was routed")
except pika.exceptions.UnroutableError:
    pass
n = per * len(accounts)
disp = start("edp-trade-dispatcher", "--exchange", ex, "--queue", q, "--workers", "4",
             "--work-jitter-ms", "3", "--poison-seq", "5", "--max-retries", "1",
             "--retry-delay-ms", "0", "--count", str(n))
ev = finish(disp, 90)
order = collections.defaultdict(list)
for e in ev:
    if e["event"] == "processed":
        order[e["account"]].append(e["seq"])
want = [s for s in range(1, per + 1) if s != 5]
for a in accounts:
    check(order[a] == want, "account %s processed %s" % (a, order[a]))
workers = {e["worker"] for e in ev if e["event"] == "processed"}
dead = drain(ch, q + ".dlq", len(accounts))
for m, p, body in dead:
    h = p.headers
    check(h["seq"] == 5 and h["x-edp-context"] == h["account"] and h["x-edp-retries"] == 1
          and h["x-edp-original-queue"] == q and "poison" in h["x-edp-reason"],
          "dlq copy headers %r" % h)
check(sorted(p.headers["account"] for _, p, _ in dead) == accounts, "dlq accounts")
ok("pika -> edp-trade-dispatcher: %d trades, %d accounts in seq order on %d workers, "
   "%d poison trades in .dlq, dotted account unroutable" % (n, len(accounts), len(workers), len(dead)))

# Accounts with dots, as wire.md says: a dot-free routing key, the account
# in a header, --context header:account.
for s in range(1, 21):
    for a in ("B.7", "C.8.9"):
        ch.basic_publish(ex, "trade.eq.dotted", b"%s,SELL,IBM,1 SHARES" % a.encode(),
                         pika.BasicProperties(delivery_mode=2, message_id="%s-%d" % (a, s),
                                              headers={"account": a, "seq": s}), mandatory=True)
ev = finish(start("edp-trade-dispatcher", "--exchange", ex, "--queue", q, "--workers", "2",
                  "--context", "header:account", "--count", "40"), 60)
order = collections.defaultdict(list)
for e in ev:
    if e["event"] == "processed":
        order[e["account"]].append(e["seq"])
check(dict(order) == {"B.7": list(range(1, 21)), "C.8.9": list(range(1, 21))},
      "dotted accounts by header: %r" % dict(order))
ok("pika -> edp-trade-dispatcher --context header:account: 2 dotted accounts, 40 trades in "
   "seq order")

# 2. edp's sender, a foreign consumer.
ex2, q2 = "interop.td.ex2." + RUN, "interop.td2." + RUN
ev = finish(start("edp-trade-sender", "--exchange", ex2, "--queue", q2, "--count", "120",
                  "--accounts", "4", "--id-prefix", "T"))
check(sum(e["event"] == "sent" for e in ev) == 120, "trade-sender did not confirm 120")
got = drain(ch, q2, 120)
seqs = collections.defaultdict(list)
for m, p, body in got:
    a, s = p.headers["account"], p.headers["seq"]
    check(isinstance(s, int) and m.routing_key == "trade.eq." + a and m.exchange == ex2
          and p.message_id == "T-%s-%d" % (a, s) and body.startswith(a.encode() + b",")
          and p.delivery_mode == 2 and p.content_type == "text/plain",
          "trade %r %r %r" % (m, p, body))
    seqs[a].append(s)
check(len(seqs) == 4 and all(v == list(range(1, 31)) for v in seqs.values()),
      "per-account seqs %r" % dict(seqs))
ex3, q3 = "interop.td.ex3." + RUN, "interop.td3." + RUN
finish(start("edp-trade-sender", "--exchange", ex3, "--queue", q3, "--shards", "2",
             "--count", "80", "--accounts", "8"))
shard = {}
total = 0
for k in (1, 2):
    depth = ch.queue_declare("%s.%d" % (q3, k), passive=True).method.message_count
    for m, p, body in drain(ch, "%s.%d" % (q3, k), depth):
        check(shard.setdefault(p.headers["account"], k) == k, "account in two shards")
        total += 1
check(total == 80 and len(shard) == 8, "shards held %d trades of %d accounts" % (total, len(shard)))
for name in (q, q + ".dlq", q2, q2 + ".dlq", q3 + ".1", q3 + ".1.dlq", q3 + ".2", q3 + ".2.dlq"):
    ch.queue_delete(name)
for name in (ex, ex2, ex3 + ".hash"):
    ch.exchange_delete(name)
conn.close()
ok("edp-trade-sender -> pika: 120 trades, 4 accounts in seq order; --shards 2: each of "
   "8 accounts in one shard (%s)" % t)
