/*
 * edp-bench-ha - what high availability costs and what it buys (issue
 * 14): forwarding and the thread delegate on classic against quorum
 * queues, on the harness's node (EDP_URL) and on a 3-node cluster this
 * program starts itself (tests/t_nodes.c: always stopped), and the
 * takeover time of a standby dispatcher (single active consumer) when the
 * active one is SIGKILLed. Prints one markdown section; progress goes to
 * stderr. EDP_BENCH_QUICK=1 runs a fifth of the messages.
 *
 * Each cell (pattern x topology x queue type) runs REPS times, classic
 * and quorum alternating (which goes first alternates too), so that both
 * see the same machine; the table shows medians, and quorum / classic
 * ratios are taken between medians of the same run. A cell measures:
 * - publish msg/s: persistent 256-byte messages through the pattern's
 *   publisher (edp_fwd_send; trades over ACCOUNTS accounts to the thread
 *   delegate's topic exchange), confirm window 1024, until the last
 *   confirm;
 * - consume msg/s: the same messages drained by the pattern's consumer
 *   (edp_fwd_receiver; edp_td with TD_WORKERS workers and a handler that
 *   only checks per-account order), acked after the handler;
 * - confirm latency: a separate run paced at LAT_RATE msg/s, well below
 *   saturation, from the publish call to the confirm callback of each
 *   message, pooled over the runs. (At saturation a full window makes
 *   the latency window / rate, which says nothing new.)
 * On the cluster every queue is declared through node 0 (its leader:
 * queue-leader-locator client-local) and the clients connect to node 1,
 * as clients of a cluster meet a leader on another node.
 *
 * The takeover: edp-trade-sender at TK_RATE trades/s over ACCOUNTS
 * accounts, two edp-trade-dispatcher --json on the same queue (the first
 * active, the second standby), the active one SIGKILLed once it processed
 * a third of the trades and a short pause more. Takeover time: from the
 * kill (CLOCK_MONOTONIC, here) to the start_us of the standby's first
 * processed trade (the same clock). Every trade must be processed, each
 * dispatcher's trades of an account consecutive, the standby's picking up
 * at or before where the active one stopped (repeats allowed, a skip
 * never; one exception, see tk_check), and the standby idle before the
 * kill; anything else fails the bench (exit 1, the section says why).
 */
#define _DEFAULT_SOURCE
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../tests/t_nodes.h"
#include "../tests/testlib.h"
#include "benchdata.h"
#include "cli.h"

#define REPS 3
#define ACCOUNTS 100
#define LAT_RATE 1000
#define TD_WORKERS 4
#define TAKEOVERS 5
#define TK_TRADES 3000
#define TK_RATE 500
#define TK_PER_ACCOUNT (TK_TRADES / ACCOUNTS)

enum { FWD, TD };
enum { CLASSIC, QUORUM };
enum { ONE_NODE, CLUSTER };

static const char *kind_name[] = {"classic", "quorum"};
static const char *pattern_name[] = {"forwarding", "thread delegate"};
static const char *topo_name[] = {"1 node", "3-node cluster"};

static cli app;
static char body[256];
static int run_no;
static char exchange[64];

static edp_conn *open_conn(const char *url) {
  return cli_connect_url(&app, url, "edp-bench-ha");
}

static edp_queue_kind kind_of(int kind) {
  /* Quorum as the programs declare it by default: with a delivery limit
   * and at-least-once dead-lettering to the .dlq. */
  edp_queue_kind k = {kind_name[kind],
                      kind == QUORUM ? CLI_DELIVERY_LIMIT_DEFAULT : 0, 0};
  return k;
}

/* ---------- confirm latency ---------- */

/* Publish stamps of the current run by message index, and where the
 * latencies go (NULL: not recorded). */
static struct {
  int64_t *pub_us;
  int n;
  double *out;
  size_t *n_out, cap;
  long refused;
} lat;

static void on_confirm(void *ud, const edp_confirm *cf) {
  (void)ud;
  if (cf->status != EDP_CONFIRM_ACK) {
    lat.refused++;
    return;
  }
  if (!lat.out || !cf->message_id || strncmp(cf->message_id, "ha-", 3))
    return;
  long i = strtol(cf->message_id + 3, NULL, 10);
  if (i < 0 || i >= lat.n || !lat.pub_us[i] || *lat.n_out >= lat.cap)
    return;
  lat.out[(*lat.n_out)++] = (double)(edp_now_us() - lat.pub_us[i]) / 1000.0;
}

/* ---------- publishing ---------- */

typedef struct pub {
  edp_conn *c;
  edp_fwd_sender *s; /* forwarding; NULL: trades to the exchange */
  int seqs[ACCOUNTS];
  unsigned seed;
} pub;

