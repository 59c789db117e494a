/*
 * edp-multi-sender - publishes over several brokers with the multi-broker
 * pattern: round-robin, or by account key (--key-mode) so that one
 * account's messages keep their order. Prints each broker's confirmed
 * rate every second on stderr ("broker 0: 4000 msg/sec"), and keeps going
 * when a broker dies: its unconfirmed messages go to the others.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

static void usage(void) {
  printf(
      "usage: edp-multi-sender [options]\n"
      "Sends --count messages over every --url broker (publisher confirms,\n"
      "persistent, to the same durable queue on each).\n"
      "  -u, --url URL          a broker; repeat once per broker\n"
      "      --url-file PATH    the brokers' URLs, one per line (a secret\n"
      "                         file; default: the file $EDP_URL_FILE names)\n"
      "  -q, --queue NAME       queue (default edp.multi)\n"
      "  -n, --count N          messages to send (default 1000)\n"
      "      --rate R           at most R messages per second in all\n"
      "                         (default 0: as fast as confirms allow)\n"
      "  -k, --key-mode         route by account key: one account, one broker\n"
      "      --keys N           number of accounts ACC-0..ACC-N-1 (default "
      "16)\n"
      "      --id-prefix P      message_id is P-SEQ (default: a per-run id)\n"
      "  -w, --window N         unconfirmed messages per broker (default "
      "1024)\n"
      "      --confirm-timeout-ms MS  a broker silent this long is down "
      "(5000)\n"
      "      --connect-timeout-ms MS  one connect attempt (default 1000)\n"
      "      --down-max-ms MS   give up (exit 69) when no broker could take\n"
      "                         messages for MS (default "
      "30000)\n" CLI_QUEUE_HELP "      --quorum           the same as "
      "--queue-type quorum\n" CLI_TRACE_HELP CLI_METRICS_HELP
      "Every second: per-broker confirmed rates on stderr. Events (--json):\n"
      "confirmed, nacked, broker_down, broker_up, rerouted, held, summary.\n"
      "  -j, --json           one JSON object per event on stdout\n"
      "  -v, --verbose        log more on stderr\n"
      "  -h, --help           this help\n"
      "  -V, --version        print the version\n"
      "Exit codes: 0 ok, 64 usage, 65 refused by a broker, 69 brokers\n"
      "unavailable, 70 internal error, 77 access refused, 130 interrupted.\n");
}

static const char *event_name(int ev) {
  switch (ev) {
  case EDP_MULTI_UP:
    return "broker_up";
  case EDP_MULTI_DOWN:
    return "broker_down";
  case EDP_MULTI_REROUTED:
    return "rerouted";
  case EDP_MULTI_CANCELLED:
    return "consumer_cancelled"; /* consumers only */
  default:
    return "held";
  }
}

typedef struct run {
  edp_multi_producer *p;
  size_t n;
  uint64_t last_confirmed[EDP_MULTI_MAX_BROKERS];
  int64_t last_report;
  uint64_t refused;
} run;

static uint64_t seq_of(const char *message_id) {
  const char *dash = message_id ? strrchr(message_id, '-') : NULL;
  return dash ? strtoull(dash + 1, NULL, 10) : 0;
}

static void on_confirm(void *ud, int broker, const edp_confirm *cf) {
  run *r = ud;
  if (cf->status != EDP_CONFIRM_ACK) {
    r->refused++;
    fprintf(stderr, "edp-multi-sender: message %s refused by broker %d\n",
            cf->message_id ? cf->message_id : "?", broker);
  }
  if (!app.json)
    return;
  json_t *o =
      json_pack("{s:s,s:i,s:I,s:I}", "event",
                cf->status == EDP_CONFIRM_ACK ? "confirmed" : "nacked",
                "broker", broker, "seq", (json_int_t)seq_of(cf->message_id),
                "t_ms", (json_int_t)edp_wall_ms());
  cli_json_set(o, "message_id", cf->message_id);
  edp_trace t;
  if (cf->msg && !cli_msg_trace(&app, cf->msg, &t))
    cli_json_trace(o, &t, cf->msg->routing_key);
  cli_emit(o);
}

