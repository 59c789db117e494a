/*
 * integ_multi_broker.c - the multi-broker pattern end to end through the
 * real programs, against three private RabbitMQ nodes this suite starts
 * itself (in parallel, once) and always stops: an even spread processed
 * exactly once, a node SIGKILLed mid-run and started again without a
 * confirmed message lost or a long sender stall, per-key order in key
 * mode, a clear exit 69 when every broker is down, and the clustered
 * alternative (the three nodes joined, a quorum queue) surviving a
 * stopped node.
 *
 * It ignores the harness's own node (EDP_URL): it needs nodes it may kill.
 */
#define _DEFAULT_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "edp.h"
#include "t_nodes.h"
#include "testlib.h"

#define NODES 3
/* The failover bound stated in docs/multi-broker.md and the README: a
 * sender never waits longer than confirm_timeout (5 s) plus one connect
 * attempt (1 s) for a dying broker. */
#define FAILOVER_BOUND_MS 6000

/* ---------- running the programs ---------- */

/* argv of a program with every node's --url, then the extra args. */
static void build_argv(char **argv, const char *prog, const char **extra,
                       int with_urls) {
  int n = 0;
  argv[n++] = (char *)t_bin(prog);
  for (int i = 0; with_urls && i < NODES; i++) {
    argv[n++] = "--url";
    argv[n++] = t_node_url[i];
  }
  argv[n++] = "--json";
  for (int i = 0; extra[i]; i++)
    argv[n++] = (char *)extra[i];
  argv[n] = NULL;
}

static void spawn_prog(t_proc *p, const char *prog, const char **extra) {
  char *argv[64];
  build_argv(argv, prog, extra, 1);
  ck_assert_int_eq(t_spawn(p, argv, NULL), 0);
}

/* Message ids are PREFIX-SEQ; counts per seq. */
typedef struct tally {
  const char *prefix;
  int n;
  int *confirmed, *processed, *broker_of;
  int per_broker[NODES];
  int confirms, processed_total, dups, foreign;
  int downs[NODES], ups[NODES], recv_ups[NODES];
  int confirmed_after_up[NODES]; /* by a broker after it came back */
  long long max_gap_ms, last_confirm_ms;
  /* key mode */
  int keys;
  long long *last_kseq;
  int *key_broker;
  int order_errors, key_spread_errors;
} tally;

static void tally_init(tally *t, const char *prefix, int n, int keys) {
  memset(t, 0, sizeof(*t));
  t->prefix = prefix;
  t->n = n;
  t->confirmed = calloc((size_t)n + 1, sizeof(int));
  t->processed = calloc((size_t)n + 1, sizeof(int));
  t->broker_of = calloc((size_t)n + 1, sizeof(int));
  t->keys = keys;
  t->last_kseq = calloc((size_t)keys + 1, sizeof(long long));
  t->key_broker = malloc(((size_t)keys + 1) * sizeof(int));
  for (int i = 0; i <= keys; i++)
    t->key_broker[i] = -1;
}

static void tally_free(tally *t) {
  free(t->confirmed);
  free(t->processed);
  free(t->broker_of);
  free(t->last_kseq);
  free(t->key_broker);
}

static int seq_of(const tally *t, const char *id) {
  size_t pl = strlen(t->prefix);
  if (!id || strncmp(id, t->prefix, pl) || id[pl] != '-')
    return -1;
  int seq = atoi(id + pl + 1);
  return seq >= 1 && seq <= t->n ? seq : -1;
}

static void on_event(tally *t, json_t *ev, int from_receiver) {
  const char *kind = json_string_value(json_object_get(ev, "event"));
  if (!kind)
    return;
  int broker = (int)json_integer_value(json_object_get(ev, "broker"));
  if (broker < 0 || broker >= NODES)
    broker = 0;
  if (!strcmp(kind, "broker_down") && !from_receiver) {
    t->downs[broker]++;
    return;
  }
  if (!strcmp(kind, "broker_up")) {
    if (from_receiver)
      t->recv_ups[broker]++;
    else if (t->downs[broker]) /* a return, not the first connect */
      t->ups[broker]++;
    return;
  }
  int seq = seq_of(t, json_string_value(json_object_get(ev, "message_id")));
  if (!strcmp(kind, "confirmed")) {
    if (seq < 0) {
      t->foreign++;
      return;
    }
    /* The sender's own clock: our reading may lag behind it. */
    long long now = json_integer_value(json_object_get(ev, "t_ms"));
    if (t->last_confirm_ms && now - t->last_confirm_ms > t->max_gap_ms)
      t->max_gap_ms = now - t->last_confirm_ms;
    t->last_confirm_ms = now;
    t->confirmed[seq]++;
    t->confirms++;
    if (t->ups[broker])
      t->confirmed_after_up[broker]++;
  } else if (!strcmp(kind, "processed")) {
    if (seq < 0) {
      t->foreign++;
      return;
    }
    if (t->processed[seq]++)
      t->dups++;
    else
      t->processed_total++;
    t->per_broker[broker]++;
    t->broker_of[seq] = broker;
    const char *key = json_string_value(json_object_get(ev, "key"));
    long long kseq = json_integer_value(json_object_get(ev, "kseq"));
    if (t->keys && key && !strncmp(key, "ACC-", 4)) {
      int k = atoi(key + 4);
      if (k >= 0 && k < t->keys) {
        if (kseq != t->last_kseq[k] + 1)
          t->order_errors++;
        t->last_kseq[k] = kseq;
        if (t->key_broker[k] < 0)
          t->key_broker[k] = broker;
        else if (t->key_broker[k] != broker)
          t->key_spread_errors++;
      }
    }
  }
}

static void sender_ev(void *ud, json_t *ev) { on_event(ud, ev, 0); }
static void receiver_ev(void *ud, json_t *ev) { on_event(ud, ev, 1); }

/* Reads whatever lines are there from p, up to ~1 ms of waiting. */
static int pump_lines(t_proc *p, tally *t, int from_receiver) {
  char line[4096];
  int r;
  while ((r = t_readline(p, line, sizeof(line), 1)) == 1) {
    json_t *ev = json_loads(line, 0, NULL);
    if (ev) {
      on_event(t, ev, from_receiver);
      json_decref(ev);
    }
  }
  return r; /* 0 = EOF, -1 = nothing more for now */
}

/* Waits up to ms for either child to have output. */
static void wait_output(t_proc *a, t_proc *b, int ms) {
  struct pollfd fds[2] = {{a->eof ? -1 : a->out_fd, POLLIN, 0},
                          {b->eof ? -1 : b->out_fd, POLLIN, 0}};
  poll(fds, 2, ms);
}