static int pub_one(pub *p, int i) {
  char id[32];
  snprintf(id, sizeof(id), "ha-%d", i);
  if (p->s)
    return edp_fwd_send(p->s, id, body, sizeof(body), NULL);
  int a = (int)(rand_r(&p->seed) % ACCOUNTS);
  char rk[64];
  snprintf(rk, sizeof(rk), "trade.eq.A-%d", a);
  edp_header h = {"seq", NULL, ++p->seqs[a]};
  edp_msg m;
  edp_msg_init(&m);
  m.exchange = exchange;
  m.routing_key = rk;
  m.body = body;
  m.body_len = sizeof(body);
  m.persistent = 1;
  m.mandatory = 1;
  m.message_id = id;
  m.headers = &h;
  m.n_headers = 1;
  return edp_conn_publish_window(p->c, &m, 1024, 30000, NULL);
}

/* Publishes n messages, paced to rate per second (0: as fast as the
 * window lets), and waits for every confirm. Returns msg/s. With out, the
 * confirm latencies (ms) are appended to out[*n_out .. cap). */
static double publish_run(pub *p, int n, int rate, double *out, size_t *n_out,
                          size_t cap) {
  lat.pub_us = calloc((size_t)n, sizeof(int64_t));
  if (!lat.pub_us)
    cli_die(&app, CLI_SOFTWARE, "out of memory");
  lat.n = n;
  lat.out = out;
  lat.n_out = n_out;
  lat.cap = cap;
  lat.refused = 0;
  int64_t t0 = edp_now_us();
  for (int i = 0; i < n; i++) {
    int64_t due = rate ? t0 + (int64_t)i * 1000000 / rate : 0;
    for (int64_t left; rate && (left = due - edp_now_us()) > 0;) {
      /* Services the connection (confirms) while it waits. */
      int rc = edp_conn_wait(p->c, -1, (int)((left + 999) / 1000));
      if (rc < 0)
        cli_die_err(&app, p->c, rc, "waiting to publish");
    }
    lat.pub_us[i] = edp_now_us();
    int rc = pub_one(p, i);
    if (rc)
      cli_die_err(&app, p->c, rc, "publish");
  }
  int rc = p->s ? edp_fwd_flush(p->s) : edp_conn_wait_confirms(p->c, 0, 60000);
  if (rc)
    cli_die_err(&app, p->c, rc, "waiting for confirms");
  double secs = (double)(edp_now_us() - t0) / 1e6;
  free(lat.pub_us);
  lat.pub_us = NULL;
  lat.out = NULL;
  if (lat.refused)
    cli_die(&app, CLI_DATAERR, "%ld message(s) refused by the broker",
            lat.refused);
  return n / (secs > 1e-3 ? secs : 1e-3);
}

/* ---------- consuming ---------- */

static atomic_int last_seq[ACCOUNTS];
static atomic_long order_violations;

static int fwd_handler(void *ud, const edp_delivery *d, char *reason,
                       size_t len) {
  (void)ud, (void)d, (void)reason, (void)len;
  return 0;
}

static int td_handler(void *ud, int worker, const char *context,
                      const edp_delivery *d, int attempt, char *reason,
                      size_t reason_len) {
  (void)ud, (void)worker, (void)attempt, (void)reason, (void)reason_len;
  int64_t seq = 0;
  edp_delivery_header_int(d, "seq", &seq);
  int a = atoi(context + 2); /* "A-<n>" */
  if (a < 0 || a >= ACCOUNTS ||
      atomic_exchange(&last_seq[a], (int)seq) != (int)seq - 1)
    atomic_fetch_add(&order_violations, 1);
  return 0;
}

/* Drains n messages from q with the pattern's consumer; returns msg/s. */
static double consume_run(int pattern, const char *url, const char *q,
                          const edp_queue_kind *k, long n) {
  edp_conn *c = open_conn(url);
  edp_fwd_receiver *r = NULL;
  edp_td *td = NULL;
  int rc;
  if (pattern == FWD) {
    edp_fwd_receiver_opts o;
    edp_fwd_receiver_opts_init(&o);
    o.queue = q;
    o.kind = *k;
    o.handler = fwd_handler;
    rc = edp_fwd_receiver_new(c, &o, &r);
  } else {
    for (int i = 0; i < ACCOUNTS; i++)
      atomic_store(&last_seq[i], 0);
    edp_td_opts o;
    edp_td_opts_init(&o);
    o.queue = q;
    o.kind = *k;
    o.workers = TD_WORKERS;
    o.handler = td_handler;
    rc = edp_td_new(c, &o, &td);
  }
  if (rc)
    cli_die_err(&app, c, rc, "consumer");
  int64_t t0 = edp_now_us(), deadline = t0 + 120 * 1000000LL;
  for (;;) {
    uint64_t done;
    if (r) {
      edp_fwd_receiver_stats st;
      edp_fwd_receiver_stats_get(r, &st);
      done = st.processed;
    } else {
      edp_td_stats st;
      edp_td_stats_get(td, &st);
      done = st.processed;
    }
    if ((long)done >= n)
      break;
    if (edp_now_us() > deadline)
      cli_die(&app, CLI_UNAVAILABLE, "%s: %llu of %ld consumed in 120 s",
              pattern_name[pattern], (unsigned long long)done, n);
    rc = r ? edp_fwd_receive(r, 1000) : edp_td_run(td, 100);
    if (rc && rc != EDP_ETIMEOUT)
      cli_die_err(&app, c, rc, "consume");
  }
  double secs = (double)(edp_now_us() - t0) / 1e6;
  edp_td_destroy(&td);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  return n / (secs > 1e-3 ? secs : 1e-3);
}

