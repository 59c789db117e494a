"""Shared helpers of the interop scripts: a foreign (pika) client that
takes part in edp's patterns from docs/wire.md alone, and a way to run
edp's programs and read their --json events.

Environment: EDP_URL (a private node, from run-integration.sh), EDP_BIN
(edp's programs). Every script uses queue names unique to its run.
"""
import json
import os
import subprocess
import sys
import time
import urllib.parse

import pika

BIN = os.environ.get("EDP_BIN", "bin")
RUN = "%d" % os.getpid()


def url(vhost="/"):
    """EDP_URL with an explicit vhost: amqp://host/ means the vhost "" to
    pika (and to RabbitMQ's URI spec), so every URL we hand out, to pika
    and to edp alike, names its vhost percent-encoded ("/" is %2F)."""
    u = urllib.parse.urlsplit(os.environ["EDP_URL"])
    return "%s://%s/%s" % (u.scheme, u.netloc, urllib.parse.quote(vhost, safe=""))


def connect(vhost="/"):
    return pika.BlockingConnection(pika.URLParameters(url(vhost)))


STARTED = []


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    for proc in STARTED:  # what the programs still running had to say
        if proc.poll() is None:
            proc.kill()
            out, err = proc.communicate()
            print("--- %s\n%s%s" % (" ".join(proc.args), out[-3000:], err[-2000:]),
                  file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def ok(msg):
    print("ok: " + msg, flush=True)


def fnv1a32(key):
    """The multi-broker key hash (wire.md): FNV-1a, 32 bits, over the
    key's bytes; the broker is hash % number of brokers."""
    h = 2166136261
    for b in key.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def start(prog, *args, stdin=None, vhosts=("/",)):
    """Starts an edp program with --json and one --url per vhost."""
    cmd = [os.path.join(BIN, prog), "--json"]
    for v in vhosts:
        cmd += ["--url", url(v)]
    cmd += list(args)
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    return proc


def finish(proc, timeout=60, expect_rc=0):
    """Waits for a program; returns its --json events."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        fail("%s timed out; stderr:\n%s" % (proc.args[0], err[-2000:]))
    if proc.returncode != expect_rc:
        fail("%s exited %d, not %d; stderr:\n%s"
             % (" ".join(proc.args), proc.returncode, expect_rc, err[-2000:]))
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run(prog, *args, timeout=60):
    return finish(start(prog, *args), timeout)


def drain(ch, queue, n, timeout=20):
    """Consumes exactly n messages of queue (manual acks) and returns them
    as (method, properties, body) tuples; fails if they do not come
    within timeout seconds of silence."""
    got = []
    for method, props, body in ch.consume(queue, inactivity_timeout=timeout):
        if method is None:
            break
        ch.basic_ack(method.delivery_tag)
        got.append((method, props, body))
        if len(got) == n:
            break
    ch.cancel()
    check(len(got) == n, "%s: %d messages, expected %d" % (queue, len(got), n))
    return got


def depth(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


class Timer:
    def __init__(self):
        self.t0 = time.monotonic()

    def __str__(self):
        return "%.1f s" % (time.monotonic() - self.t0)
