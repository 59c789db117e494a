"""The RabbitMQ Java client (Debian's librabbitmq-client-java 5.0,
compiled once with javac) as a foreign peer: a Java producer
feeds edp-forward-receiver, a Java consumer reads edp-trade-sender's
trades (per-account order, header types). Skipped, saying so, when the
JDK or the client is not installed: pika covers every pattern."""
import collections
import json
import os
import shutil
import subprocess
import tempfile

from wire import RUN, Timer, check, connect, fail, finish, ok, run, start, url

JARS = ["/usr/share/java/amqp-client.jar", "/usr/share/java/slf4j-api.jar"]
if not shutil.which("javac") or not all(map(os.path.exists, JARS)):
    print("skip: java client: no JDK or librabbitmq-client-java")
    raise SystemExit(0)
t = Timer()
src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Interop.java")
classes = tempfile.mkdtemp(prefix="edp-interop-java-")
subprocess.run(["javac", "-cp", ":".join(JARS), "-d", classes, src], check=True, timeout=120)
cp = ":".join(JARS + [classes])


def java(*args):
    r = subprocess.run(["java", "-cp", cp, "Interop", url()] + list(args),
                       capture_output=True, text=True, timeout=90)
    if r.returncode:
        fail("java %s exited %d: %s" % (args[0], r.returncode, r.stderr[-2000:]))
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


N = 100
q = "interop.java.fwd." + RUN
java("forward-produce", q, str(N))
ev = run("edp-forward-receiver", "--queue", q, "--count", str(N))
ids = sorted(e["message_id"] for e in ev if e["event"] == "processed")
check(ids == sorted("java-%d" % i for i in range(1, N + 1)), "processed %d java ids" % len(ids))
ok("java -> edp-forward-receiver: %d messages processed once" % N)

ex, q2 = "interop.java.ex." + RUN, "interop.java.td." + RUN
finish(start("edp-trade-sender", "--exchange", ex, "--queue", q2, "--count", "60",
             "--accounts", "3", "--id-prefix", "J"))
seqs = collections.defaultdict(list)
for e in java("trades-consume", q2, "60"):
    check(e["account_type"].endswith("LongString") and e["seq_type"] == "Long"
          and e["routing_key"] == "trade.eq." + e["account"] and e["delivery_mode"] == 2
          and e["message_id"] == "J-%s-%d" % (e["account"], e["seq"]), "java read %r" % e)
    seqs[e["account"]].append(e["seq"])
check(len(seqs) == 3 and all(v == list(range(1, 21)) for v in seqs.values()),
      "java per-account seqs %r" % dict(seqs))
ch = connect().channel()
for name in (q, q + ".dlq", q2, q2 + ".dlq"):
    ch.queue_delete(name)
ch.exchange_delete(ex)
ch.connection.close()
shutil.rmtree(classes)
ok("edp-trade-sender -> java: 60 trades, 3 accounts in seq order, account LongString, "
   "seq Long (%s)" % t)
