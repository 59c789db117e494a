/*
 * edp-ambulance-receiver - processes standard and priority messages with
 * one of the ambulance pattern's layouts: carpool (a dedicated priority
 * thread), ambulance (a priority-first thread), native (a RabbitMQ
 * priority queue) or fifo (one queue, the baseline). Each message takes
 * --work-ms of simulated work; it is acked after it.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

static void usage(void) {
  printf(
      "usage: edp-ambulance-receiver [options]\n"
      "Processes messages with threads+1 consumer threads, each with its own\n"
      "connection; acks each message after processing it.\n"
      "  -m, --mode MODE        carpool, ambulance, native or fifo (default\n"
      "                         ambulance)\n"
      "  -q, --queue BASE       queue name base (default edp.ambulance)\n"
      "  -t, --threads N        standard threads (default 1); carpool and\n"
      "                         ambulance add the priority thread, fifo and\n"
      "                         native run N+1 workers\n"
      "  -w, --work-ms N        simulated processing time (default 2000, as\n"
      "                         in the talk)\n"
      "  -n, --count N          exit 0 after N processed messages (and the\n"
      "                         ones in progress then)\n"
      "      --idle-timeout MS  exit 0 when nothing was processed for MS ms\n"
      "                         (default: run until interrupted)\n"
      "      --prefetch N       prefetch of standard, fifo and native\n"
      "                         consumers (default 1)\n"
      "      --priority-prefetch N  prefetch of the priority thread's\n"
      "                         priority consumer (default 4)\n"
      "      --no-lane-check    ambulance: start standard work after priority\n"
      "                         work without asking the broker whether the\n"
      "                         priority queue is empty (for "
      "measuring)\n" CLI_QUEUE_HELP CLI_METRICS_HELP CLI_COMMON_HELP);
}

/* Shared by the consumer threads; out_mu also keeps output lines whole. */
typedef struct state {
  pthread_mutex_t mu;
  long work_ms;
  long count; /* -1 = no limit */
  long processed;
  long by_kind[2];
  int active;       /* handlers running */
  int64_t last_ms;  /* monotonic time of the last start or finish */
  int64_t first_us; /* wall time of the first start, for T= */
  int done_pipe[2]; /* readable once count is reached */
  int mode;         /* the receiver's, for the queue names in events */
  const char *base;
} state;

static state S;

static int handler(void *ud, const edp_amb_job *job) {
  (void)ud;
  pthread_mutex_lock(&S.mu);
  if (!S.first_us)
    S.first_us = job->start_us;
  S.active++;
  S.last_ms = edp_now_ms();
  if (!app.json) {
    const edp_delivery *d = job->d;
    char tname[40];
    const char *num = strchr(job->thread_name, '-');
    if (!num)
      snprintf(tname, sizeof(tname), "PRIORITY THREAD");
    else
      snprintf(tname, sizeof(tname), "NORMAL THREAD %s", num + 1);
    char text[801];
    printf("Processing message: %s  (T=%lld) - [%s]%s\n",
           cli_text(d->body, d->body_len > 200 ? 200 : d->body_len, text,
                    sizeof(text)),
           (long long)((job->start_us - S.first_us) / 1000), tname,
           d->redelivered ? " (redelivered)" : "");
    fflush(stdout);
  }
  pthread_mutex_unlock(&S.mu);
  /* The work is finished even after SIGINT (rule 5: finish or requeue
   * in-flight work); it is bounded by --work-ms. */
  if (S.work_ms > 0)
    edp_sleep_ms((int)S.work_ms, -1);
  /* Counted down here, not in on_event: a message whose ack is refused
   * (its connection was lost meanwhile) gets no event, and would keep
   * the receiver from ever going idle. */
  pthread_mutex_lock(&S.mu);
  S.active--;
  S.last_ms = edp_now_ms();
  pthread_mutex_unlock(&S.mu);
  return 0;
}

