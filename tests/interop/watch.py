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
import shutil
import signal
import subprocess
import tempfile
import urllib.parse

import pika

from wire import RUN, Timer, check, connect, finish, ok, start

t = Timer()
RQ = "interop.config." + RUN
USER = urllib.parse.unquote(urllib.parse.urlsplit(os.environ["EDP_URL"]).username or "guest")


class Service:
    """A watch service as docs/wire.md describes one."""

    def __init__(self, name, keys, body=None):
        self.conn = connect()
        self.ch = self.conn.channel()
        # exclusive: the queue dies with our connection. Not auto_delete: we
        # cancel our consumer between reads, and that would delete it.
        self.queue = self.ch.queue_declare("", exclusive=True).method.queue
        # The request queue too, as wire.md says: a request sent before the
        # server declared it would be dropped (routed nowhere).
        self.ch.queue_declare(RQ, durable=True)
        self.name = name
        self.token = None
        self.corr = "%s-%s" % (name, os.urandom(16).hex())
        if body is None:
            body = {"service": name, "queue": self.queue, "keys": keys}
        # user_id: our login user (the broker checks it); the server of
        # branch watch wants it, main's ignores it.
        self.ch.basic_publish("", RQ, json.dumps(body).encode(), pika.BasicProperties(
            reply_to=self.queue, correlation_id=self.corr, content_type="application/json",
            delivery_mode=2, user_id=USER))

    def next(self, timeout=15):
        for m, p, body in self.ch.consume(self.queue, inactivity_timeout=timeout):
            check(m is not None, "%s: nothing within %d s" % (self.name, timeout))
            self.ch.basic_ack(m.delivery_tag)
            if p.type == "edp.watch.ping":
                continue  # the server checking that our queue exists
            self.ch.cancel()
            check(p.content_type == "application/json", "content_type %r" % p.content_type)
            return p, json.loads(body)

    def reply(self):
        p, body = self.next()
        check(p.type == "edp.watch.reply" and p.correlation_id == self.corr,
              "%s: expected the reply, got %s %s %r" % (self.name, p.type, p.correlation_id, body))
        self.token = body.pop("token", None)
        return body

    def change(self):
        p, body = self.next()
        check(p.type == "edp.watch.change", "%s: expected a change, got %r" % (self.name, body))
        check(body.get("token") == self.token, "%s: change with another token" % self.name)
        return body["key"], body["value"], body["version"]

    def nothing(self):
        m, p, body = self.ch.basic_get(self.queue, auto_ack=True)
        check(m is None, "%s: unexpected message %r" % (self.name, body))


# 1. Python services, edp's config server.
store_dir = tempfile.mkdtemp(prefix="edp-interop-")
store = os.path.join(store_dir, "store.json")
server = start("edp-config-server", "--store", store, "--request-queue", RQ,
               stdin=subprocess.PIPE)


def say(line):
    server.stdin.write(line + "\n")
    server.stdin.flush()


a, every = Service("py-a", ["a"]), Service("py-all", [])
for s in (a, every):
    r = s.reply()
    check(r == {"ok": True, "version": 0, "values": {}}, "first reply %r" % r)
say("set a 1")
say('set b "x"')
check(a.change() == ("a", 1, 1), "a's first change")
check(every.change() == ("a", 1, 1) and every.change() == ("b", "x", 2), "every key's changes")
c = Service("py-c", ["a", "zz"])
r = c.reply()
check(r == {"ok": True, "version": 2, "values": {"a": {"value": 1, "version": 1}}},
      "reply with current values %r" % r)
bad = Service("py-bad", None, {"service": "py-bad", "keys": ["a"], "colour": "red"})
r = bad.reply()
check(r["ok"] is False and "unknown field" in r["error"], "error reply %r" % r)
bad.conn.close()
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
shutil.rmtree(store_dir)
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


token = os.urandom(16).hex()


def send(body, typ, corr=None):
    ch.basic_publish("", p.reply_to, json.dumps(body).encode(), pika.BasicProperties(
        type=typ, correlation_id=corr, content_type="application/json", user_id=USER),
        mandatory=True)


# The token (branch watch: the client believes only changes that carry the
# one its reply gave it) is an extra field to main's client.
send({"ok": True, "version": 5, "token": token, "values": {"a": {"value": "one", "version": 5}}},
     "edp.watch.reply", p.correlation_id)
send({"key": "a", "value": "two", "version": 6, "token": token}, "edp.watch.change")
send({"key": "a", "value": "stale", "version": 6, "token": token}, "edp.watch.change")
send({"key": "a", "value": "three", "version": 8, "token": token}, "edp.watch.change")
ev = finish(svc, 30)
got = [(e["value"], e["version"], e["initial"]) for e in ev if e["event"] == "config"]
check(ev[0]["event"] == "registered" and got == [("one", 5, True), ("two", 6, False),
                                                 ("three", 8, False)], "service events %r" % ev)
ch.queue_delete(RQ)
ch.queue_delete(RQ2)
conn.close()
ok("python config server <-> edp-watch-service: reply, 2 changes, repeated version "
   "dropped (%s)" % t)
