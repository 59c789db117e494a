"""Ambulance / carpool across clients (docs/wire.md, "Ambulance").

1. pika -> edp-ambulance-receiver (ambulance, two lanes): a backlog of 30
   standard messages, then 5 priority ones (one without x-edp-kind: the
   lane says its kind); all 5 overtake the backlog.
2. pika -> edp-ambulance-receiver (native, x-max-priority 10): the same
   with the priority property only.
3. edp-ambulance-sender -> pika: native mode, the broker hands the 5
   priority messages out first; two-lane mode, each lane holds its kind.
"""
import pika

from wire import RUN, Timer, check, connect, drain, finish, ok, start

S, P = 30, 5
t = Timer()
conn = connect()
ch = conn.channel()
ch.confirm_delivery()


def declare(base, lanes, native=False):
    ch.queue_declare(base + ".dlq", durable=True)
    args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": base + ".dlq"}
    if native:
        args["x-max-priority"] = 10
    for lane in lanes:
        ch.queue_declare("%s.%s" % (base, lane), durable=True, arguments=args)


def publish(queue, mid, kind, priority=None, header=True):
    h = {"x-edp-kind": kind} if header else {}
    ch.basic_publish("", queue, ("%s message %s" % (kind, mid)).encode(),
                     pika.BasicProperties(delivery_mode=2, message_id=mid,
                                          priority=priority, headers=h), mandatory=True)


def overtakes(ev, what):
    done = [e for e in ev if e["event"] == "processed"]
    check(len(done) == S + P, "%s: %d processed" % (what, len(done)))
    kinds = [e["kind"] for e in done]
    check(sorted(e["id"] for e in done if e["kind"] == "priority")
          == ["P%d" % i for i in range(1, P + 1)], "%s: kinds %s" % (what, kinds))
    last_p = max(i for i, k in enumerate(kinds) if k == "priority")
    before = kinds[:last_p].count("standard")
    # The standard thread keeps working meanwhile (about one message per
    # priority one), but the backlog does not go first: in a fifo all 30
    # would.
    check(before <= P + 2, "%s: %d standard before the last priority: %s" % (what, before, kinds))
    return before


# 1. two lanes
base = "interop.amb." + RUN
declare(base, ("standard", "priority"))
for i in range(1, S + 1):
    publish(base + ".standard", "S%d" % i, "standard")
for i in range(1, P + 1):
    publish(base + ".priority", "P%d" % i, "priority", header=i != 3)
ev = finish(start("edp-ambulance-receiver", "--mode", "ambulance", "--queue", base,
                  "--threads", "1", "--work-ms", "20", "--count", str(S + P)), 60)
pos = overtakes(ev, "ambulance")
ok("pika -> edp-ambulance-receiver (ambulance): %d standard, %d priority; the last "
   "priority message came after %d of them" % (S, P, pos))

# 2. native priority queue
nb = "interop.amb.native." + RUN
declare(nb, ("native",), native=True)
for i in range(1, S + 1):
    publish(nb + ".native", "S%d" % i, "standard", 0, header=False)
for i in range(1, P + 1):
    publish(nb + ".native", "P%d" % i, "priority", 10, header=False)
ev = finish(start("edp-ambulance-receiver", "--mode", "native", "--queue", nb,
                  "--threads", "1", "--work-ms", "20", "--count", str(S + P)), 60)
pos = overtakes(ev, "native")
ok("pika -> edp-ambulance-receiver (native): the last priority message came after "
   "%d standard ones" % pos)

# 3. edp's sender, a foreign consumer
sb = "interop.amb.send." + RUN
finish(start("edp-ambulance-sender", "--mode", "native", "--queue", sb, "--standard",
             str(S), "--priority", str(P), "--rate", "0"))
ch.basic_qos(prefetch_count=1)
got = drain(ch, sb + ".native", S + P)
ids = [p.message_id for _, p, _ in got]
check(ids[:P] == ["P%d" % i for i in range(1, P + 1)]
      and ids[P:] == ["S%d" % i for i in range(1, S + 1)], "native order %s" % ids)
for _, p, body in got:
    kind = "priority" if p.message_id[0] == "P" else "standard"
    check(p.priority == (10 if kind == "priority" else 0) and p.headers["x-edp-kind"] == kind
          and isinstance(p.headers["x-edp-sent-us"], int) and p.delivery_mode == 2
          and body.decode().startswith(kind.capitalize() + " Message"),
          "native message %r %r" % (p, body))
lb = "interop.amb.lanes." + RUN
finish(start("edp-ambulance-sender", "--mode", "carpool", "--queue", lb, "--standard",
             str(S), "--priority", str(P), "--rate", "0"))
for lane, n, kind in (("priority", P, "priority"), ("standard", S, "standard")):
    for _, p, _ in drain(ch, "%s.%s" % (lb, lane), n):
        check(p.headers["x-edp-kind"] == kind and p.message_id[0] == kind[0].upper(),
              "lane %s: %r" % (lane, p))
for b, lanes in ((base, ("standard", "priority")), (nb, ("native",)),
                 (sb, ("native",)), (lb, ("standard", "priority"))):
    for lane in lanes + ("dlq",):
        ch.queue_delete("%s.%s" % (b, lane))
conn.close()
ok("edp-ambulance-sender -> pika: native queue hands out P1..P%d before S1..S%d; "
   "carpool lanes hold their kinds (%s)" % (P, S, t))
