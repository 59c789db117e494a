/*
 * edp-supervisor - a service that processes a queue with the supervisor
 * consumer pattern: a supervisor reads the queue depth every interval and
 * adds or retires consumer threads (ceil(depth / n), clamped to
 * [min, max], retired after a keep-alive). Prints the talk's monitor line
 * `consumers: 3, pending msgs: 140` every interval, and `Starting
 * consumer...` / `Removing consumer...` as it scales. With --no-supervisor
 * it runs --min consumers, the static baseline.
 *
 * Messages from edp-load carry their send time ({"seq":N,"sent_ms":T}), so
 * each processed event reports the end-to-end latency.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static long work_ms;
static int main_efd = -1;
static const char *queue_name; /* for the events' messaging attributes */

static void usage(void) {
  printf("usage: edp-supervisor [options]\n"
         "Processes a queue with consumers added and retired from its depth.\n"
         "  -q, --queue NAME        queue (default edp.supervisor)\n"
         "      --min N             consumers kept when idle (default 1)\n"
         "      --max N             most consumers (default 50)\n"
         "      --per-consumer N    queued messages per consumer: wants\n"
         "                          ceil(depth / N) consumers (default 10)\n"
         "      --interval-ms MS    depth reading period (default 1000)\n"
         "      --hint-ms MS        a consumer that finds a backlog asks for\n"
         "                          an extra reading, at most one per MS\n"
         "                          (default 20; 0 = every interval only)\n"
         "      --keep-alive-ms MS  retire surplus consumers only after the\n"
         "                          demand stayed lower this long (default "
         "5000)\n"
         "      --work-ms MS        simulated processing time (default 0)\n"
         "      --prefetch N        unacked messages per consumer (default 1)\n"
         "      --no-supervisor     static: always --min consumers (baseline)\n"
         "      --name NAME         connection name prefix (default "
         "edp-supervisor)\n"
         "  -n, --count N           exit 0 after N processed messages\n"
         "      --idle-timeout MS   exit 0 when nothing was processed for MS "
         "ms\n" CLI_QUEUE_HELP CLI_METRICS_HELP CLI_COMMON_HELP);
}

/* The send time edp-load put in the body, or -1. */
static int64_t sent_ms_of(const edp_delivery *d) {
  json_t *j = json_loadb(d->body, d->body_len, 0, NULL);
  json_t *v = j ? json_object_get(j, "sent_ms") : NULL;
  int64_t t = json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
  json_decref(j);
  return t;
}

static int handler(void *ud, int consumer, const edp_delivery *d) {
  (void)ud;
  (void)consumer;
  (void)d;
  /* Simulated work, finished even when stopping: in-flight work is
   * completed, then acked. */
  if (work_ms > 0)
    edp_sleep_ms((int)work_ms, -1);
  return 0;
}