static void on_event(void *ud, int ev, const edp_amb_job *job) {
  (void)ud;
  pthread_mutex_lock(&S.mu);
  S.last_ms = edp_now_ms();
  if (ev == EDP_AMB_PROCESSED)
    S.by_kind[job->kind]++;
  if (ev == EDP_AMB_PROCESSED && ++S.processed == S.count) {
    ssize_t n = write(S.done_pipe[1], "x", 1);
    (void)n;
  }
  if (app.json) {
    const edp_delivery *d = job->d;
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:I,s:I,s:I,s:b}", "event",
        ev == EDP_AMB_PROCESSED ? "processed" : "dead_lettered", "kind",
        edp_amb_kind_name(job->kind), "thread", job->thread_name, "sent_us",
        (json_int_t)job->sent_us, "start_us", (json_int_t)job->start_us,
        "end_us", (json_int_t)job->end_us, "redelivered", d->redelivered);
    cli_json_set(o, "id", d->message_id);
    /* The receiver's span for the message (edp_trace_current()). */
    char q[256];
    edp_amb_queue_name(S.mode, S.base, job->kind, q, sizeof(q));
    cli_json_trace(o, NULL, q);
    if (job->sent_us)
      json_object_set_new(
          o, "latency_ms",
          json_real((double)(job->end_us - job->sent_us) / 1000.0));
    cli_emit(o);
  }
  pthread_mutex_unlock(&S.mu);
}