static int all_processed(const tally *t) {
  for (int s = 1; s <= t->n; s++)
    if (t->confirmed[s] && !t->processed[s])
      return 0;
  return 1;
}

static uint32_t depth_on(int node, const char *queue) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_node_url[node];
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  uint32_t msgs = 0;
  ck_assert_int_eq(edp_conn_queue_inspect(c, queue, &msgs, NULL), 0);
  edp_conn_destroy(&c);
  return msgs;
}

/* After a failure a message can be redelivered after the receiver was
 * stopped (at least once: e.g. its ack was lost with the node). A second
 * receiver drains what is left: it may only be duplicates, and then the
 * queue is empty on every node given. */
static void drain_rest(tally *t, const char *q, int first, int last,
                       int quorum) {
  int before = t->processed_total, dups = t->dups;
  t_proc r;
  const char *rargs[] = {"-q", q, "--idle-exit-ms", "2000", NULL};
  char *argv[64];
  int n = 0;
  argv[n++] = (char *)t_bin("edp-multi-receiver");
  for (int i = first; i <= last; i++) {
    argv[n++] = "--url";
    argv[n++] = t_node_url[i];
  }
  argv[n++] = "--json";
  if (quorum)
    argv[n++] = "--quorum";
  for (int i = 0; rargs[i]; i++)
    argv[n++] = (char *)rargs[i];
  argv[n] = NULL;
  ck_assert_int_eq(t_spawn(&r, argv, NULL), 0);
  ck_assert_int_eq(t_collect(&r, 60000, receiver_ev, t), 0);
  ck_assert_int_eq(t->processed_total, before);
  if (t->dups > dups)
    fprintf(stderr, "%d duplicate(s) left in the queue after the run\n",
            t->dups - dups);
  for (int i = first; i <= last; i++)
    ck_assert_uint_eq(depth_on(i, q), 0);
}

/* ---------- tests ---------- */

/* 30,000 messages round-robin over three nodes: every one confirmed and
 * processed exactly once, each node with a third (+-10%). */
START_TEST(spread_exactly_once) {
  const int n = 30000;
  const char *q = t_unique("multi.spread");
  const char *prefix = t_unique("sp");
  tally t;
  tally_init(&t, prefix, n, 0);
  t_proc s;
  const char *sargs[] = {"-q", q, "-n", "30000", "--id-prefix", prefix, NULL};
  spawn_prog(&s, "edp-multi-sender", sargs);
  ck_assert_int_eq(t_collect(&s, 120000, sender_ev, &t), 0);
  ck_assert_int_eq(t.confirms, n);
  t_proc r;
  const char *rargs[] = {"-q", q, "-n", "30000", NULL};
  spawn_prog(&r, "edp-multi-receiver", rargs);
  ck_assert_int_eq(t_collect(&r, 120000, receiver_ev, &t), 0);
  ck_assert_int_eq(t.processed_total, n);
  ck_assert_int_eq(t.dups, 0);
  ck_assert_int_eq(t.foreign, 0);
  for (int s2 = 1; s2 <= n; s2++)
    ck_assert_msg(t.processed[s2] == 1, "message %d processed %d times", s2,
                  t.processed[s2]);
  for (int i = 0; i < NODES; i++) {
    ck_assert_msg(t.per_broker[i] >= n / NODES * 9 / 10 &&
                      t.per_broker[i] <= n / NODES * 11 / 10,
                  "broker %d processed %d of %d", i, t.per_broker[i], n);
    /* nothing left behind, so nothing was processed twice elsewhere */
    ck_assert_uint_eq(depth_on(i, q), 0);
  }
  tally_free(&t);
}
END_TEST

/* Node 1 SIGKILLed mid-run and started again: the sender finishes (exit
 * 0) with every message confirmed, never stalls past the failover bound,
 * and every confirmed message is processed (at least once: the ones the
 * dead node held come back with it). */
START_TEST(node_killed_mid_run) {
  const int n = 30000;
  const char *q = t_unique("multi.kill");
  const char *prefix = t_unique("kl");
  tally t;
  tally_init(&t, prefix, n, 0);
  t_proc r, s;
  const char *rargs[] = {"-q", q, NULL};
  spawn_prog(&r, "edp-multi-receiver", rargs);
  const char *sargs[] = {"-q",          q,      "-n", "30000", "--rate", "1500",
                         "--id-prefix", prefix, NULL};
  spawn_prog(&s, "edp-multi-sender", sargs);
  pid_t starter = -1;
  int started = -1;
  long long killed_at = 0, up_at = 0, deadline = t_now_ms() + 120000;
  while (!s.eof && t_now_ms() < deadline) {
    wait_output(&s, &r, 200);
    pump_lines(&s, &t, 0);
    pump_lines(&r, &t, 1);
    if (!killed_at && t.confirms >= 3000) {
      ck_assert_int_eq(t_node_cmd("kill", 1, NULL), 0);
      killed_at = t_now_ms();
      starter = t_broker_spawn("start", t_node_dir[1], NULL); /* ~8 s */
    }
    int st;
    if (starter > 0 && !up_at && waitpid(starter, &st, WNOHANG) == starter) {
      up_at = t_now_ms();
      started = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
  }
  long long ended_at = t_now_ms();
  ck_assert_msg(s.eof, "sender did not finish");
  ck_assert_int_eq(t_wait(&s, 10000), 0);
  if (!up_at)
    started = t_pid_wait(starter);
  ck_assert_int_eq(started, 0);
  ck_assert_int_eq(t.confirms, n);
  ck_assert_int_ge(t.downs[1], 1);
  /* Back in the rotation before the run ended (restarted ~2 s in, a node
   * starts in 8-15 s on a quiet machine, the run lasts 20 s), given the
   * sender's retry interval after the node was up. On a loaded machine
   * the node may come back too late for that: said, not failed. */
  if (up_at && ended_at - up_at >= 4000) {
    ck_assert_int_ge(t.ups[1], 1);
    ck_assert_int_gt(t.confirmed_after_up[1], 0);
  } else {
    fprintf(stderr,
            "node_killed_mid_run: node 1 was up %lld ms before the run "
            "ended: its return to the sender is not checked\n",
            up_at ? ended_at - up_at : -1LL);
  }
  ck_assert_msg(t.max_gap_ms <= FAILOVER_BOUND_MS, "sender stalled %lld ms",
                t.max_gap_ms);
  /* The receiver resumes node 1 and drains what it kept. */
  deadline = t_now_ms() + 90000;
  while ((!all_processed(&t) || t.recv_ups[1] < 2) && t_now_ms() < deadline) {
    wait_output(&r, &r, 500);
    if (pump_lines(&r, &t, 1) == 0)
      break;
  }
  t_signal(&r, SIGTERM);
  pump_lines(&r, &t, 1);
  ck_assert_int_eq(t_collect(&r, 20000, receiver_ev, &t), 130);
  ck_assert_msg(t.recv_ups[1] >= 2, "receiver never resumed node 1");
  int missing = 0;
  for (int i = 1; i <= n; i++)
    if (t.confirmed[i] && !t.processed[i])
      missing++;
  ck_assert_msg(missing == 0, "%d confirmed messages never processed", missing);
  fprintf(stderr,
          "node_killed_mid_run: max sender gap %lld ms, %d duplicates, "
          "per broker %d/%d/%d\n",
          t.max_gap_ms, t.dups, t.per_broker[0], t.per_broker[1],
          t.per_broker[2]);
  drain_rest(&t, q, 0, NODES - 1, 0);
  tally_free(&t);
}
END_TEST

/* Key mode: each account's messages go to one broker and, with one
 * consumer draining, arrive in their order. */
START_TEST(key_mode_keeps_order) {
  const int n = 6000, keys = 20;
  const char *q = t_unique("multi.key");
  const char *prefix = t_unique("ky");
  tally t;
  tally_init(&t, prefix, n, keys);
  t_proc s, r;
  const char *sargs[] = {"-q",     q,    "-n",          "6000", "--key-mode",
                         "--keys", "20", "--id-prefix", prefix, NULL};
  spawn_prog(&s, "edp-multi-sender", sargs);
  ck_assert_int_eq(t_collect(&s, 120000, sender_ev, &t), 0);
  ck_assert_int_eq(t.confirms, n);
  const char *rargs[] = {"-q", q, "-n", "6000", NULL};
  spawn_prog(&r, "edp-multi-receiver", rargs);
  ck_assert_int_eq(t_collect(&r, 120000, receiver_ev, &t), 0);
  ck_assert_int_eq(t.processed_total, n);
  ck_assert_int_eq(t.order_errors, 0);
  ck_assert_int_eq(t.key_spread_errors, 0);
  for (int k = 0; k < keys; k++)
    ck_assert_int_eq(t.last_kseq[k], n / keys);
  int used = 0;
  for (int i = 0; i < NODES; i++)
    used += t.per_broker[i] > 0;
  ck_assert_int_ge(used, 2); /* 20 keys do spread */
  tally_free(&t);
}
END_TEST

static long cpu_ticks(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  size_t len = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[len] = '\0';
  char *p = strrchr(buf, ')');
  long utime = 0, stime = 0;
  /* fields after the command: state ppid ... utime(14) stime(15) */
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld",
                   &utime, &stime) != 2)
    return -1;
  return utime + stime;
}