/* ---------- the cells ---------- */

typedef struct cell {
  double pub[REPS], con[REPS];
  double *lat;
  size_t n_lat, cap;
  long violations;
} cell;

static cell cells[2][2][2]; /* [pattern][topology][kind] */

/* The node holding q's leader (quorum) or its process (classic), as
 * rabbitmqctl on node 0 says, into out; "?" if it can't tell. */
/* The Erlang name of node i (edpPORT@localhost, the first line of its
 * node.env), or "?". */
static void node_name(int i, char *out, size_t len) {
  char path[400];
  snprintf(path, sizeof(path), "%s/node.env", t_node_dir[i]);
  snprintf(out, len, "?");
  FILE *f = fopen(path, "r");
  char line[256];
  if (f && fgets(line, sizeof(line), f) && !strncmp(line, "NODE=", 5)) {
    line[strcspn(line, "\n")] = '\0';
    snprintf(out, len, "%s", line + 5);
  }
  if (f)
    fclose(f);
}

static void queue_home(const char *q, char *out, size_t len) {
  char cmd[1024], line[512];
  snprintf(cmd, sizeof(cmd),
           "tests/broker.sh ctl '%s' list_queues name leader pid "
           "--no-table-headers --silent 2>/dev/null",
           t_node_dir[0]);
  snprintf(out, len, "?");
  FILE *f = popen(cmd, "r");
  if (!f)
    return;
  while (fgets(line, sizeof(line), f)) {
    char name[256], leader[256], pid[256] = "";
    if (sscanf(line, "%255s %255s %255s", name, leader, pid) < 2 ||
        strcmp(name, q))
      continue;
    /* A classic queue has no leader (the column is empty): its pid,
     * <node@host.N.N.N>, names the node holding it. */
    char *home = leader;
    if (home[0] == '<') {
      home++;
      char *at = strchr(home, '@'), *dot = at ? strchr(at, '.') : NULL;
      if (dot)
        *dot = '\0';
    }
    snprintf(out, len, "%s", home);
  }
  pclose(f);
}

static void run_cell(int pattern, int topo, int kind, const char *decl_url,
                     const char *client_url, int n, int n_lat, int rep,
                     int cluster) {
  cell *ce = &cells[pattern][topo][kind];
  edp_queue_kind k = kind_of(kind);
  char q[128], dlq[140];
  snprintf(q, sizeof(q), "bench.ha.%d.%d", (int)getpid(), ++run_no);
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  fprintf(stderr, "edp-bench-ha: %s, %s, %s, run %d...\n",
          pattern_name[pattern], topo_name[topo], kind_name[kind], rep + 1);
  edp_conn *d = open_conn(decl_url);
  int rc = pattern == FWD ? edp_fwd_declare(d, q, &k)
                          : edp_td_declare(d, exchange, q, "trade.eq.*", &k);
  if (rc)
    cli_die_err(&app, d, rc, "declare");
  if (cluster && rep == 0) {
    char home[256], n0[256], n1[256];
    queue_home(q, home, sizeof(home));
    node_name(0, n0, sizeof(n0));
    node_name(1, n1, sizeof(n1));
    fprintf(stderr,
            "edp-bench-ha: %s queue on %s (node 0 is %s); clients on %s\n",
            kind_name[kind], home, n0, n1);
  }
  pub p;
  memset(&p, 0, sizeof(p));
  p.seed = 1000u * (unsigned)rep + 17u;
  p.c = open_conn(client_url);
  if (pattern == FWD) {
    edp_fwd_sender_opts so;
    edp_fwd_sender_opts_init(&so);
    so.queue = q;
    so.kind = k;
    so.on_confirm = on_confirm;
    rc = edp_fwd_sender_new(p.c, &so, &p.s);
  } else if (!(rc = edp_conn_confirm_select(p.c))) {
    edp_conn_on_confirm(p.c, on_confirm, NULL);
  }
  if (rc)
    cli_die_err(&app, p.c, rc, "publisher");
  ce->pub[rep] = publish_run(&p, n, 0, NULL, NULL, 0);
  atomic_store(&order_violations, 0);
  ce->con[rep] = consume_run(pattern, client_url, q, &k, n);
  ce->violations += atomic_load(&order_violations);
  publish_run(&p, n_lat, LAT_RATE, ce->lat, &ce->n_lat, ce->cap);
  edp_fwd_sender_destroy(&p.s);
  edp_conn_destroy(&p.c);
  edp_conn_queue_delete(d, q);
  edp_conn_queue_delete(d, dlq);
  edp_conn_destroy(&d);
}