static void on_event(void *ud, int broker, int ev, size_t count) {
  (void)ud;
  if (app.json)
    cli_emit(json_pack("{s:s,s:i,s:I,s:I}", "event", event_name(ev), "broker",
                       broker, "count", (json_int_t)count, "t_ms",
                       (json_int_t)edp_wall_ms()));
}

/* The talk's "4000 msg/sec" per producer: each broker's confirmed rate. */
static void report(run *r, int force) {
  int64_t now = edp_now_ms();
  int64_t dt = now - r->last_report;
  if (!force && dt < 1000)
    return;
  char line[2048];
  size_t off = 0;
  uint64_t total = 0;
  for (size_t i = 0; i < r->n && off < sizeof(line) - 64; i++) {
    edp_multi_broker_stats st;
    edp_multi_producer_stats(r->p, i, &st);
    uint64_t d = st.confirmed - r->last_confirmed[i];
    r->last_confirmed[i] = st.confirmed;
    total += d;
    uint64_t rate = dt > 0 ? d * 1000 / (uint64_t)dt : 0;
    if (st.live)
      off += (size_t)snprintf(line + off, sizeof(line) - off,
                              "broker %zu: %llu msg/sec, ", i,
                              (unsigned long long)rate);
    else
      off += (size_t)snprintf(line + off, sizeof(line) - off,
                              "broker %zu: down (%zu held), ", i,
                              st.unconfirmed + st.held);
  }
  if (dt > 0)
    fprintf(stderr, "edp-multi-sender: %stotal %llu msg/sec\n", line,
            (unsigned long long)(total * 1000 / (uint64_t)dt));
  r->last_report = now;
}

static void die_unavailable(run *r, int rc, const char *what, long down_ms) {
  size_t left = 0;
  for (size_t i = 0; i < r->n; i++) {
    edp_multi_broker_stats st;
    edp_multi_producer_stats(r->p, i, &st);
    left += st.unconfirmed + st.held;
  }
  if (rc == EDP_ESTOPPED || cli_stopped())
    cli_die(&app, CLI_INTERRUPTED, "interrupted; %zu message(s) unconfirmed",
            left);
  if (rc == EDP_ECONNECT)
    cli_die(&app, CLI_UNAVAILABLE,
            "%s: no broker could take the messages for %ld ms (%zu of %zu "
            "up); %zu message(s) unconfirmed",
            what, down_ms, edp_multi_producer_live(r->p), r->n, left);
  cli_die(&app, cli_exit_code(rc), "%s: %s; %zu message(s) unconfirmed", what,
          edp_strerror(rc), left);
}

/* /healthz: 503 while no broker is in rotation (nothing can be sent);
 * the reason says how many are. */
static int producer_health(void *ud, char *reason, size_t len) {
  const run *r = ud;
  size_t live = 0;
  for (size_t i = 0; i < r->n; i++) {
    edp_multi_broker_stats st;
    if (!edp_multi_producer_stats_get(r->p, i, &st))
      live += st.live > 0;
  }
  if (live) {
    snprintf(reason, len, "ok");
    return 200;
  }
  snprintf(reason, len, "no broker up (0 of %zu)", r->n);
  return 503;
}

/* The broker connections' events as --json lines, but for those the
 * multi-broker events say per broker already (up, down, cancelled). */