/* No broker reachable: exit 69 after --down-max-ms, not before, not much
 * after, and without spinning meanwhile. */
START_TEST(all_down_exits_69) {
  char *argv[] = {(char *)t_bin("edp-multi-sender"),
                  "--url",
                  "amqp://guest:guest@127.0.0.1:1/",
                  "--url",
                  "amqp://guest:guest@127.0.0.1:2/",
                  "--url",
                  "amqp://guest:guest@127.0.0.1:3/",
                  "-n",
                  "10",
                  "--down-max-ms",
                  "3000",
                  "--json",
                  NULL};
  t_proc s;
  long long t0 = t_now_ms();
  ck_assert_int_eq(t_spawn(&s, argv, NULL), 0);
  char line[512];
  /* Read the startup events, then measure CPU over the wait. */
  while (t_readline(&s, line, sizeof(line), 2000) == 1)
    ;
  long ticks = cpu_ticks(s.pid);
  int rc = t_wait(&s, 15000);
  long long took = t_now_ms() - t0;
  ck_assert_int_eq(rc, 69);
  ck_assert_int_ge(took, 3000);
  ck_assert_int_le(took, 8000);
  long hz = sysconf(_SC_CLK_TCK);
  ck_assert_msg(ticks >= 0 && ticks < hz / 4,
                "sender used %ld ticks of CPU in 2 s: a busy loop", ticks);
  /* A malformed URL among them is a usage error. */
  char *bad[] = {(char *)t_bin("edp-multi-sender"),
                 "--url",
                 t_node_url[0],
                 "--url",
                 "http://nope",
                 "-n",
                 "1",
                 NULL};
  ck_assert_int_eq(t_spawn(&s, bad, NULL), 0);
  ck_assert_int_eq(t_wait(&s, 10000), 64);
}
END_TEST

/* One broker is named by a host whose DNS server never answers: the test
 * binds 127.0.0.1:53 and reads nothing from it, and the sender runs in a
 * mount namespace whose /etc/resolv.conf names that server twice, 5 s a
 * try, two tries, so a plain getaddrinfo waits 20 s. Under podman a
 * killed broker container's name did that, and the sender stopped sending
 * to the live brokers for 20 s and more. The lookup may cost one connect
 * timeout (1 s) per attempt, no more: 3000 messages reach the live node,
 * all confirmed, and the sender says why the named broker is down. */
START_TEST(unanswered_name_lookup_does_not_stall) {
  int dns = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_msg(dns >= 0 && !bind(dns, (struct sockaddr *)&a, sizeof(a)),
                "cannot bind 127.0.0.1:53 for a silent DNS server (this test "
                "runs as root, as make check does in CI): %s",
                strerror(errno));
  char dir[] = "/tmp/edp-dns.XXXXXX", conf[64], err[64], script[256];
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(conf, sizeof(conf), "%s/resolv.conf", dir);
  snprintf(err, sizeof(err), "%s/stderr", dir);
  FILE *f = fopen(conf, "w");
  ck_assert_ptr_nonnull(f);
  fputs("nameserver 127.0.0.1\nnameserver 127.0.0.1\n"
        "options timeout:5 attempts:2\n",
        f);
  fclose(f);
  snprintf(script, sizeof(script),
           "mount --bind %s /etc/resolv.conf && exec \"$0\" \"$@\" 2>%s", conf,
           err);
  const char *q = t_unique("multi.dns");
  const char *prefix = t_unique("dns");
  tally t;
  tally_init(&t, prefix, 3000, 0);
  char *argv[] = {"/usr/bin/unshare",
                  "-m",
                  "/bin/sh",
                  "-c",
                  script,
                  (char *)t_bin("edp-multi-sender"),
                  "--url",
                  t_node_url[0],
                  "--url",
                  "amqp://guest:guest@edp-silent-dns.invalid:5672/",
                  "-q",
                  (char *)q,
                  "-n",
                  "3000",
                  "--id-prefix",
                  (char *)prefix,
                  "--json",
                  NULL};
  t_proc s;
  long long t0 = t_now_ms();
  ck_assert_int_eq(t_spawn(&s, argv, NULL), 0);
  int rc = t_collect(&s, 60000, sender_ev, &t);
  long long took = t_now_ms() - t0;
  char text[8192] = "";
  f = fopen(err, "r");
  if (f) {
    text[fread(text, 1, sizeof(text) - 1, f)] = '\0';
    fclose(f);
  }
  fprintf(stderr,
          "unanswered_name_lookup_does_not_stall: %lld ms, %d confirmed\n",
          took, t.confirms);
  unlink(conf);
  unlink(err);
  rmdir(dir);
  close(dns);
  ck_assert_msg(rc == 0, "sender exit %d: %s", rc, text);
  ck_assert_int_eq(t.confirms, 3000);
  ck_assert_int_eq(t.foreign, 0);
  ck_assert_ptr_nonnull(strstr(text, "name lookup of edp-silent-dns.invalid "
                                     "got no answer within 1000 ms"));
  /* Without the bound the first lookup alone took 40 s (two names, 20 s
   * each). */
  ck_assert_int_lt(took, 10000);
  tally_free(&t);
}
END_TEST

