"""Watch notification across clients (docs/wire.md, "Watch notification"),
both sides written from the document alone.

1. Python watch services <-> edp-config-server: three services register
   (keys ["a"], [] = every key, ["a","zz"]); each gets its reply
   (type edp.watch.reply, its correlation_id, the current values), then
   exactly the changes of its keys (type edp.watch.change), with versions
   from one counter over all keys; a bad request gets an error reply; a
   service that is gone is removed from the registry at the next change.
2. A Python config server <-> edp-watch-service: reply, changes, and a
   repeated version that the service drops.
"""
import json
import os
import signal
import subprocess
import tempfile

import pika

from wire import RUN, Timer, check, connect, finish, ok, start

t = Timer()
RQ = "interop.config." + RUN


class Service:
    """A watch service as docs/wire.md describes one."""

    def __init__(self, name, keys):
        self.conn = connect()
        self.ch = self.conn.channel()
        # exclusive: the queue dies with our connection. Not auto_delete: we
        # cancel our consumer between reads, and that would delete it.
        self.queue = self.ch.queue_declare("", exclusive=True).method.queue
        self.name = name
        self.request({"service": name, "queue": self.queue, "keys": keys}, "reg-" + name)

    def request(self, body, corr):
        self.ch.basic_publish("", RQ, json.dumps(body).encode(), pika.BasicProperties(
            reply_to=self.queue, correlation_id=corr, content_type="application/json",
            delivery_mode=2))

    def next(self, timeout=15):
        for m, p, body in self.ch.consume(self.queue, inactivity_timeout=timeout):
            check(m is not None, "%s: nothing within %d s" % (self.name, timeout))
            self.ch.basic_ack(m.delivery_tag)
            self.ch.cancel()
            check(p.content_type == "application/json", "content_type %r" % p.content_type)
            return p, json.loads(body)

    def reply(self, corr):
        p, body = self.next()
        check(p.type == "edp.watch.reply" and p.correlation_id == corr,
              "%s: expected the reply, got %s %s %r" % (self.name, p.type, p.correlation_id, body))
        return body

    def change(self):
        p, body = self.next()
        check(p.type == "edp.watch.change", "%s: expected a change, got %r" % (self.name, body))
        return body["key"], body["value"], body["version"]

    def nothing(self):
        m, p, body = self.ch.basic_get(self.queue, auto_ack=True)
        check(m is None, "%s: unexpected message %r" % (self.name, body))


# 1. Python services, edp's config server.
store = os.path.join(tempfile.mkdtemp(prefix="edp-interop-"), "store.json")
server = start("edp-config-server", "--store", store, "--request-queue", RQ,
               stdin=subprocess.PIPE)


def say(line):
    server.stdin.write(line + "\n")
    server.stdin.flush()


a, every = Service("py-a", ["a"]), Service("py-all", [])
for s in (a, every):
    r = s.reply("reg-" + s.name)
    check(r == {"ok": True, "version": 0, "values": {}}, "first reply %r" % r)
say("set a 1")
say('set b "x"')
check(a.change() == ("a", 1, 1), "a's first change")
check(every.change() == ("a", 1, 1) and every.change() == ("b", "x", 2), "every key's changes")
c = Service("py-c", ["a", "zz"])
r = c.reply("reg-py-c")
check(r == {"ok": True, "version": 2, "values": {"a": {"value": 1, "version": 1}}},
      "reply with current values %r" % r)
c.request({"service": "py-c", "queue": c.queue, "keys": ["a"], "colour": "red"}, "bad")
r = c.reply("bad")
check(r["ok"] is False and "unknown field" in r["error"], "error reply %r" % r)
say('set a {"n":2}')
for s in (a, every, c):
    check(s.change() == ("a", {"n": 2}, 3), "%s: change to version 3" % s.name)
a.nothing()  # b changed, a watches only a
a.conn.close()  # its exclusive queue goes with it
say("set a 7")
for s in (every, c):
    check(s.change() == ("a", 7, 4), "%s: change to version 4" % s.name)
server.send_signal(signal.SIGTERM)
ev = finish(server, 30, expect_rc=130)
removed = [e for e in ev if e["event"] == "removed"]
check(len(removed) == 1 and removed[0]["queue"] == a.queue, "removed events %r" % removed)
check(sum(e["event"] == "registered" for e in ev) == 3
      and sum(e["event"] == "rejected" for e in ev) == 1, "server events")
for s in (every, c):
    s.conn.close()
ok("python watch services <-> edp-config-server: 3 registrations, 1 error reply, "
   "4 versions of one counter, 8 changes, gone service removed")

# 2. A Python config server, edp's watch service.
RQ2 = RQ + ".py"
conn = connect()
ch = conn.channel()
ch.queue_declare(RQ2, durable=True)
ch.confirm_delivery()
svc = start("edp-watch-service", "--name", "edp-svc", "--keys", "a", "--request-queue", RQ2,
            "--count", "2", "--idle-timeout", "20000")
for m, p, body in ch.consume(RQ2, inactivity_timeout=20):
    check(m is not None, "no registration from edp-watch-service")
    req = json.loads(body)
    check(req == {"service": "edp-svc", "queue": p.reply_to, "keys": ["a"]}
          and p.reply_to.startswith("amq.gen-") and p.correlation_id, "request %r %r" % (req, p))
    ch.basic_ack(m.delivery_tag)
    break
ch.cancel()


def send(body, typ, corr=None):
    ch.basic_publish("", p.reply_to, json.dumps(body).encode(), pika.BasicProperties(
        type=typ, correlation_id=corr, content_type="application/json"), mandatory=True)


send({"ok": True, "version": 5, "values": {"a": {"value": "one", "version": 5}}},
     "edp.watch.reply", p.correlation_id)
send({"key": "a", "value": "two", "version": 6}, "edp.watch.change")
send({"key": "a", "value": "stale", "version": 6}, "edp.watch.change")
send({"key": "a", "value": "three", "version": 8}, "edp.watch.change")
ev = finish(svc, 30)
got = [(e["value"], e["version"], e["initial"]) for e in ev if e["event"] == "config"]
check(ev[0]["event"] == "registered" and got == [("one", 5, True), ("two", 6, False),
                                                 ("three", 8, False)], "service events %r" % ev)
ch.queue_delete(RQ)
ch.queue_delete(RQ2)
conn.close()
ok("python config server <-> edp-watch-service: reply, 2 changes, repeated version "
   "dropped (%s)" % t)
