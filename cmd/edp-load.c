/*
 * edp-load - a load generator for the supervisor consumer demo: publishes
 * at a rate profile (--profile 50:10s,500:10s,50:10s, or --rate R
 * --duration D), persistent and confirmed through the forwarding sender.
 * Each body is {"seq":N,"sent_ms":T} (T = wall clock ms), so the consumer
 * can report the end-to-end latency of every message.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

#define MAX_SEGMENTS 64
#define MAX_RATE 100000L
#define MAX_SEGMENT_MS 86400000LL

typedef struct segment {
  long rate; /* messages per second, 0 = pause */
  long long ms;
} segment;

static void usage(void) {
  printf(
      "usage: edp-load [options]\n"
      "Publishes persistent, confirmed messages at a rate profile.\n"
      "  -q, --queue NAME        queue (default edp.supervisor)\n"
      "  -p, --profile SPEC      RATE:DURATION segments separated by commas,\n"
      "                          e.g. 50:10s,500:10s,50:10s (RATE msgs/s,\n"
      "                          0 pauses; DURATION N, Ns or Nms; N alone =\n"
      "                          seconds)\n"
      "  -r, --rate R            messages per second (with --duration)\n"
      "  -d, --duration D        N, Ns or Nms (with --rate)\n"
      "      --id-prefix P       message_id is P-SEQ (default: a per-run "
      "id)\n"
      "  -w, --confirm-window N  messages in flight (default "
      "1024)\n" CLI_QUEUE_HELP CLI_METRICS_HELP CLI_COMMON_HELP);
}

/* Parses a duration "N", "Ns" or "Nms" (N >= 1) into ms; -1 if malformed. */
static long long parse_duration(const char *s, size_t len) {
  size_t i = 0;
  long long n = 0;
  while (i < len && s[i] >= '0' && s[i] <= '9') {
    n = n * 10 + (s[i] - '0');
    if (n > MAX_SEGMENT_MS)
      return -1;
    i++;
  }
  if (i == 0)
    return -1;
  size_t rest = len - i;
  long long ms;
  if (rest == 0 || (rest == 1 && s[i] == 's'))
    ms = n * 1000;
  else if (rest == 2 && s[i] == 'm' && s[i + 1] == 's')
    ms = n;
  else
    return -1;
  return ms >= 1 && ms <= MAX_SEGMENT_MS ? ms : -1;
}

/* Parses a rate "N" (0..MAX_RATE); -1 if malformed. */
static long parse_rate(const char *s, size_t len) {
  if (len == 0 || len > 6)
    return -1;
  long n = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    n = n * 10 + (s[i] - '0');
  }
  return n <= MAX_RATE ? n : -1;
}

/* Parses the whole profile strictly or dies with exit 64 naming the bad
 * segment. */
static size_t parse_profile(const char *spec, segment *seg) {
  size_t n = 0;
  const char *p = spec;
  if (!spec[0])
    cli_die(&app, CLI_USAGE, "--profile: empty");
  for (;;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *colon = memchr(p, ':', len);
    if (n == MAX_SEGMENTS)
      cli_die(&app, CLI_USAGE, "--profile: at most %d segments", MAX_SEGMENTS);
    long rate = colon ? parse_rate(p, (size_t)(colon - p)) : -1;
    long long ms =
        colon ? parse_duration(colon + 1, len - (size_t)(colon - p) - 1) : -1;
    if (rate < 0 || ms < 0)
      cli_die(&app, CLI_USAGE,
              "--profile: segment %zu '%.*s' is not RATE:DURATION (RATE 0 to "
              "%ld msgs/s, DURATION like 10s or 500ms), e.g. "
              "50:10s,500:10s,50:10s",
              n + 1, (int)(len > 60 ? 60 : len), p, MAX_RATE);
    seg[n].rate = rate;
    seg[n].ms = ms;
    n++;
    if (!end)
      return n;
    p = end + 1;
  }
}

typedef struct load_run {
  edp_conn *conn;
  edp_fwd_sender *s;
  char prefix[64];
  uint64_t seq;
} load_run;

static void interrupted(load_run *r) {
  cli_die(&app, CLI_INTERRUPTED,
          "interrupted after %llu message(s); %zu unconfirmed",
          (unsigned long long)r->seq, edp_conn_unconfirmed(r->conn));
}

/* Waits until the monotonic time t, keeping the connection serviced
 * (heartbeats, confirms). */
static void wait_until(load_run *r, int64_t t) {
  for (;;) {
    int64_t left = t - edp_now_ms();
    if (left <= 0)
      return;
    int rc = edp_conn_is_open(r->conn)
                 ? edp_conn_wait(r->conn, -1, (int)left)
                 : (edp_sleep_ms((int)left, cli_stop_fd()) ? EDP_ESTOPPED : 0);
    if (rc == EDP_ESTOPPED || cli_stopped())
      interrupted(r);
    /* A lost connection is recovered by the next send; meanwhile wait on
     * the clock alone. */
    if (rc < 0 && edp_sleep_ms((int)left, cli_stop_fd()))
      interrupted(r);
  }
}