/* The clustered alternative: the three nodes joined into one cluster, a
 * quorum queue, one node stopped mid-run: nothing confirmed is lost. */
START_TEST(cluster_quorum_survives_stopped_node) {
  ck_assert_int_eq(t_node_cmd("join", 1, t_node_dir[0]), 0);
  ck_assert_int_eq(t_node_cmd("join", 2, t_node_dir[0]), 0);
  const int n = 6000;
  const char *q = t_unique("multi.quorum");
  const char *prefix = t_unique("qq");
  tally t;
  tally_init(&t, prefix, n, 0);
  t_proc r, s;
  const char *rargs[] = {"-q", q, "--quorum", NULL};
  spawn_prog(&r, "edp-multi-receiver", rargs);
  const char *sargs[] = {"-q",   q,          "-n",          "6000", "--rate",
                         "1000", "--quorum", "--id-prefix", prefix, NULL};
  spawn_prog(&s, "edp-multi-sender", sargs);
  int stopped = 0;
  long long deadline = t_now_ms() + 120000;
  while (!s.eof && t_now_ms() < deadline) {
    wait_output(&s, &r, 200);
    pump_lines(&s, &t, 0);
    pump_lines(&r, &t, 1);
    if (!stopped && t.confirms >= 2000) {
      ck_assert_int_eq(t_node_cmd("stop", 2, NULL), 0);
      stopped = 1;
    }
  }
  ck_assert_int_eq(t_wait(&s, 10000), 0);
  ck_assert_int_eq(t.confirms, n);
  ck_assert_int_ge(t.downs[2], 1);
  deadline = t_now_ms() + 60000;
  while (!all_processed(&t) && t_now_ms() < deadline) {
    wait_output(&r, &r, 500);
    if (pump_lines(&r, &t, 1) == 0)
      break;
  }
  t_signal(&r, SIGTERM);
  ck_assert_int_eq(t_collect(&r, 20000, receiver_ev, &t), 130);
  ck_assert_msg(all_processed(&t), "confirmed messages lost in the cluster");
  ck_assert_int_eq(t.processed_total, n);
  /* One queue for the whole cluster: drained through the live nodes. */
  drain_rest(&t, q, 0, 1, 1);
  fprintf(stderr, "cluster: %d duplicates, max sender gap %lld ms\n", t.dups,
          t.max_gap_ms);
  tally_free(&t);
}
END_TEST

/* ---------- the library under broker-side faults ---------- */

/* What a multi-broker consumer reported, shared with its threads. */
typedef struct cledger {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  const char *prefix;
  int seen[NODES][256]; /* deliveries of PREFIX-<n> per broker and n */
  int processed[NODES], foreign;
  int ups[NODES], downs[NODES], cancels[NODES];
  int hold_n;  /* the handler of PREFIX-hold_n waits while it is >= 0 */
  int holding; /* handlers waiting so */
} cledger;

static void cledger_init(cledger *l, const char *prefix) {
  memset(l, 0, sizeof(*l));
  pthread_mutex_init(&l->mu, NULL);
  pthread_cond_init(&l->cv, NULL);
  l->prefix = prefix;
  l->hold_n = -1;
}

static int c_handler(void *ud, int broker, const edp_delivery *d) {
  cledger *l = ud;
  size_t pl = strlen(l->prefix);
  pthread_mutex_lock(&l->mu);
  int n = -1;
  if (d->message_id && !strncmp(d->message_id, l->prefix, pl) &&
      d->message_id[pl] == '-')
    n = atoi(d->message_id + pl + 1);
  if (broker >= 0 && broker < NODES && n >= 0 && n < 256) {
    l->seen[broker][n]++;
    l->processed[broker]++;
  } else {
    l->foreign++;
  }
  pthread_cond_broadcast(&l->cv);
  if (n >= 0 && n == l->hold_n) {
    l->holding++;
    pthread_cond_broadcast(&l->cv);
    while (l->hold_n == n)
      pthread_cond_wait(&l->cv, &l->mu);
  }
  pthread_mutex_unlock(&l->mu);
  return 0;
}

static void c_on_event(void *ud, int broker, int ev, size_t count) {
  cledger *l = ud;
  (void)count;
  if (broker < 0 || broker >= NODES)
    return;
  pthread_mutex_lock(&l->mu);
  if (ev == EDP_MULTI_UP)
    l->ups[broker]++;
  else if (ev == EDP_MULTI_DOWN)
    l->downs[broker]++;
  else if (ev == EDP_MULTI_CANCELLED)
    l->cancels[broker]++;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
}

/* Waits until *counter (under l->mu) reaches want; returns its value. */
static int await_count(cledger *l, const int *counter, int want,
                       int timeout_ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&l->mu);
  while (*counter < want && pthread_cond_timedwait(&l->cv, &l->mu, &ts) == 0)
    ;
  int v = *counter;
  pthread_mutex_unlock(&l->mu);
  return v;
}

/* Publishes PREFIX-first .. PREFIX-(first+n-1) to q on node, confirmed. */
static void publish_to(int node, const char *q, const char *prefix, int first,
                       int n) {
  edp_conn *c = t_node_conn(node);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  for (int i = first; i < first + n; i++) {
    char id[64];
    snprintf(id, sizeof(id), "%s-%d", prefix, i);
    edp_msg m;
    edp_msg_init(&m);
    m.routing_key = q;
    m.body = id;
    m.body_len = strlen(id);
    m.message_id = id;
    m.persistent = 1;
    m.mandatory = 1; /* unroutable (no queue) would be an error here */
    ck_assert_int_eq(edp_conn_publish_confirmed(c, &m, 10000), 0);
  }
  edp_conn_destroy(&c);
}