/* REPS runs of both patterns on one topology, classic and quorum
 * alternating. */
static void run_topology(int topo, const char *decl_url, const char *client_url,
                         int n, int n_lat) {
  for (int rep = 0; rep < REPS; rep++)
    for (int pattern = FWD; pattern <= TD; pattern++)
      for (int j = 0; j < 2; j++) {
        int kind = (rep + pattern + j) % 2;
        run_cell(pattern, topo, kind, decl_url, client_url, n, n_lat, rep,
                 topo == CLUSTER);
      }
}

/* ---------- the takeover ---------- */

typedef struct tk_proc {
  t_proc p;
  int role;          /* 0 not said yet, 1 active, 2 standby */
  int64_t active_us; /* the standby's "active" (takeover) event */
  long processed;
  int64_t first_start_us; /* smallest start_us of a processed trade */
  int64_t early;          /* processed trades started before the kill */
  /* Each account's seqs in the order they were processed. */
  int seqs[ACCOUNTS][2 * TK_PER_ACCOUNT];
  int n[ACCOUNTS];
  int overflow;
} tk_proc;

typedef struct tk_result {
  double takeover_ms, active_ms; /* kill to first start; to the handover */
  long repeats, a_done, b_done;
  int said_standby; /* the second dispatcher's first event said so */
  int ok;
  char why[256];
} tk_result;

static tk_proc tk_disp[2]; /* [0] the active one, [1] the standby */
static t_proc tk_sender;
static int64_t tk_kill_us;
static int64_t tk_progress_ms; /* edp_now_ms() of the last processed event */
static long tk_sent;

static void tk_event(tk_proc *d, const char *line) {
  json_t *ev = json_loads(line, 0, NULL);
  if (!ev)
    return;
  const char *e = json_string_value(json_object_get(ev, "event"));
  if (!e) {
    json_decref(ev);
    return;
  }
  if (!d) {
    if (!strcmp(e, "sent"))
      tk_sent++;
  } else if (!strcmp(e, "active") || !strcmp(e, "standby")) {
    int takeover = json_is_true(json_object_get(ev, "takeover"));
    if (!d->role)
      d->role = e[0] == 'a' ? 1 : 2;
    if (takeover)
      d->active_us = json_integer_value(json_object_get(ev, "at_us"));
  } else if (!strcmp(e, "processed")) {
    const char *acct = json_string_value(json_object_get(ev, "account"));
    int seq = (int)json_integer_value(json_object_get(ev, "seq"));
    int64_t start = json_integer_value(json_object_get(ev, "start_us"));
    int a = acct && strlen(acct) > 2 ? atoi(acct + 2) - 100 : -1;
    d->processed++;
    tk_progress_ms = edp_now_ms();
    if (!d->first_start_us || start < d->first_start_us)
      d->first_start_us = start;
    if (!tk_kill_us || start < tk_kill_us)
      d->early++;
    if (a < 0 || a >= ACCOUNTS || d->n[a] >= 2 * TK_PER_ACCOUNT)
      d->overflow++;
    else
      d->seqs[a][d->n[a]++] = seq;
  }
  json_decref(ev);
}

/* Reads what the sender and the dispatchers wrote, for up to timeout_ms. */
static void tk_pump(int timeout_ms) {
  t_proc *ps[3] = {&tk_sender, &tk_disp[0].p, &tk_disp[1].p};
  tk_proc *owner[3] = {NULL, &tk_disp[0], &tk_disp[1]};
  struct pollfd pf[3];
  int idx[3], k = 0;
  for (int i = 0; i < 3; i++)
    if (ps[i]->pid > 0 && !ps[i]->eof) {
      pf[k] = (struct pollfd){ps[i]->out_fd, POLLIN, 0};
      idx[k++] = i;
    }
  if (!k) {
    edp_sleep_ms(timeout_ms, -1);
    return;
  }
  if (poll(pf, (nfds_t)k, timeout_ms) <= 0)
    return;
  static char line[65536];
  for (int j = 0; j < k; j++)
    if (pf[j].revents)
      while (t_readline(ps[idx[j]], line, sizeof(line), 1) == 1)
        tk_event(owner[idx[j]], line);
}