static void send_one(load_run *r) {
  char id[96], body[96];
  r->seq++;
  snprintf(id, sizeof(id), "%s-%llu", r->prefix, (unsigned long long)r->seq);
  int64_t sent = edp_wall_ms();
  int n = snprintf(body, sizeof(body), "{\"seq\":%llu,\"sent_ms\":%lld}",
                   (unsigned long long)r->seq, (long long)sent);
  int rc = edp_fwd_send(r->s, id, body, (size_t)n, "application/json");
  if (rc == EDP_ESTOPPED || cli_stopped())
    interrupted(r);
  if (rc)
    cli_die_err(&app, r->conn, rc, "send failed");
  cli_progress(&app, r->seq, edp_conn_unconfirmed(r->conn), 0);
  if (app.json)
    cli_emit(json_pack("{s:s,s:s,s:I,s:I}", "event", "sent", "message_id", id,
                       "seq", (json_int_t)r->seq, "sent_ms", (json_int_t)sent));
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-load");
  static const struct option opts[] = {
      {"queue", required_argument, NULL, 'q'},
      {"profile", required_argument, NULL, 'p'},
      {"rate", required_argument, NULL, 'r'},
      {"duration", required_argument, NULL, 'd'},
      {"id-prefix", required_argument, NULL, 'I'},
      {"confirm-window", required_argument, NULL, 'w'},
      CLI_QUEUE_LONGOPTS,
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *queue = "edp.supervisor", *profile = NULL, *duration = NULL;
  long rate = -1, window = 1024;
  load_run r = {0};
  snprintf(r.prefix, sizeof(r.prefix), "L%lx%x", (long)time(NULL),
           (unsigned)getpid());
  int opt;
  edp_queue_kind kind = {0};
  while ((opt = getopt_long(argc, argv, "q:p:r:d:w:" CLI_COMMON_SHORTOPTS, opts,
                            NULL)) != -1) {
    if (cli_common_opt(&app, opt, optarg, usage))
      continue;
    if (cli_queue_opt(&app, opt, optarg, &kind))
      continue;
    switch (opt) {
    case 'q':
      queue = optarg;
      break;
    case 'p':
      profile = optarg;
      break;
    case 'r':
      rate = cli_int(&app, "rate", optarg, 0, MAX_RATE);
      break;
    case 'd':
      duration = optarg;
      break;
    case 'I':
      if (!optarg[0] || strlen(optarg) >= sizeof(r.prefix))
        cli_die(&app, CLI_USAGE, "--id-prefix: 1 to %zu characters",
                sizeof(r.prefix) - 1);
      snprintf(r.prefix, sizeof(r.prefix), "%s", optarg);
      break;
    case 'w':
      window = cli_int(&app, "confirm-window", optarg, 1, 1000000);
      break;
    default:
      fprintf(stderr, "Try 'edp-load --help'.\n");
      return CLI_USAGE;
    }
  }
  cli_queue_done(&app, &kind);
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (!queue[0] || strlen(queue) > 200)
    cli_die(&app, CLI_USAGE, "--queue: 1 to 200 characters");
  segment seg[MAX_SEGMENTS];
  size_t n_seg = 0;
  if (profile && (rate >= 0 || duration))
    cli_die(&app, CLI_USAGE, "give either --profile or --rate/--duration");
  if (profile) {
    n_seg = parse_profile(profile, seg);
  } else if (rate >= 0 && duration) {
    seg[0].rate = rate;
    seg[0].ms = parse_duration(duration, strlen(duration));
    if (seg[0].ms < 0)
      cli_die(&app, CLI_USAGE,
              "--duration: '%s' is not a duration like 10, 10s or 500ms",
              duration);
    n_seg = 1;
  } else {
    cli_die(&app, CLI_USAGE, "give --profile, or --rate and --duration");
  }

  r.conn = cli_connect(&app, "edp-load");
  edp_fwd_sender_opts fo;
  edp_fwd_sender_opts_init(&fo);
  fo.kind = kind;
  fo.queue = queue;
  fo.confirm_window = (size_t)window;
  int rc = edp_fwd_sender_new(r.conn, &fo, &r.s);
  if (rc)
    cli_die_err(&app, r.conn, rc, "cannot set up the queue");
  metrics_serve ms = {0};
  metrics_serve_start(&ms, &app, r.conn, 0, r.s, edp_fwd_sender_collect);

  for (size_t i = 0; i < n_seg; i++) {
    fprintf(stderr, "edp-load: %ld msgs/s for %lld ms\n", seg[i].rate,
            seg[i].ms);
    int64_t start = edp_now_ms();
    if (seg[i].rate == 0) {
      wait_until(&r, start + seg[i].ms);
      continue;
    }
    /* Message k of the segment is due at start + k / rate; a sender that
     * falls behind catches up at full speed rather than skipping. */
    for (long long k = 0;; k++) {
      long long due = k * 1000 / seg[i].rate;
      if (due >= seg[i].ms)
        break;
      wait_until(&r, start + due);
      send_one(&r);
    }
  }
  rc = edp_fwd_flush(r.s);
  if (rc == EDP_ESTOPPED || cli_stopped())
    interrupted(&r);
  if (rc)
    cli_die_err(&app, r.conn, rc, "waiting for confirms failed");
  cli_progress(&app, r.seq, edp_conn_unconfirmed(r.conn), 1);
  edp_fwd_sender_stats st;
  edp_fwd_sender_stats_get(r.s, &st);
  if (app.json)
    cli_emit(json_pack(
        "{s:s,s:I,s:I,s:I,s:I}", "event", "summary", "sent",
        (json_int_t)st.sent, "confirmed", (json_int_t)st.confirmed, "refused",
        (json_int_t)st.refused, "republished", (json_int_t)st.republished));
  fprintf(stderr, "edp-load: sent %llu, confirmed %llu, refused %llu\n",
          (unsigned long long)st.sent, (unsigned long long)st.confirmed,
          (unsigned long long)st.refused);
  metrics_serve_stop(&ms, &app);
  edp_fwd_sender_destroy(&r.s);
  edp_conn_destroy(&r.conn);
  return st.refused ? CLI_DATAERR : CLI_OK;
}