static edp_multi_consumer *start_consumer(cledger *l, const char *q,
                                          const char **urls) {
  for (int i = 0; i < NODES; i++)
    urls[i] = t_node_url[i];
  edp_multi_consumer_opts o;
  edp_multi_consumer_opts_init(&o);
  o.urls = urls;
  o.n_urls = NODES;
  o.queue = q;
  o.retry_initial_ms = 100;
  o.retry_max_ms = 1000;
  o.client_name = "multi-cancel";
  o.handler = c_handler;
  o.on_event = c_on_event;
  o.ud = l;
  edp_multi_consumer *mc = NULL;
  char why[300] = "";
  ck_assert_msg(edp_multi_consumer_new(&o, &mc, why, sizeof(why)) == 0, "%s",
                why);
  for (int i = 0; i < NODES; i++)
    ck_assert_int_eq(await_count(l, &l->ups[i], 1, 20000), 1);
  return mc;
}

static void delete_everywhere(const char *q) {
  for (int i = 0; i < NODES; i++) {
    edp_conn *c = t_node_conn(i);
    edp_conn_queue_delete(c, q);
    edp_conn_destroy(&c);
  }
}

/* Issue 11: the queue deleted on one broker under the running consumer.
 * The broker cancels the consumer; the thread used to reconnect, declare
 * the queue again and never consume it, while its events said UP and its
 * error stayed 0. Now it declares the queue again and consumes: what is
 * published there afterwards is processed, and the events say so
 * (CANCELLED, then UP; no DOWN: the connection never went). */
START_TEST(queue_deleted_under_consumer_consumes_again) {
  const char *q = t_unique("multi.deleted");
  const char *prefix = t_unique("dl");
  cledger *l = calloc(1, sizeof(*l));
  cledger_init(l, prefix);
  const char *urls[NODES];
  edp_multi_consumer *mc = start_consumer(l, q, urls);
  for (int i = 0; i < NODES; i++) {
    publish_to(i, q, prefix, 0, 10);
    ck_assert_int_eq(await_count(l, &l->processed[i], 10, 10000), 10);
  }

  edp_conn *admin = t_node_conn(1);
  long long t0 = t_now_ms();
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  edp_conn_destroy(&admin);
  /* Back in business: an UP after the first (the consumer's own event). */
  ck_assert_msg(await_count(l, &l->ups[1], 2, 15000) >= 2,
                "broker 1 never reported up again");
  long long up_ms = t_now_ms() - t0;
  publish_to(1, q, prefix, 100, 20);
  int got = await_count(l, &l->processed[1], 30, 10000);
  ck_assert_msg(got == 30, "broker 1 processed %d of 30 (20 after the delete)",
                got);
  /* The other brokers were not disturbed. */
  for (int i = 0; i < NODES; i += 2) {
    publish_to(i, q, prefix, 100, 5);
    ck_assert_int_eq(await_count(l, &l->processed[i], 15, 10000), 15);
  }
  pthread_mutex_lock(&l->mu);
  for (int n = 100; n < 120; n++)
    ck_assert_msg(l->seen[1][n] == 1, "%s-%d seen %d times on broker 1", prefix,
                  n, l->seen[1][n]);
  int cancels = l->cancels[1], downs = l->downs[1], ups = l->ups[1];
  pthread_mutex_unlock(&l->mu);
  ck_assert_int_eq(cancels, 1);
  ck_assert_int_eq(downs, 0);
  ck_assert_int_eq(ups, 2);
  ck_assert_int_eq(edp_multi_consumer_error(mc, 1), 0);
  edp_multi_consumer_stats st;
  ck_assert_int_eq(edp_multi_consumer_stats_get(mc, 1, &st), 0);
  ck_assert_int_eq(st.live, 1);
  ck_assert_uint_eq(st.cancels, 1);
  ck_assert_uint_eq(st.processed, 30);
  ck_assert_uint_eq(depth_on(1, q), 0);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "consumer_cancelled, queue declared again, consuming: %d/20 "
           "published after the delete processed once; 0 downs, error 0",
           got - 10);
  t_fault_row("multi-broker (consumer)", "queue deleted", "under a consumer",
              outcome, up_ms);
  edp_multi_consumer_destroy(&mc);
  delete_everywhere(q);
  free(l);
}
END_TEST

/* The queue deleted under the consumer and taken by another connection
 * as its exclusive queue before the consumer could declare it again
 * (405 RESOURCE_LOCKED): never silently idle. The event says cancelled,
 * the broker's state is not live, edp_multi_consumer_error() says why, and
 * the other brokers go on. To order the steps without a race, broker 1's
 * thread is held inside the handler while the queue changes hands: it
 * can't read the cancel before. */
START_TEST(queue_deleted_not_redeclarable_is_reported) {
  const char *q = t_unique("multi.locked");
  const char *prefix = t_unique("lk");
  cledger *l = calloc(1, sizeof(*l));
  cledger_init(l, prefix);
  l->hold_n = 0; /* PREFIX-0 holds its thread until released */
  const char *urls[NODES];
  edp_multi_consumer *mc = start_consumer(l, q, urls);
  publish_to(1, q, prefix, 0, 1);
  ck_assert_int_eq(await_count(l, &l->holding, 1, 10000), 1);
  edp_conn *admin = t_node_conn(1);
  long long t0 = t_now_ms();
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  edp_queue_opts ex;
  edp_queue_opts_init(&ex);
  ex.durable = 0;
  ex.exclusive = 1;
  ck_assert_int_eq(edp_conn_queue_declare(admin, q, &ex, NULL, 0, NULL, NULL),
                   0);
  pthread_mutex_lock(&l->mu);
  l->hold_n = -1;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
  ck_assert_int_eq(await_count(l, &l->cancels[1], 1, 15000), 1);
  long long deadline = t_now_ms() + 15000;
  while (edp_multi_consumer_error(mc, 1) == 0 && t_now_ms() < deadline)
    await_count(l, &l->ups[1], 99, 100); /* a bounded wait, no event due */
  long long ms = t_now_ms() - t0;
  int err = edp_multi_consumer_error(mc, 1);
  ck_assert_msg(err == EDP_EACCESS, "error of broker 1: %s", edp_strerror(err));
  edp_multi_consumer_stats st;
  ck_assert_int_eq(edp_multi_consumer_stats_get(mc, 1, &st), 0);
  ck_assert_int_eq(st.live, 0);
  ck_assert_uint_eq(st.cancels, 1);
  pthread_mutex_lock(&l->mu);
  int ups = l->ups[1];
  pthread_mutex_unlock(&l->mu);
  ck_assert_int_eq(ups, 1); /* never claimed to be back */
  for (int i = 0; i < NODES; i += 2) {
    publish_to(i, q, prefix, 10, 5);
    ck_assert_int_eq(await_count(l, &l->processed[i], 5, 10000), 5);
  }
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "consumer_cancelled; declaring it again refused (405, %s): "
           "reported (error, not live, no up); other brokers consumed 5/5 "
           "each",
           edp_strerror(err));
  t_fault_row("multi-broker (consumer)",
              "queue deleted, then locked by another connection",
              "under a consumer", outcome, ms);
  edp_multi_consumer_destroy(&mc);
  edp_conn_destroy(&admin); /* its exclusive queue goes with it */
  delete_everywhere(q);
  free(l);
}
END_TEST