/* Starts prog --url url --json -e EXCHANGE -q q --queue-type KIND, then
 * the NULL-terminated extra arguments, reading its stdout into p. */
static void tk_spawn(t_proc *p, const char *prog, const char *url,
                     const char *q, int kind, const char *const *extra) {
  char *argv[32] = {(char *)t_bin(prog),
                    "--url",
                    (char *)url,
                    "--json",
                    "-e",
                    exchange,
                    "-q",
                    (char *)q,
                    "--queue-type",
                    (char *)kind_name[kind]};
  for (int i = 0, n = 10; extra[i] && n < 31; i++)
    argv[n++] = (char *)extra[i];
  memset(p, 0, sizeof(*p));
  if (t_spawn(p, argv, NULL))
    cli_die(&app, CLI_SOFTWARE, "cannot start %s", argv[0]);
}

static void tk_spawn_dispatcher(tk_proc *d, const char *url, const char *q,
                                int kind) {
  static const char *const extra[] = {"-w", "4", NULL};
  memset(d, 0, sizeof(*d));
  tk_spawn(&d->p, "edp-trade-dispatcher", url, q, kind, extra);
}

/* Waits up to ms for cond() (the pump runs meanwhile); returns cond(). */
static int tk_until(int (*cond)(void), int ms) {
  int64_t end = edp_now_ms() + ms;
  while (!cond() && edp_now_ms() < end)
    tk_pump(50);
  return cond();
}

static int active_said(void) { return tk_disp[0].role != 0; }
static int standby_said(void) { return tk_disp[1].role != 0; }
static int third_done(void) {
  return tk_disp[0].processed >= TK_TRADES / 3 || tk_disp[0].p.eof;
}

/* Distinct trades processed by either dispatcher. */
static long tk_distinct(void) {
  long n = 0;
  for (int a = 0; a < ACCOUNTS; a++) {
    char seen[TK_PER_ACCOUNT + 1] = {0};
    for (int d = 0; d < 2; d++)
      for (int i = 0; i < tk_disp[d].n[a]; i++) {
        int s = tk_disp[d].seqs[a][i];
        if (s >= 1 && s <= TK_PER_ACCOUNT && !seen[s]) {
          seen[s] = 1;
          n++;
        }
      }
  }
  return n;
}

/* Every trade processed; or nothing new for 3 s (then tk_check says
 * which are missing). A dispatcher reports a trade before it acks it, so
 * every trade processed has its line. */
static int all_done(void) {
  if (!tk_sender.eof)
    return 0;
  long n = tk_distinct();
  return n >= TK_TRADES || edp_now_ms() - tk_progress_ms > 3000;
}

static int tk_fail(tk_result *r, const char *why) {
  snprintf(r->why, sizeof(r->why), "%s", why);
  r->ok = 0;
  return 0;
}

/* Per account: the active one's trades are 1, 2, ... k; the standby's
 * continue consecutively from some f <= k + 1 (f <= k: repeats of trades
 * whose ack died with the active one) to the last; never a skip or an
 * overtake.
 * One exception, reported: f = k + 2 (or the standby has none and k is
 * one short) in one account of the run. The dispatcher thread settles
 * one trade at a time, acking it and then writing its event, so a kill
 * between the two leaves at most one trade acked (the broker won't
 * deliver it again) without a line saying so. From the outside that looks
 * like a skip of exactly that trade; more than one such gap is a loss. */
/* On stderr, what each dispatcher processed of account a. */
static void tk_dump(int a) {
  for (int d = 0; d < 2; d++) {
    fprintf(stderr, "edp-bench-ha: account %d, %s:", a,
            d ? "standby" : "active");
    for (int i = 0; i < tk_disp[d].n[a]; i++)
      fprintf(stderr, " %d", tk_disp[d].seqs[a][i]);
    fputc('\n', stderr);
  }
}

static int tk_check(tk_result *r) {
  tk_proc *A = &tk_disp[0], *B = &tk_disp[1];
  if (A->overflow || B->overflow)
    return tk_fail(r, "unexpected accounts or too many repeats");
  if (B->early)
    return tk_fail(r, "the standby processed trades before the kill");
  for (int a = 0; a < ACCOUNTS; a++) {
    for (int i = 0; i < A->n[a]; i++)
      if (A->seqs[a][i] != i + 1)
        return tk_fail(r, "the active dispatcher broke an account's order");
    int k = A->n[a];
    for (int i = 1; i < B->n[a]; i++)
      if (B->seqs[a][i] != B->seqs[a][i - 1] + 1)
        return tk_fail(r, "the standby broke an account's order");
    int first = B->n[a] ? B->seqs[a][0] : TK_PER_ACCOUNT + 1;
    int last = B->n[a] ? B->seqs[a][B->n[a] - 1] : k;
    if (first < 1 || (B->n[a] && last != TK_PER_ACCOUNT))
      return tk_fail(r, "trades of an account were not processed");
    int gap = first - (k + 1); /* trades neither one reported */
    if (gap >= 1)
      tk_dump(a);
    if (gap >= 1)
      return tk_fail(r, "trades lost: the standby skipped trades");
    if (gap < 0)
      r->repeats += -gap;
  }
  return 1;
}

