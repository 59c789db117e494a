/*
 * edp-ambulance-sender - publishes standard and priority messages for the
 * ambulance pattern. Without load options it plays the talk's demo: S1,
 * S2, S3, P1, S4, S5, S6, P2, one every 500 ms. With --standard and
 * --priority it sends a standard backlog first, then the priority
 * messages at --rate per second. --mode names the queue layout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

static void usage(void) {
  printf("usage: edp-ambulance-sender [options]\n"
         "Sends the talk's demo sequence S1 S2 S3 P1 S4 S5 S6 P2 (one message\n"
         "every --interval ms), or with --standard/--priority a standard\n"
         "backlog followed by priority messages at --rate per second.\n"
         "  -m, --mode MODE        queue layout: ambulance or carpool (two "
         "lanes),\n"
         "                         native (x-max-priority) or fifo (default\n"
         "                         ambulance)\n"
         "  -q, --queue BASE       queue name base (default edp.ambulance)\n"
         "  -s, --standard N       standard messages S1..SN, sent first\n"
         "  -p, --priority M       priority messages P1..PM, sent after them\n"
         "  -r, --rate R           priority messages per second (default 10;\n"
         "                         0 = as fast as possible)\n"
         "      --interval MS      demo pace (default 500)\n"
         "      --transient        transient messages (default "
         "persistent)\n" CLI_QUEUE_HELP CLI_TRACE_HELP CLI_METRICS_HELP
             CLI_COMMON_HELP);
}

typedef struct run {
  edp_conn *conn;
  edp_amb_sender *s;
  int mode;
  const char *base;
  int64_t t0;
  uint64_t sent;
  metrics_sent lane[2]; /* by enum edp_amb_kind; single-writer: main */
} run;

static void send_one(run *r, int kind, long n) {
  char id[32], body[64];
  snprintf(id, sizeof(id), "%c%ld", kind == EDP_AMB_PRIORITY ? 'P' : 'S', n);
  int len = snprintf(body, sizeof(body), "%s Message %s",
                     kind == EDP_AMB_PRIORITY ? "Priority" : "Standard", id);
  int64_t now = edp_now_ms();
  if (!r->t0)
    r->t0 = now;
  edp_trace t;
  int traced = cli_trace_next(&app, &t);
  int rc = edp_amb_send_traced(r->s, kind, id, body, (size_t)len,
                               traced ? &t : NULL);
  if (rc == EDP_ESTOPPED || cli_stopped())
    cli_die(&app, CLI_INTERRUPTED, "interrupted; %zu message(s) unconfirmed",
            edp_conn_unconfirmed(r->conn));
  if (rc)
    cli_die_err(&app, r->conn, rc, "send failed");
  edp_count_add(&r->lane[kind].n, 1);
  cli_progress(&app, ++r->sent, edp_conn_unconfirmed(r->conn), 0);
  if (app.json) {
    json_t *o = json_pack("{s:s,s:s,s:s,s:I}", "event", "sent", "kind",
                          edp_amb_kind_name(kind), "id", id, "t_ms",
                          (json_int_t)(now - r->t0));
    if (traced) {
      char q[256];
      edp_amb_queue_name(r->mode, r->base, kind, q, sizeof(q));
      cli_json_trace(o, &t, q);
    }
    cli_emit(o);
  } else
    printf("Sending %s  (T=%lld)\n", body, (long long)(now - r->t0));
  fflush(stdout);
}

/* Waits until the monotonic time at, servicing the connection (confirms,
 * heartbeats) meanwhile instead of sleeping blind. */