/* What a producer reported, on its own thread. */
typedef struct pledger {
  int acks, nacks;
  int acked[64];
  int downs[NODES];
} pledger;

static void p_on_confirm(void *ud, int broker, const edp_confirm *cf) {
  pledger *l = ud;
  (void)broker;
  if (cf->status == EDP_CONFIRM_ACK) {
    l->acks++;
    int i = cf->message_id && !strncmp(cf->message_id, "ps-", 3)
                ? atoi(cf->message_id + 3)
                : -1;
    if (i >= 0 && i < 64)
      l->acked[i]++;
  } else {
    l->nacks++;
  }
}

/* Consumes (and acks) everything in q on every node; counts[i] says how
 * often ps-<i> was there. Returns the total. */
static int drain_poison_ids(const char *q, int *counts, int n) {
  int total = 0;
  for (int node = 0; node < NODES; node++) {
    edp_conn *c = t_node_conn(node);
    ck_assert_int_eq(edp_conn_qos(c, 100), 0);
    ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
    edp_delivery d;
    while (edp_conn_receive(c, &d, 1000) == 0) {
      int i = d.message_id && !strncmp(d.message_id, "ps-", 3)
                  ? atoi(d.message_id + 3)
                  : -1;
      if (i >= 0 && i < n)
        counts[i]++;
      total++;
      ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
      edp_delivery_clear(&d);
    }
    edp_conn_destroy(&c);
  }
  return total;
}

static void p_on_event(void *ud, int broker, int ev, size_t count) {
  pledger *l = ud;
  (void)count;
  if (ev == EDP_MULTI_DOWN && broker >= 0 && broker < NODES)
    l->downs[broker]++;
}

/* A producer over every node whose confirms and events go to l. */
static edp_multi_producer *ledger_producer(const char *q, int mode,
                                           pledger *l) {
  const char *urls[NODES];
  for (int i = 0; i < NODES; i++)
    urls[i] = t_node_url[i];
  edp_multi_producer_opts o;
  edp_multi_producer_opts_init(&o);
  o.urls = urls;
  o.n_urls = NODES;
  o.queue = q;
  o.mode = mode;
  o.on_confirm = p_on_confirm;
  o.on_event = p_on_event;
  o.ud = l;
  edp_multi_producer *p = NULL;
  ck_assert_int_eq(edp_multi_producer_new(&o, &p, NULL, 0), 0);
  return p;
}

/* A publish to a missing exchange closes that broker's channel; the core
 * restores it inside the call that meets the close and reports the
 * message nacked (EDP_ECHANNEL from a wait now means "restored"). The
 * producer used to take that for a lost broker: DOWN, its other
 * unconfirmed messages moved elsewhere. Now: no broker down, the poison
 * nacked, every other message confirmed once and in a queue once. */
START_TEST(producer_channel_error_is_not_a_lost_broker) {
  const char *q = t_unique("multi.poison");
  pledger l = {0};
  edp_multi_producer *p = ledger_producer(q, EDP_MULTI_ROUND_ROBIN, &l);
  const int n = 30;
  long long t0 = t_now_ms();
  for (int i = 0; i <= n; i++) {
    char id[32];
    snprintf(id, sizeof(id), "ps-%d", i);
    edp_msg m;
    edp_msg_init(&m);
    m.body = id;
    m.body_len = strlen(id);
    m.message_id = id;
    m.persistent = 1;
    if (i == n) /* last, so that only the flush meets the close */
      m.exchange = t_unique("no-such-exchange");
    ck_assert_int_eq(edp_multi_publish(p, &m, NULL), 0);
  }
  ck_assert_int_eq(edp_multi_flush(p, 20000), 0);
  long long ms = t_now_ms() - t0;
  ck_assert_int_eq(l.nacks, 1);
  ck_assert_int_eq(l.acks, n);
  for (int i = 0; i < n; i++)
    ck_assert_msg(l.acked[i] == 1, "ps-%d acked %d times", i, l.acked[i]);
  for (int i = 0; i < NODES; i++)
    ck_assert_msg(l.downs[i] == 0, "broker %d reported down %d times", i,
                  l.downs[i]);
  ck_assert_uint_eq(edp_multi_producer_live(p), NODES);
  /* Every confirmed message is in a queue; a duplicate only where the
   * close overtook a confirm (the core published that one again on the
   * restored channel of the same broker): at most its third. */
  int counts[64] = {0};
  int total = drain_poison_ids(q, counts, n);
  for (int i = 0; i < n; i++)
    ck_assert_msg(counts[i] >= 1, "confirmed ps-%d is in no queue", i);
  ck_assert_int_le(total - n, n / NODES);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "channel restored, no broker down: poison nacked, %d/%d confirmed "
           "once, all in the queues (%d dup from the republish)",
           l.acks, n, total - n);
  t_fault_row("multi-broker (producer)", "poison publish (404 exchange)",
              "confirms in flight", outcome, ms);
  edp_multi_producer_destroy(&p);
  delete_everywhere(q);
}
END_TEST

/* Publishes <prefix><i> for i in [from, to) in key mode, key K<i % keys>;
 * each publish must succeed. */
static void publish_keyed(edp_multi_producer *p, const char *prefix, int from,
                          int to, int keys) {
  for (int i = from; i < to; i++) {
    char id[32], key[8];
    snprintf(id, sizeof(id), "%s%d", prefix, i);
    snprintf(key, sizeof(key), "K%d", i % keys);
    edp_msg m;
    edp_msg_init(&m);
    m.body = id;
    m.body_len = strlen(id);
    m.message_id = id;
    m.persistent = 1;
    ck_assert_int_eq(edp_multi_publish(p, &m, key), 0);
  }
}