static tk_result takeover_run(const char *url, int kind, int rep) {
  tk_result r = {-1, -1, 0, 0, 0, 0, 1, ""};
  char q[128], prefix[64];
  snprintf(q, sizeof(q), "bench.ha.tk.%d.%d", (int)getpid(), ++run_no);
  snprintf(prefix, sizeof(prefix), "tk%d", run_no);
  fprintf(stderr, "edp-bench-ha: takeover, %s queue, run %d...\n",
          kind_name[kind], rep + 1);
  tk_kill_us = 0;
  tk_sent = 0;
  int timed_out = 0;
  memset(&tk_sender, 0, sizeof(tk_sender));
  tk_spawn_dispatcher(&tk_disp[0], url, q, kind);
  if (!tk_until(active_said, 30000) || tk_disp[0].role != 1)
    tk_fail(&r, "the first dispatcher did not become active");
  if (r.ok) {
    /* Whether it says "standby" is reported; that it stands by (processes
     * nothing before the kill) is checked. */
    tk_spawn_dispatcher(&tk_disp[1], url, q, kind);
    if (!tk_until(standby_said, 30000))
      tk_fail(&r, "the second dispatcher did not start");
    r.said_standby = tk_disp[1].role == 2;
  }
  if (r.ok) {
    char n[16], rate[16], acc[16];
    snprintf(n, sizeof(n), "%d", TK_TRADES);
    snprintf(rate, sizeof(rate), "%d", TK_RATE);
    snprintf(acc, sizeof(acc), "%d", ACCOUNTS);
    const char *extra[] = {"-a",     acc,  "-n",          n,      "-r", rate,
                           "--seed", "42", "--id-prefix", prefix, NULL};
    tk_spawn(&tk_sender, "edp-trade-sender", url, q, kind, extra);
    if (!tk_until(third_done, 60000) || tk_disp[0].p.eof)
      tk_fail(&r, "the active dispatcher did not get a third of the trades");
  }
  if (r.ok) {
    /* The kill must not follow the active one's output (reading its line
     * and killing at once would tend to land while it settles the next
     * trades of a batch, see tk_check): a pause without reading first,
     * its length varying from run to run. */
    edp_sleep_ms(50 + 37 * rep % 100, -1);
    tk_kill_us = edp_now_us();
    t_signal(&tk_disp[0].p, SIGKILL);
    timed_out = !tk_until(all_done, 60000);
  }
  /* Ends what still runs: the sender (if it hangs) and the dispatchers,
   * reading their last lines. */
  for (int d = 0; d < 2; d++)
    t_signal(&tk_disp[d].p, SIGTERM);
  int64_t end = edp_now_ms() + 20000;
  while (edp_now_ms() < end && ((tk_disp[0].p.pid > 0 && !tk_disp[0].p.eof) ||
                                (tk_disp[1].p.pid > 0 && !tk_disp[1].p.eof) ||
                                (tk_sender.pid > 0 && !tk_sender.eof)))
    tk_pump(100);
  int s_rc = t_wait(&tk_sender, 5000);
  t_wait(&tk_disp[0].p, 5000);
  t_wait(&tk_disp[1].p, 5000);
  r.a_done = tk_disp[0].processed;
  r.b_done = tk_disp[1].processed;
  if (r.ok && s_rc != 0)
    tk_fail(&r, "the sender failed");
  if (r.ok && tk_sent != TK_TRADES)
    tk_fail(&r, "the sender did not get every confirm");
  if (r.ok && tk_check(&r) && timed_out)
    tk_fail(&r, "trades lost: not processed within 60 s");
  if (r.ok) {
    r.takeover_ms = (double)(tk_disp[1].first_start_us - tk_kill_us) / 1000.0;
    r.active_ms = tk_disp[1].active_us
                      ? (double)(tk_disp[1].active_us - tk_kill_us) / 1000.0
                      : -1;
  }
  fprintf(stderr,
          "edp-bench-ha: takeover %.1f ms (handover seen %.1f ms), active "
          "processed %ld, standby %ld (said %s), %ld repeat(s)%s%s\n",
          r.takeover_ms, r.active_ms, r.a_done, r.b_done,
          r.said_standby ? "standby" : "active", r.repeats,
          r.ok ? "" : ": FAILED: ", r.why);
  edp_conn *c = open_conn(url);
  char dlq[140];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_conn_queue_delete(c, q);
  edp_conn_queue_delete(c, dlq);
  edp_conn_destroy(&c);
  return r;
}