/* /healthz: a consumer thread that ended on an error makes it 503. */
static int amb_health(void *ud, char *reason, size_t len) {
  int err = edp_amb_receiver_error(ud);
  if (err) {
    snprintf(reason, len, "a consumer thread failed: %s", edp_strerror(err));
    return 503;
  }
  snprintf(reason, len, "ok");
  return 200;
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-ambulance-receiver");
  static const struct option opts[] = {
      {"mode", required_argument, NULL, 'm'},
      {"queue", required_argument, NULL, 'q'},
      {"threads", required_argument, NULL, 't'},
      {"work-ms", required_argument, NULL, 'w'},
      {"count", required_argument, NULL, 'n'},
      {"idle-timeout", required_argument, NULL, 'i'},
      {"prefetch", required_argument, NULL, 'P'},
      {"priority-prefetch", required_argument, NULL, 'R'},
      {"no-lane-check", no_argument, NULL, 'L'},
      CLI_QUEUE_LONGOPTS,
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  edp_amb_receiver_opts ro;
  edp_amb_receiver_opts_init(&ro);
  ro.base = "edp.ambulance";
  long idle = -1;
  S.work_ms = 2000;
  S.count = -1;
  int opt;
  edp_queue_kind kind = {0};
  while ((opt = getopt_long(argc, argv, "m:q:t:w:n:" CLI_COMMON_SHORTOPTS, opts,
                            NULL)) != -1) {
    if (cli_common_opt(&app, opt, optarg, usage))
      continue;
    if (cli_queue_opt(&app, opt, optarg, &kind))
      continue;
    switch (opt) {
    case 'm':
      if (edp_amb_mode_parse(optarg, &ro.mode))
        cli_die(&app, CLI_USAGE,
                "--mode: expected carpool, ambulance, native or fifo, got "
                "'%s'",
                optarg);
      break;
    case 'q':
      ro.base = optarg;
      break;
    case 't':
      ro.threads = (int)cli_int(&app, "threads", optarg, 1, 64);
      break;
    case 'w':
      S.work_ms = cli_int(&app, "work-ms", optarg, 0, 3600000L);
      break;
    case 'n':
      S.count = cli_int(&app, "count", optarg, 1, 1000000000L);
      break;
    case 'i':
      idle = cli_int(&app, "idle-timeout", optarg, 1, 86400000L);
      break;
    case 'P':
      ro.standard_prefetch = (int)cli_int(&app, "prefetch", optarg, 1, 65535);
      break;
    case 'L':
      ro.check_priority_lane = 0;
      break;
    case 'R':
      ro.priority_prefetch =
          (int)cli_int(&app, "priority-prefetch", optarg, 1, 65535);
      break;
    default:
      fprintf(stderr, "Try 'edp-ambulance-receiver --help'.\n");
      return CLI_USAGE;
    }
  }
  cli_queue_done(&app, &kind);
  if (ro.mode == EDP_AMB_NATIVE && kind.type && !strcmp(kind.type, "quorum"))
    cli_die(&app, CLI_USAGE,
            "--mode native needs a classic queue: a quorum queue has no "
            "x-max-priority (use --mode ambulance or carpool: two lanes)");
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (!ro.base[0] || strlen(ro.base) > 200)
    cli_die(&app, CLI_USAGE, "--queue: 1 to 200 characters");
  edp_url u;
  char why[300];
  if (edp_url_parse(cli_url(&app), &u, why, sizeof(why)))
    cli_die(&app, CLI_USAGE, "%s", why);

  cli_await_brokers(&app);
  pthread_mutex_init(&S.mu, NULL);
  /* jansson seeds its hash function on first use; doing it here, before
   * any thread exists, keeps that out of the consumer threads. */
  json_object_seed(0);
  if (pipe(S.done_pipe))
    cli_die(&app, CLI_SOFTWARE, "pipe failed");
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = cli_url(&app);
  co.log = cli_log;
  co.log_ud = &app;
  co.on_event = cli_conn_event;
  co.on_event_ud = &app;
  ro.conn = &co;
  S.mode = ro.mode;
  S.base = ro.base;
  ro.handler = handler;
  ro.kind = kind;
  ro.on_event = on_event;
  edp_amb_receiver *r = NULL;
  char err[600];
  int rc = edp_amb_receiver_start(&ro, &r, err, sizeof(err));
  if (rc)
    cli_die(&app, cli_exit_code(rc), "cannot start consumers: %s", err);
  pthread_mutex_lock(&S.mu);
  S.last_ms = edp_now_ms();
  if (app.json)
    cli_emit(json_pack("{s:s,s:s,s:i}", "event", "ready", "mode",
                       edp_amb_mode_name(ro.mode), "threads", ro.threads + 1));
  pthread_mutex_unlock(&S.mu);
  fprintf(stderr,
          "edp-ambulance-receiver: %s mode, %d consumer threads, waiting for "
          "messages on %s.*\n",
          edp_amb_mode_name(ro.mode), ro.threads + 1, ro.base);

  metrics_serve ms = {0};
  metrics_serve_start_obj(&ms, &app, r, edp_amb_receiver_collect, amb_health,
                          r);
  /* The main thread only waits: for a signal, for the count, for a
   * consumer thread that failed, or for the idle deadline. */
  int code = CLI_OK;
  for (;;) {
    int timeout = 60000;
    if (idle > 0) {
      pthread_mutex_lock(&S.mu);
      int64_t left = S.active ? idle : S.last_ms + idle - edp_now_ms();
      pthread_mutex_unlock(&S.mu);
      if (left <= 0)
        break;
      timeout = (int)(left < 60000 ? left : 60000);
    }
    struct pollfd fds[3] = {{cli_stop_fd(), POLLIN, 0},
                            {S.done_pipe[0], POLLIN, 0},
                            {edp_amb_receiver_fd(r), POLLIN, 0}};
    int n = poll(fds, 3, timeout);
    if (cli_stopped() || (n > 0 && (fds[0].revents & POLLIN))) {
      code = CLI_INTERRUPTED;
      break;
    }
    if (n > 0 && (fds[1].revents & POLLIN))
      break;
    if (n > 0 && (fds[2].revents & POLLIN)) {
      rc = edp_amb_receiver_error(r);
      fprintf(stderr, "edp-ambulance-receiver: %s\n", edp_strerror(rc));
      code = cli_exit_code(rc);
      break;
    }
  }
  /* Stops the consumers: in-flight messages are finished and acked, the
   * prefetched ones go back to their queues when the channels close. */
  edp_amb_receiver_stop(r);
  /* After the stop: the hold serves the final counts. */
  metrics_serve_stop(&ms, &app);
  edp_amb_receiver_destroy(&r);
  pthread_mutex_lock(&S.mu);
  long np = S.by_kind[EDP_AMB_PRIORITY], ns = S.by_kind[EDP_AMB_STANDARD];
  pthread_mutex_unlock(&S.mu);
  if (app.json)
    cli_emit(json_pack("{s:s,s:I,s:I}", "event", "summary", "priority",
                       (json_int_t)np, "standard", (json_int_t)ns));
  fprintf(stderr,
          "edp-ambulance-receiver: processed %ld priority and %ld standard "
          "message(s)\n",
          np, ns);
  close(S.done_pipe[0]);
  close(S.done_pipe[1]);
  return code;
}