/* Consumes (and acks) q on every node; ids are a 3-character prefix and
 * i < n, keyed as publish_keyed does. Asserts each key is on one node
 * and its first copies are in order there; counts copies in seen[i].
 * Returns the total. */
static int drain_keyed(const char *q, int n, int keys, int *seen) {
  int total = 0, node_of[64], last[64];
  ck_assert_int_le(keys, 64);
  for (int k = 0; k < keys; k++)
    node_of[k] = last[k] = -1;
  for (int node = 0; node < NODES; node++) {
    edp_conn *c = t_node_conn(node);
    ck_assert_int_eq(edp_conn_qos(c, 100), 0);
    ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
    edp_delivery d;
    while (edp_conn_receive(c, &d, 1000) == 0) {
      int i = atoi(d.message_id + 3), k = i % keys;
      ck_assert_msg(i >= 0 && i < n, "%s in the queue", d.message_id);
      ck_assert_msg(node_of[k] < 0 || node_of[k] == node,
                    "key K%d on nodes %d and %d", k, node_of[k], node);
      node_of[k] = node;
      if (!seen[i]++) {
        ck_assert_msg(i > last[k], "key K%d: %d after %d", k, i, last[k]);
        last[k] = i;
      }
      total++;
      ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
      edp_delivery_clear(&d);
    }
    edp_conn_destroy(&c);
  }
  return total;
}

/* Issue 12 (found by the interop suite): the queue deleted on the brokers
 * under a running producer. The producer published without mandatory, so
 * the brokers acked messages they dropped: reported confirmed, gone. Now
 * it publishes mandatory; a message that comes back is kept, the queue is
 * declared again and the message sent again, behind the messages of its
 * key kept before it: every message confirmed once, in a queue once, each
 * key in order on its broker. */
START_TEST(queue_deleted_under_producer_loses_nothing) {
  const char *q = t_unique("multi.pdel");
  pledger l = {0};
  edp_multi_producer *p = ledger_producer(q, EDP_MULTI_KEY, &l);
  enum { N = 60, KEYS = 8 };
  publish_keyed(p, "ps-", 0, 20, KEYS);
  /* The first 20 are in the queues: delete them all. */
  ck_assert_int_eq(edp_multi_flush(p, 20000), 0);
  delete_everywhere(q);
  long long t0 = t_now_ms();
  publish_keyed(p, "ps-", 20, N, KEYS);
  ck_assert_int_eq(edp_multi_flush(p, 20000), 0);
  long long ms = t_now_ms() - t0;
  uint64_t returned = 0;
  for (int i = 0; i < NODES; i++) {
    edp_multi_broker_stats st;
    ck_assert_int_eq(edp_multi_producer_stats(p, (size_t)i, &st), 0);
    returned += st.returned;
    ck_assert_msg(l.downs[i] == 0, "broker %d reported down", i);
  }
  ck_assert_int_eq(l.nacks, 0);
  for (int i = 0; i < N; i++)
    ck_assert_msg(l.acked[i] == 1, "ps-%d acked %d times", i, l.acked[i]);
  ck_assert_uint_ge(returned, 1);
  /* The 40 after the deletion are in the queues, once, each key in order. */
  int seen[N] = {0};
  ck_assert_int_eq(drain_keyed(q, N, KEYS, seen), N - 20);
  for (int i = 0; i < N; i++)
    ck_assert_msg(seen[i] == (i >= 20), "ps-%d in the queues %d times", i,
                  seen[i]);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "queue declared again: %llu returned and resent, %d/%d confirmed "
           "once, 40/40 in the queues once, each key in order",
           (unsigned long long)returned, l.acks, N);
  t_fault_row("multi-broker (producer)", "queue deleted under the producer",
              "key mode, publishing", outcome, ms);
  edp_multi_producer_destroy(&p);
  delete_everywhere(q);
}
END_TEST

/* A memory alarm on node 1 (vm_memory_high_watermark 0): the broker
 * blocks publishing connections and stops reading them. The producer is
 * one thread over all brokers, so a publish that waits for node 1 to
 * unblock would stop every broker. Round-robin skips a blocked broker;
 * what it had unconfirmed goes to the others after confirm_timeout_ms.
 * Every message confirmed once, in bounded time, while the alarm lasts. */
START_TEST(memory_alarm_on_one_broker_does_not_stall) {
  const char *q = t_unique("multi.alarm");
  pledger l = {0};
  edp_multi_producer *p = ledger_producer(q, EDP_MULTI_ROUND_ROBIN, &l);
  ck_assert_int_eq(t_node_ctl(1, "set_vm_memory_high_watermark 0"), 0);
  enum { N = 3000 };
  long long t0 = t_now_ms();
  for (int i = 0; i < N; i++) {
    char id[32];
    snprintf(id, sizeof(id), "al-%d", i);
    edp_msg m;
    edp_msg_init(&m);
    m.body = id;
    m.body_len = strlen(id);
    m.message_id = id;
    m.persistent = 1;
    ck_assert_int_eq(edp_multi_publish(p, &m, NULL), 0);
    ck_assert_msg(t_now_ms() - t0 < 60000, "%d published in 60 s", i);
  }
  int frc = edp_multi_flush(p, 30000);
  long long ms = t_now_ms() - t0;
  edp_multi_broker_stats st[NODES];
  for (int i = 0; i < NODES; i++)
    ck_assert_int_eq(edp_multi_producer_stats(p, (size_t)i, &st[i]), 0);
  fprintf(stderr,
          "memory_alarm_on_one_broker_does_not_stall: %d confirmed in %lld "
          "ms; per broker published %llu/%llu/%llu, confirmed "
          "%llu/%llu/%llu, rerouted from 1: %llu, downs of 1: %d\n",
          l.acks, ms, (unsigned long long)st[0].published,
          (unsigned long long)st[1].published,
          (unsigned long long)st[2].published,
          (unsigned long long)st[0].confirmed,
          (unsigned long long)st[1].confirmed,
          (unsigned long long)st[2].confirmed,
          (unsigned long long)st[1].rerouted, l.downs[1]);
  ck_assert_int_eq(t_node_ctl(1, "set_vm_memory_high_watermark 0.4"), 0);
  ck_assert_int_eq(frc, 0);
  ck_assert_int_eq(l.nacks, 0);
  ck_assert_int_eq(l.acks, N);
  ck_assert_uint_eq(st[0].confirmed + st[2].confirmed, N);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "blocked broker skipped: %d/%d confirmed on the other two, %llu "
           "taken by it before it said blocked moved after the confirm "
           "timeout, 0 nacked",
           l.acks, N, (unsigned long long)st[1].rerouted);
  t_fault_row("multi-broker (producer)", "memory alarm on 1 of 3 brokers",
              "round-robin, publishing", outcome, ms);
  edp_multi_producer_destroy(&p);
  delete_everywhere(q);
}
END_TEST