static void multi_conn_event(void *ud, const edp_conn_event *ev) {
  if (ev->type == EDP_CONN_BLOCKED || ev->type == EDP_CONN_UNBLOCKED ||
      ev->type == EDP_CONN_CHANNEL_RESTORED)
    cli_conn_event(ud, ev);
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-multi-sender");
  static const struct option opts[] = {
      {"queue", required_argument, NULL, 'q'},
      {"count", required_argument, NULL, 'n'},
      {"rate", required_argument, NULL, 'r'},
      {"key-mode", no_argument, NULL, 'k'},
      {"keys", required_argument, NULL, 'K'},
      {"id-prefix", required_argument, NULL, 'I'},
      {"window", required_argument, NULL, 'w'},
      {"confirm-timeout-ms", required_argument, NULL, 'C'},
      {"connect-timeout-ms", required_argument, NULL, 'c'},
      {"down-max-ms", required_argument, NULL, 'D'},
      {"quorum", no_argument, NULL, 'Q'},
      CLI_QUEUE_LONGOPTS,
      CLI_TRACE_LONGOPT,
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *queue = "edp.multi";
  long count = 1000, rate = 0, keys = 16, window = 1024;
  long confirm_to = 5000, connect_to = 1000, down_max = 30000;
  int key_mode = 0;
  char prefix[64];
  snprintf(prefix, sizeof(prefix), "m%lx%x", (long)time(NULL),
           (unsigned)getpid());
  int opt;
  edp_queue_kind kind = {0};
  while ((opt = getopt_long(argc, argv, "q:n:kw:" CLI_COMMON_SHORTOPTS, opts,
                            NULL)) != -1) {
    if (cli_common_opt(&app, opt, optarg, usage))
      continue;
    if (cli_queue_opt(&app, opt, optarg, &kind))
      continue;
    switch (opt) {
    case 'q':
      queue = optarg;
      break;
    case 'n':
      count = cli_int(&app, "count", optarg, 0, 1000000000L);
      break;
    case 'r':
      rate = cli_int(&app, "rate", optarg, 0, 10000000L);
      break;
    case 'k':
      key_mode = 1;
      break;
    case 'K':
      keys = cli_int(&app, "keys", optarg, 1, 1000000L);
      break;
    case 'I':
      if (!optarg[0] || strlen(optarg) >= sizeof(prefix))
        cli_die(&app, CLI_USAGE, "--id-prefix: 1 to %zu characters",
                sizeof(prefix) - 1);
      snprintf(prefix, sizeof(prefix), "%s", optarg);
      break;
    case 'w':
      window = cli_int(&app, "window", optarg, 1, 1000000L);
      break;
    case 'C':
      confirm_to = cli_int(&app, "confirm-timeout-ms", optarg, 100, 3600000L);
      break;
    case 'c':
      connect_to = cli_int(&app, "connect-timeout-ms", optarg, 10, 600000L);
      break;
    case 'D':
      down_max = cli_int(&app, "down-max-ms", optarg, 0, 86400000L);
      break;
    case 'Q':
      kind.type = "quorum";
      break;
    default:
      fprintf(stderr, "Try 'edp-multi-sender --help'.\n");
      return CLI_USAGE;
    }
  }
  cli_queue_done(&app, &kind);
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (!queue[0] || strlen(queue) > 200)
    cli_die(&app, CLI_USAGE, "--queue: 1 to 200 characters");
  size_t n_urls;
  const char *const *urls = cli_urls(&app, &n_urls);

  cli_await_brokers(&app);
  run r = {0};
  r.n = n_urls;
  r.last_report = edp_now_ms();
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  char dlq[256];
  snprintf(dlq, sizeof(dlq), "%s.dlq", queue);
  if (edp_queue_opts_kind(&qo, &kind, dlq))
    cli_die(&app, CLI_USAGE, "--queue-type, --delivery-limit: invalid");
  edp_multi_producer_opts o;
  edp_multi_producer_opts_init(&o);
  o.urls = urls;
  o.n_urls = n_urls;
  o.queue = queue;
  o.queue_opts = &qo;
  o.mode = key_mode ? EDP_MULTI_KEY : EDP_MULTI_ROUND_ROBIN;
  o.window = (size_t)window;
  o.confirm_timeout_ms = (int)confirm_to;
  o.connect_timeout_ms = (int)connect_to;
  o.down_max_ms = (int)down_max;
  o.stop_fd = cli_stop_fd();
  o.client_name = "edp-multi-sender";
  o.log = cli_log;
  o.log_ud = &app;
  o.on_conn_event = multi_conn_event;
  o.on_conn_event_ud = &app;
  o.on_confirm = on_confirm;
  o.on_event = on_event;
  o.ud = &r;
  char why[700] = "";
  int rc = edp_multi_producer_new(&o, &r.p, why, sizeof(why));
  if (rc)
    cli_die(&app, rc == EDP_EURL ? CLI_USAGE : cli_exit_code(rc), "%s",
            why[0] ? why : edp_strerror(rc));

  metrics_serve ms = {0};
  metrics_serve_start_obj(&ms, &app, r.p, edp_multi_producer_collect,
                          producer_health, &r);
  int64_t start = edp_now_ms();
  char body[160], id[96], key[32];
  edp_header hdr[3];
  for (long i = 1; i <= count; i++) {
    if (rate > 0) {
      /* Pace against the start time; wait in the producer, which keeps
       * reading confirms and retrying brokers meanwhile. */
      for (;;) {
        int64_t wait = start + (int64_t)((i - 1) * 1000 / rate) - edp_now_ms();
        if (wait <= 0)
          break;
        if ((rc = edp_multi_poll(r.p, wait < 1000 ? (int)wait : 1000)))
          die_unavailable(&r, rc, "interrupted", down_max);
        report(&r, 0);
      }
    }
    long acct = (i - 1) % keys, kseq = (i - 1) / keys + 1;
    snprintf(key, sizeof(key), "ACC-%ld", acct);
    snprintf(id, sizeof(id), "%s-%ld", prefix, i);
    int n = snprintf(body, sizeof(body), "(%ld) %s,BUY,AAPL,%ld SHARES", i, key,
                     100 + i % 900);
    hdr[0] = (edp_header){"x-edp-key", key, 0};
    hdr[1] = (edp_header){"x-edp-kseq", NULL, kseq};
    edp_trace tr;
    char tp[EDP_TRACEPARENT_LEN + 1];
    int traced = cli_trace_next(&app, &tr);
    hdr[2] =
        (edp_header){EDP_TRACE_HDR_PARENT,
                     traced ? edp_trace_format(&tr, tp, sizeof(tp)) : "", 0};
    edp_msg m;
    edp_msg_init(&m);
    m.body = body;
    m.body_len = (size_t)n;
    m.persistent = 1;
    m.message_id = id;
    m.content_type = "text/plain";
    m.headers = hdr;
    m.n_headers = traced ? 3 : 2;
    rc = edp_multi_publish(r.p, &m, key);
    if (rc)
      die_unavailable(&r, rc, "send failed", down_max);
    report(&r, 0);
  }
  /* Wait for the last confirms, still printing rates. A flush that gives
   * up has waited down_max for a broker. */
  for (;;) {
    rc = edp_multi_flush(r.p, 1000);
    report(&r, 0);
    if (rc != EDP_ETIMEOUT)
      break;
  }
  if (rc)
    die_unavailable(&r, rc, "waiting for confirms failed", down_max);
  report(&r, 1);
  json_t *per = json_array();
  uint64_t confirmed = 0, rerouted = 0, returned = 0;
  for (size_t i = 0; i < r.n; i++) {
    edp_multi_broker_stats st;
    edp_multi_producer_stats(r.p, i, &st);
    confirmed += st.confirmed;
    rerouted += st.rerouted;
    returned += st.returned;
    json_array_append_new(per, json_pack("{s:I,s:I,s:I,s:I,s:I}", "confirmed",
                                         (json_int_t)st.confirmed, "rerouted",
                                         (json_int_t)st.rerouted, "returned",
                                         (json_int_t)st.returned, "downs",
                                         (json_int_t)st.downs, "ups",
                                         (json_int_t)st.ups));
  }
  double secs = (double)(edp_now_ms() - start) / 1000.0;
  if (app.json)
    cli_emit(json_pack("{s:s,s:I,s:I,s:I,s:I,s:f,s:o}", "event", "summary",
                       "sent", (json_int_t)count, "confirmed",
                       (json_int_t)confirmed, "rerouted", (json_int_t)rerouted,
                       "returned", (json_int_t)returned, "seconds", secs,
                       "brokers", per));
  else
    json_decref(per);
  fprintf(stderr,
          "edp-multi-sender: %ld sent, %llu confirmed over %zu brokers in "
          "%.1f s, %llu resent after a broker loss, %llu after their "
          "queue was gone\n",
          count, (unsigned long long)confirmed, r.n, secs,
          (unsigned long long)rerouted, (unsigned long long)returned);
  metrics_serve_stop(&ms, &app);
  edp_multi_producer_destroy(&r.p);
  return r.refused ? CLI_DATAERR : CLI_OK;
}