static void wait_until(run *r, int64_t at) {
  for (;;) {
    int64_t left = at - edp_now_ms();
    if (left <= 0)
      return;
    int rc = edp_conn_wait(r->conn, -1, (int)left);
    if (rc == EDP_ESTOPPED || cli_stopped())
      cli_die(&app, CLI_INTERRUPTED, "interrupted; %zu message(s) unconfirmed",
              edp_conn_unconfirmed(r->conn));
    if (rc < 0 && rc != EDP_ECLOSED)
      cli_die_err(&app, r->conn, rc, "waiting");
    if (rc == EDP_ECLOSED)
      return; /* the next send reconnects */
  }
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-ambulance-sender");
  static const struct option opts[] = {
      {"mode", required_argument, NULL, 'm'},
      {"queue", required_argument, NULL, 'q'},
      {"standard", required_argument, NULL, 's'},
      {"priority", required_argument, NULL, 'p'},
      {"rate", required_argument, NULL, 'r'},
      {"interval", required_argument, NULL, 'I'},
      {"transient", no_argument, NULL, 'T'},
      CLI_QUEUE_LONGOPTS,
      CLI_TRACE_LONGOPT,
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *base = "edp.ambulance";
  long n_std = -1, n_prio = -1, rate = 10, interval = 500;
  edp_amb_sender_opts so;
  edp_amb_sender_opts_init(&so);
  int opt;
  edp_queue_kind kind = {0};
  while ((opt = getopt_long(argc, argv, "m:q:s:p:r:" CLI_COMMON_SHORTOPTS, opts,
                            NULL)) != -1) {
    if (cli_common_opt(&app, opt, optarg, usage))
      continue;
    if (cli_queue_opt(&app, opt, optarg, &kind))
      continue;
    switch (opt) {
    case 'm':
      if (edp_amb_mode_parse(optarg, &so.mode))
        cli_die(&app, CLI_USAGE,
                "--mode: expected fifo, carpool, ambulance or native, got "
                "'%s'",
                optarg);
      break;
    case 'q':
      base = optarg;
      break;
    case 's':
      n_std = cli_int(&app, "standard", optarg, 0, 100000000L);
      break;
    case 'p':
      n_prio = cli_int(&app, "priority", optarg, 0, 100000000L);
      break;
    case 'r':
      rate = cli_int(&app, "rate", optarg, 0, 1000000L);
      break;
    case 'I':
      interval = cli_int(&app, "interval", optarg, 0, 3600000L);
      break;
    case 'T':
      so.persistent = 0;
      break;
    default:
      fprintf(stderr, "Try 'edp-ambulance-sender --help'.\n");
      return CLI_USAGE;
    }
  }
  cli_queue_done(&app, &kind);
  if (so.mode == EDP_AMB_NATIVE && kind.type && !strcmp(kind.type, "quorum"))
    cli_die(&app, CLI_USAGE,
            "--mode native needs a classic queue: a quorum queue has no "
            "x-max-priority (use --mode ambulance or carpool: two lanes)");
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (!base[0] || strlen(base) > 200)
    cli_die(&app, CLI_USAGE, "--queue: 1 to 200 characters");

  run r = {0};
  r.conn = cli_connect(&app, "edp-ambulance-sender");
  so.base = base;
  so.kind = kind;
  r.mode = so.mode;
  r.base = base;
  int rc = edp_amb_sender_new(r.conn, &so, &r.s);
  if (rc)
    cli_die_err(&app, r.conn, rc, "cannot set up the queues");
  /* Labelled as the receiver labels its processed messages. */
  metrics_serve ms = {0};
  metrics_serve_start(&ms, &app, r.conn, 0, NULL, NULL);
  for (int k = 0; k < 2; k++) {
    char *l = r.lane[k].labels;
    edp_metrics_label(l, sizeof(r.lane[k].labels), "queue", base);
    edp_metrics_label(l, sizeof(r.lane[k].labels), "lane",
                      edp_amb_kind_name(k));
    metrics_serve_add(&ms, &app, &r.lane[k], metrics_sent_collect);
  }

  if (n_std < 0 && n_prio < 0) {
    /* The talk's demo: three standard, one priority, three standard, one
     * priority, at a steady pace. */
    static const char seq[] = "SSSPSSSP";
    long ns = 0, np = 0;
    int64_t start = edp_now_ms();
    for (int i = 0; seq[i]; i++) {
      wait_until(&r, start + (int64_t)i * interval);
      if (seq[i] == 'S')
        send_one(&r, EDP_AMB_STANDARD, ++ns);
      else
        send_one(&r, EDP_AMB_PRIORITY, ++np);
    }
  } else {
    for (long i = 1; i <= n_std; i++)
      send_one(&r, EDP_AMB_STANDARD, i);
    /* The backlog is in the queue (confirmed) before the first priority
     * message leaves: its send time is then also its arrival time, not
     * the time it joined our socket's queue behind the backlog. */
    rc = edp_amb_flush(r.s);
    if (rc == EDP_ESTOPPED || cli_stopped())
      cli_die(&app, CLI_INTERRUPTED, "interrupted; %zu message(s) unconfirmed",
              edp_conn_unconfirmed(r.conn));
    if (rc)
      cli_die_err(&app, r.conn, rc, "waiting for confirms failed");
    int64_t start = edp_now_ms();
    for (long i = 1; i <= n_prio; i++) {
      if (rate > 0)
        wait_until(&r, start + (i - 1) * 1000 / rate);
      send_one(&r, EDP_AMB_PRIORITY, i);
    }
  }
  rc = edp_amb_flush(r.s);
  if (rc == EDP_ESTOPPED || cli_stopped())
    cli_die(&app, CLI_INTERRUPTED, "interrupted; %zu message(s) unconfirmed",
            edp_conn_unconfirmed(r.conn));
  if (rc)
    cli_die_err(&app, r.conn, rc, "waiting for confirms failed");
  cli_progress(&app, r.sent, edp_conn_unconfirmed(r.conn), 1);
  edp_amb_sender_stats st;
  edp_amb_sender_stats_get(r.s, &st);
  if (app.json)
    cli_emit(json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "event", "summary",
                       "standard", (json_int_t)st.sent[EDP_AMB_STANDARD],
                       "priority", (json_int_t)st.sent[EDP_AMB_PRIORITY],
                       "confirmed", (json_int_t)st.confirmed, "refused",
                       (json_int_t)st.refused, "republished",
                       (json_int_t)st.republished));
  fprintf(stderr,
          "edp-ambulance-sender: sent %llu standard and %llu priority to the "
          "%s layout, confirmed %llu, refused %llu\n",
          (unsigned long long)st.sent[EDP_AMB_STANDARD],
          (unsigned long long)st.sent[EDP_AMB_PRIORITY],
          edp_amb_mode_name(so.mode), (unsigned long long)st.confirmed,
          (unsigned long long)st.refused);
  metrics_serve_stop(&ms, &app);
  edp_amb_sender_destroy(&r.s);
  edp_conn_destroy(&r.conn);
  return st.refused ? CLI_DATAERR : CLI_OK;
}