static void on_event(void *ud, const edp_sup_event *ev) {
  (void)ud;
  json_t *o = NULL;
  pthread_mutex_lock(&out_mu);
  switch (ev->type) {
  case EDP_SUP_SCALE:
    if (app.json)
      o = json_pack("{s:s,s:i,s:i,s:I,s:I,s:i}", "event", "scale", "consumers",
                    ev->consumers, "live", ev->live, "depth",
                    (json_int_t)ev->depth, "broker_consumers",
                    (json_int_t)ev->broker_consumers, "wanted", ev->wanted);
    else
      printf("consumers: %d, pending msgs: %lld\n", ev->consumers,
             (long long)ev->depth);
    break;
  case EDP_SUP_START:
    if (app.json)
      o = json_pack("{s:s,s:i}", "event", "start", "consumer", ev->consumer);
    else
      printf("Starting consumer...\n");
    break;
  case EDP_SUP_RETIRE:
    if (app.json)
      o = json_pack("{s:s,s:i}", "event", "retire", "consumer", ev->consumer);
    else
      printf("Removing consumer...\n");
    break;
  case EDP_SUP_STOPPED:
    if (app.json) {
      o = json_pack("{s:s,s:i}", "event", "consumer_stopped", "consumer",
                    ev->consumer);
      if (ev->error)
        json_object_set_new(o, "error", json_string(edp_errname(ev->error)));
    }
    break;
  case EDP_SUP_PROCESSED:
  case EDP_SUP_FAILED:
    if (app.json) {
      int64_t sent = sent_ms_of(ev->d);
      o = json_pack("{s:s,s:i,s:b}", "event",
                    ev->type == EDP_SUP_PROCESSED ? "processed" : "failed",
                    "consumer", ev->consumer, "redelivered",
                    ev->d->redelivered);
      cli_json_set(o, "message_id", ev->d->message_id);
      json_object_set_new(o, "latency_ms",
                          sent >= 0 ? json_integer(edp_wall_ms() - sent)
                                    : json_null());
      /* The consumer's span for the message (edp_trace_current()). */
      cli_json_trace(o, NULL, queue_name);
    }
    break;
  case EDP_SUP_RECONNECTED:
    if (app.json)
      o = json_pack("{s:s,s:i}", "event", "reconnected", "consumer",
                    ev->consumer);
    else if (ev->consumer == 0)
      fprintf(stderr, "edp-supervisor: supervisor reconnected\n");
    break;
  }
  /* Which consumer-<slot> series of the metrics is this consumer's. */
  if (o && ev->consumer > 0 && ev->slot > 0)
    json_object_set_new(o, "slot", json_integer(ev->slot));
  if (o)
    cli_emit(o);
  else
    fflush(stdout);
  pthread_mutex_unlock(&out_mu);
  if (ev->type == EDP_SUP_PROCESSED) {
    uint64_t one = 1;
    if (write(main_efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
      return; /* main then notices at its next timeout */
  }
}

/* Library log lines may come from any thread; cli_log writes one line. */
static void log_locked(void *ud, int level, const char *msg) {
  pthread_mutex_lock(&out_mu);
  cli_log(ud, level, msg);
  pthread_mutex_unlock(&out_mu);
}

/* The connections' events as --json lines, but for "reconnected": the
 * supervisor reports that itself, per consumer. */
static void conn_event(void *ud, const edp_conn_event *ev) {
  if (ev->type != EDP_CONN_RECONNECTED)
    cli_conn_event(ud, ev);
}

/* /healthz: messages waiting and no consumer to take them is 503. */
static int sup_health(void *ud, char *reason, size_t len) {
  edp_sup_stats st;
  edp_sup_stats_get(ud, &st);
  if (st.consumers == 0 && st.depth > 0) {
    snprintf(reason, len, "not consuming (%lld messages waiting)",
             (long long)st.depth);
    return 503;
  }
  snprintf(reason, len, "ok");
  return 200;
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-supervisor");
  static const struct option opts[] = {
      {"queue", required_argument, NULL, 'q'},
      {"min", required_argument, NULL, 'm'},
      {"max", required_argument, NULL, 'M'},
      {"per-consumer", required_argument, NULL, 'N'},
      {"interval-ms", required_argument, NULL, 'I'},
      {"hint-ms", required_argument, NULL, 'H'},
      {"keep-alive-ms", required_argument, NULL, 'K'},
      {"work-ms", required_argument, NULL, 'W'},
      {"prefetch", required_argument, NULL, 'p'},
      {"no-supervisor", no_argument, NULL, 'S'},
      {"name", required_argument, NULL, 'A'},
      {"count", required_argument, NULL, 'n'},
      {"idle-timeout", required_argument, NULL, 'i'},
      CLI_QUEUE_LONGOPTS,
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  edp_sup_opts so;
  edp_sup_opts_init(&so);
  so.queue = "edp.supervisor";
  so.name = "edp-supervisor";
  long count = -1, idle = -1;
  int opt;
  edp_queue_kind kind = {0};
  while ((opt = getopt_long(argc, argv, "q:n:" CLI_COMMON_SHORTOPTS, opts,
                            NULL)) != -1) {
    if (cli_common_opt(&app, opt, optarg, usage))
      continue;
    if (cli_queue_opt(&app, opt, optarg, &kind))
      continue;
    switch (opt) {
    case 'q':
      so.queue = optarg;
      break;
    case 'm':
      so.policy.min = (int)cli_int(&app, "min", optarg, 0, 10000);
      break;
    case 'M':
      so.policy.max = (int)cli_int(&app, "max", optarg, 1, 10000);
      break;
    case 'N':
      so.policy.per_consumer =
          (int)cli_int(&app, "per-consumer", optarg, 1, 1000000000L);
      break;
    case 'I':
      so.interval_ms = (int)cli_int(&app, "interval-ms", optarg, 10, 3600000L);
      break;
    case 'H':
      so.hint_ms = (int)cli_int(&app, "hint-ms", optarg, 0, 3600000L);
      break;
    case 'K':
      so.policy.keep_alive_ms =
          (int)cli_int(&app, "keep-alive-ms", optarg, 0, 86400000L);
      break;
    case 'W':
      work_ms = cli_int(&app, "work-ms", optarg, 0, 3600000L);
      break;
    case 'p':
      so.prefetch = (int)cli_int(&app, "prefetch", optarg, 1, 65535);
      break;
    case 'S':
      so.supervise = 0;
      break;
    case 'A':
      if (!optarg[0] || strlen(optarg) > 200)
        cli_die(&app, CLI_USAGE, "--name: 1 to 200 characters");
      so.name = optarg;
      break;
    case 'n':
      count = cli_int(&app, "count", optarg, 0, 1000000000L);
      break;
    case 'i':
      idle = cli_int(&app, "idle-timeout", optarg, 0, 86400000L);
      break;
    default:
      fprintf(stderr, "Try 'edp-supervisor --help'.\n");
      return CLI_USAGE;
    }
  }
  cli_queue_done(&app, &kind);
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (!so.queue[0] || strlen(so.queue) > 200)
    cli_die(&app, CLI_USAGE, "--queue: 1 to 200 characters");
  if (!so.supervise && so.policy.min > so.policy.max)
    so.policy.max = so.policy.min; /* static: --max does not apply */
  if (so.policy.min > so.policy.max)
    cli_die(&app, CLI_USAGE, "--min %d is above --max %d", so.policy.min,
            so.policy.max);
  if (!so.supervise && so.policy.min < 1)
    cli_die(&app, CLI_USAGE, "--no-supervisor needs --min 1 or more");

  main_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (main_efd < 0)
    cli_die(&app, CLI_SOFTWARE, "eventfd: %s", strerror(errno));
  cli_await_brokers(&app);
  so.url = cli_url(&app);
  queue_name = so.queue;
  so.handler = handler;
  so.kind = kind;
  so.on_event = on_event;
  so.log = log_locked;
  so.log_ud = &app;
  so.on_conn_event = conn_event;
  so.on_conn_event_ud = &app;
  edp_sup *s = NULL;
  char why[700] = "";
  int rc = edp_sup_new(&so, &s, why, sizeof(why));
  if (rc)
    cli_die(&app, cli_exit_code(rc), "%s: %s", edp_strerror(rc), why);
  if (so.supervise)
    fprintf(stderr,
            "edp-supervisor: supervising %s: %d..%d consumers, one per %d "
            "queued, every %d ms, keep-alive %d ms\n",
            so.queue, so.policy.min, so.policy.max, so.policy.per_consumer,
            so.interval_ms, so.policy.keep_alive_ms);
  else
    fprintf(stderr, "edp-supervisor: %d static consumers on %s\n",
            so.policy.min, so.queue);

  metrics_serve ms = {0};
  metrics_serve_start_obj(&ms, &app, s, edp_sup_collect, sup_health, s);
  /* The main thread only waits: for a signal, for processed messages
   * (the eventfd the event callback writes) or for the idle timeout. */
  int code = CLI_OK;
  int64_t last = edp_now_ms();
  edp_sup_stats st;
  for (;;) {
    edp_sup_stats_get(s, &st);
    if (count >= 0 && (long)st.processed >= count)
      break;
    int64_t now = edp_now_ms();
    if (idle >= 0 && now - last >= idle)
      break;
    int timeout = idle >= 0 ? (int)(last + idle - now) : 60000;
    struct pollfd fds[2] = {{cli_stop_fd(), POLLIN, 0}, {main_efd, POLLIN, 0}};
    int n = poll(fds, 2, timeout);
    if (n < 0 && errno != EINTR)
      cli_die(&app, CLI_SOFTWARE, "poll: %s", strerror(errno));
    if (cli_stopped()) {
      code = CLI_INTERRUPTED;
      break;
    }
    if (n > 0 && (fds[1].revents & POLLIN)) {
      uint64_t v;
      if (read(main_efd, &v, sizeof(v)) > 0)
        last = edp_now_ms();
    }
  }
  /* Graceful: every consumer finishes and acks its message in hand. */
  edp_sup_stop(s);
  /* After the stop: the hold serves the final counts. */
  metrics_serve_stop(&ms, &app);
  edp_sup_stats_get(s, &st);
  if (app.json)
    cli_emit(json_pack(
        "{s:s,s:I,s:I,s:I,s:I,s:i,s:I,s:I,s:I}", "event", "summary",
        "processed", (json_int_t)st.processed, "failed", (json_int_t)st.failed,
        "started", (json_int_t)st.started, "retired", (json_int_t)st.retired,
        "peak", st.peak, "consumer_ms", (json_int_t)st.consumer_ms,
        "sup_reconnects", (json_int_t)st.sup_reconnects, "consumer_reconnects",
        (json_int_t)st.consumer_reconnects));
  fprintf(stderr,
          "edp-supervisor: processed %llu, consumers started %llu, retired "
          "%llu, peak %d, %.1f consumer-seconds\n",
          (unsigned long long)st.processed, (unsigned long long)st.started,
          (unsigned long long)st.retired, st.peak, st.consumer_ms / 1000.0);
  edp_sup_destroy(&s);
  close(main_efd);
  return code;
}