/* ---------- report ---------- */

static double median(const double *v, int n) {
  double tmp[16];
  memcpy(tmp, v, (size_t)n * sizeof(double));
  return bench_percentile(tmp, (size_t)n, 50);
}

static void print_cells(void) {
  printf("| pattern | topology | queue | publish msg/s | consume msg/s | "
         "confirm p50 ms | confirm p99 ms | order violations |\n"
         "|---|---|---|---:|---:|---:|---:|---:|\n");
  for (int t = 0; t < 2; t++)
    for (int p = 0; p < 2; p++)
      for (int k = 0; k < 2; k++) {
        cell *c = &cells[p][t][k];
        printf("| %s | %s | %s | %.0f | %.0f | %.1f | %.1f | %s |\n",
               pattern_name[p], topo_name[t], kind_name[k],
               median(c->pub, REPS), median(c->con, REPS),
               bench_percentile(c->lat, c->n_lat, 50),
               bench_percentile(c->lat, c->n_lat, 99),
               p == TD ? (c->violations ? "**yes**" : "0") : "-");
      }
  printf("\nQuorum / classic (medians of the same run):\n\n"
         "| pattern | topology | publish | consume | confirm p50 | confirm "
         "p99 |\n|---|---|---:|---:|---:|---:|\n");
  for (int t = 0; t < 2; t++)
    for (int p = 0; p < 2; p++) {
      cell *c = &cells[p][t][CLASSIC], *qq = &cells[p][t][QUORUM];
      printf("| %s | %s | %.2f | %.2f | %.2f | %.2f |\n", pattern_name[p],
             topo_name[t], median(qq->pub, REPS) / median(c->pub, REPS),
             median(qq->con, REPS) / median(c->con, REPS),
             bench_percentile(qq->lat, qq->n_lat, 50) /
                 bench_percentile(c->lat, c->n_lat, 50),
             bench_percentile(qq->lat, qq->n_lat, 99) /
                 bench_percentile(c->lat, c->n_lat, 99));
    }
}