/* Key mode under the same alarm: a key's messages may only go to its
 * broker, so node 1's keys are held (as for a down broker) while the
 * other keys go on; publishing never waits for node 1. Once the alarm
 * clears, node 1's messages go out behind what was in flight: every one
 * confirmed, each key on one broker and in order there. */
START_TEST(memory_alarm_in_key_mode_holds_its_keys) {
  const char *q = t_unique("multi.keyalarm");
  pledger l = {0};
  edp_multi_producer *p = ledger_producer(q, EDP_MULTI_KEY, &l);
  ck_assert_int_eq(t_node_ctl(1, "set_vm_memory_high_watermark 0"), 0);
  enum { N = 600, KEYS = 12 };
  long long t0 = t_now_ms();
  publish_keyed(p, "ak-", 0, N, KEYS);
  long long publish_ms = t_now_ms() - t0;
  /* Node 1's keys cannot be confirmed while it blocks; the others are. */
  int frc = edp_multi_flush(p, 3000);
  edp_multi_broker_stats st[NODES];
  for (int i = 0; i < NODES; i++)
    ck_assert_int_eq(edp_multi_producer_stats(p, (size_t)i, &st[i]), 0);
  int acks_blocked = l.acks;
  ck_assert_int_eq(t_node_ctl(1, "set_vm_memory_high_watermark 0.4"), 0);
  int frc2 = edp_multi_flush(p, 30000);
  long long ms = t_now_ms() - t0;
  fprintf(stderr,
          "memory_alarm_in_key_mode_holds_its_keys: %d published in %lld ms; "
          "%d confirmed while node 1 blocked (node 1: %llu), all %d after "
          "%lld ms\n",
          N, publish_ms, acks_blocked, (unsigned long long)st[1].confirmed,
          l.acks, ms);
  ck_assert_int_lt(publish_ms, 20000);
  ck_assert_int_eq(frc, EDP_ETIMEOUT);
  ck_assert_uint_eq(st[1].confirmed, 0);
  ck_assert_int_gt(acks_blocked, 0);
  ck_assert_int_lt(acks_blocked, N);
  ck_assert_int_eq(frc2, 0);
  ck_assert_int_eq(l.nacks, 0);
  ck_assert_int_ge(l.acks, N);
  /* In the queues: each at least once, each key on one node and its
   * first copies in order. */
  int seen[N] = {0};
  ck_assert_int_ge(drain_keyed(q, N, KEYS, seen), N);
  for (int i = 0; i < N; i++)
    ck_assert_msg(seen[i] >= 1, "ak-%d not in any queue", i);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "its keys held, the others went on: %d/%d confirmed while "
           "blocked, all %d after the alarm, each key on one node in order",
           acks_blocked, N, N);
  t_fault_row("multi-broker (producer)", "memory alarm on 1 of 3 brokers",
              "key mode, publishing", outcome, ms);
  edp_multi_producer_destroy(&p);
  delete_everywhere(q);
}
END_TEST

/* Issue 14: the producer declares a quorum queue with a delivery limit
 * and, first, the QUEUE.dlq its dead-letter route names. A consumer that
 * returns every delivery (as a crashing one would) sees each message
 * exactly limit + 1 times; then the broker moves it to QUEUE.dlq. */
START_TEST(quorum_delivery_limit_dead_letters) {
  const int n = 3, limit = 1;
  const char *q = t_unique("multi.limit");
  char dlq[128];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  const char *prefix = t_unique("dl");
  t_proc s;
  char *argv[32];
  const char *sargs[] = {"--url",
                         t_node_url[0],
                         "-q",
                         q,
                         "-n",
                         "3",
                         "--queue-type",
                         "quorum",
                         "--delivery-limit",
                         "1",
                         "--id-prefix",
                         prefix,
                         NULL};
  build_argv(argv, "edp-multi-sender", sargs, 0);
  ck_assert_int_eq(t_spawn(&s, argv, NULL), 0);
  ck_assert_int_eq(t_wait(&s, 60000), 0);

  edp_conn *c = t_node_conn(0);
  ck_assert_int_eq(edp_conn_qos(c, 1), 0);
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
  int deliveries = 0;
  edp_delivery d = {0};
  while (edp_conn_receive(c, &d, 3000) == 0) {
    deliveries++;
    ck_assert_int_eq(edp_conn_nack(c, d.epoch, d.tag, 0, 1), 0);
    edp_delivery_clear(&d);
    ck_assert_int_le(deliveries, n * (limit + 1));
  }
  edp_conn_destroy(&c);
  ck_assert_int_eq(deliveries, n * (limit + 1));
  ck_assert_uint_eq(depth_on(0, q), 0);
  ck_assert_uint_eq(depth_on(0, dlq), n);
  delete_everywhere(q);
  delete_everywhere(dlq);
}
END_TEST

/* After the faults case, in the parent: a test that timed out with an
 * alarm set must not leave it to the tests after it. */
static void clear_alarms(void) {
  for (int i = 0; i < NODES; i++)
    t_node_ctl(i, "set_vm_memory_high_watermark 0.4");
}

int main(void) {
  t_nodes_start(NODES, "multi");
  Suite *su = suite_create("multi_broker");
  /* Broker-side faults through the library (CK_RUN_CASE=faults alone). */
  TCase *tf = tcase_create("faults");
  tcase_set_timeout(tf, 120);
  tcase_add_test(tf, queue_deleted_under_consumer_consumes_again);
  tcase_add_test(tf, queue_deleted_not_redeclarable_is_reported);
  tcase_add_test(tf, producer_channel_error_is_not_a_lost_broker);
  tcase_add_test(tf, queue_deleted_under_producer_loses_nothing);
  tcase_add_test(tf, memory_alarm_on_one_broker_does_not_stall);
  tcase_add_test(tf, memory_alarm_in_key_mode_holds_its_keys);
  tcase_add_unchecked_fixture(tf, NULL, clear_alarms);
  suite_add_tcase(su, tf);
  TCase *tc = tcase_create("multi_broker");
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, spread_exactly_once);
  tcase_add_test(tc, node_killed_mid_run);
  tcase_add_test(tc, key_mode_keeps_order);
  tcase_add_test(tc, all_down_exits_69);
  tcase_add_test(tc, unanswered_name_lookup_does_not_stall);
  tcase_add_test(tc, quorum_delivery_limit_dead_letters);
  /* Last: it turns the independent nodes into one cluster. */
  tcase_add_test(tc, cluster_quorum_survives_stopped_node);
  suite_add_tcase(su, tc);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  t_nodes_stop();
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