int main(void) {
  cli_init(&app, "edp-bench-ha");
  const char *url = getenv("EDP_URL");
  if (!url || !url[0])
    url = EDP_URL_DEFAULT;
  memset(body, 'x', sizeof(body));
  snprintf(exchange, sizeof(exchange), "bench.ha.%d", (int)getpid());
  int div = bench_quick() ? 5 : 1;
  int n = 10000 / div, n_lat = 2000 / div;
  for (int p = 0; p < 2; p++)
    for (int t = 0; t < 2; t++)
      for (int k = 0; k < 2; k++) {
        cell *c = &cells[p][t][k];
        c->cap = (size_t)n_lat * REPS;
        if (!(c->lat = calloc(c->cap, sizeof(double))))
          cli_die(&app, CLI_SOFTWARE, "out of memory");
      }
  double load0 = bench_loadavg();

  run_topology(ONE_NODE, url, url, n, n_lat);

  /* The takeover on the harness's node, classic and quorum alternating. */
  tk_result tk[2][TAKEOVERS];
  int tk_ok = 1;
  for (int rep = 0; rep < TAKEOVERS; rep++)
    for (int j = 0; j < 2; j++) {
      int kind = (rep + j) % 2;
      tk[kind][rep] = takeover_run(url, kind, rep);
      tk_ok &= tk[kind][rep].ok;
    }

  fprintf(stderr, "edp-bench-ha: starting a 3-node cluster...\n");
  t_nodes_start(3, "bench-ha"); /* exits if one does not start */
  for (int i = 1; i < 3; i++)
    if (t_node_cmd("join", i, t_node_dir[0]))
      cli_die(&app, CLI_UNAVAILABLE, "node %d could not join node 0", i);
  run_topology(CLUSTER, t_node_url[0], t_node_url[1], n, n_lat);
  t_nodes_stop();
  double load1 = bench_loadavg();

  long viol = 0;
  for (int p = 0; p < 2; p++)
    for (int t = 0; t < 2; t++)
      for (int k = 0; k < 2; k++)
        viol += cells[p][t][k].violations;

  printf("## High availability: classic vs quorum queues, standby takeover "
         "(`edp-bench-ha`)\n\n");
  printf("Per cell %d persistent 256-byte messages published (confirm window "
         "1024) and then consumed by the pattern's own consumer "
         "(forwarding: `edp_fwd_receiver`, default prefetch; thread "
         "delegate: %d workers, a handler that only checks per-account "
         "order, %d accounts); confirm latency from a separate run paced at "
         "%d msg/s (publish call to confirm callback, %d messages a run, "
         "pooled), since at saturation a full window makes it window / "
         "rate. Quorum queues as the programs declare them by default "
         "(delivery limit %d, at-least-once dead-lettering). Median of %d "
         "runs, classic and quorum alternating. The cluster: 3 nodes on "
         "this machine, every queue declared through node 0 (its leader, "
         "client-local), clients on node 1.\n\n",
         n, TD_WORKERS, ACCOUNTS, LAT_RATE, n_lat, CLI_DELIVERY_LIMIT_DEFAULT,
         REPS);
  print_cells();

  printf("\nStandby takeover: `edp-trade-sender` at %d trades/s over %d "
         "accounts (%d trades), two `edp-trade-dispatcher --json` (4 workers) "
         "on one queue (the harness's node), the active one SIGKILLed once "
         "it processed a third of the trades and 50 to 150 ms more (a pause "
         "that does not follow its output). Classic and quorum runs "
         "alternate. Takeover: the kill to the start of the standby's first "
         "trade (CLOCK_MONOTONIC on both sides); handover: the kill to the "
         "standby's first delivery (its `active` event). Checked: every "
         "trade processed, per-account order in each dispatcher, the "
         "standby idle before the kill and picking up at or before where "
         "the active one stopped (repeats, never a skip).\n\n",
         TK_RATE, ACCOUNTS, TK_TRADES);
  printf("| queue | takeover median ms | takeover worst ms | each run ms | "
         "handover "
         "median ms | runs | repeats (all runs) | said "
         "standby | checks |\n|---|---:|---:|---|---:|---:|---:|---:|---|\n");
  int misnamed[2] = {0, 0};
  for (int k = 0; k < 2; k++) {
    double t[TAKEOVERS], h[TAKEOVERS], worst = 0;
    long reps = 0;
    int good = 0, bad = 0, said = 0, nh = 0;
    for (int i = 0; i < TAKEOVERS; i++) {
      said += tk[k][i].said_standby;
      if (!tk[k][i].ok) {
        bad++;
        continue;
      }
      t[good++] = tk[k][i].takeover_ms;
      if (tk[k][i].active_ms >= 0)
        h[nh++] = tk[k][i].active_ms;
      if (tk[k][i].takeover_ms > worst)
        worst = tk[k][i].takeover_ms;
      reps += tk[k][i].repeats;
    }
    misnamed[k] = TAKEOVERS - said;
    char hs[32] = "-", each[128] = "";
    for (int i = 0; i < TAKEOVERS; i++) {
      size_t l = strlen(each);
      if (tk[k][i].ok)
        snprintf(each + l, sizeof(each) - l, "%s%.0f", l ? ", " : "",
                 tk[k][i].takeover_ms);
      else
        snprintf(each + l, sizeof(each) - l, "%sfailed", l ? ", " : "");
    }
    if (nh)
      snprintf(hs, sizeof(hs), "%.0f", median(h, nh));
    printf("| %s | %.0f | %.0f | %s | %s | %d | %ld | %s%d/%d%s | %s |\n",
           kind_name[k], good ? median(t, good) : -1, good ? worst : -1, each,
           hs, TAKEOVERS, reps, said < TAKEOVERS ? "**" : "", said, TAKEOVERS,
           said < TAKEOVERS ? "**" : "", bad ? "**FAILED**" : "passed");
  }
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < TAKEOVERS; i++)
      if (!tk[k][i].ok)
        printf("\n**Failed (%s, run %d): %s.**\n", kind_name[k], i + 1,
               tk[k][i].why);
  if (misnamed[CLASSIC] || misnamed[QUORUM])
    printf("\n**The second dispatcher announced itself `active` (not "
           "`standby`) at its start in %d classic and %d quorum run(s)**, "
           "although it processed nothing until the kill (checked). Its "
           "role comes from the consumer count of a passive declare after "
           "its basic.consume, and on a single-active quorum queue this "
           "broker counts only the active consumer (1 with 2 consumers; a "
           "classic queue says 2). Such a takeover has no `active` "
           "(takeover) event, hence no handover time.\n",
           misnamed[CLASSIC], misnamed[QUORUM]);
  printf("\nMachine: %ld cores shared with other work; load average %.2f "
         "at the start, %.2f at the end.\n",
         sysconf(_SC_NPROCESSORS_ONLN), load0, load1);
  if (viol)
    printf("\n**Order violations in the thread delegate runs: %ld.**\n", viol);
  return tk_ok && !viol ? 0 : 1;
}
