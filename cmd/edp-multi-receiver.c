/*
 * edp-multi-receiver - drains the same queue on every --url broker with
 * the multi-broker pattern: one thread and connection per broker feeding
 * one handler, a manual ack after each message is handled. Keeps draining
 * the live brokers while one is down, and resumes it when it is back.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

static void usage(void) {
  printf(
      "usage: edp-multi-receiver [options]\n"
      "Consumes the queue on every --url broker and prints each message.\n"
      "  -u, --url URL          a broker; repeat once per broker\n"
      "      --url-file PATH    the brokers' URLs, one per line (a secret\n"
      "                         file; default: the file $EDP_URL_FILE names)\n"
      "  -q, --queue NAME       queue (default edp.multi)\n"
      "  -n, --count N          exit 0 after N messages (default: run until\n"
      "                         SIGINT/SIGTERM, exit 130)\n"
      "      --idle-exit-ms MS  exit 0 after MS without a message (0: never)\n"
      "  -p, --prefetch N       unacked messages per broker (default "
      "200)\n" CLI_QUEUE_HELP
      "      --quorum           the same as --queue-type quorum\n"
      "Events (--json): processed (broker, message_id, key, kseq,\n"
      "redelivered), broker_up, broker_down, consumer_cancelled (the queue\n"
      "was deleted; declared again, then broker_up), "
      "summary.\n" CLI_METRICS_HELP CLI_COMMON_HELP);
}

typedef struct run {
  long count;
  uint64_t processed;
  int done_pipe[2];
  int64_t last_msg_ms;
} run;

static int handler(void *ud, int broker, const edp_delivery *d) {
  run *r = ud; /* the consumer calls us under its handler mutex */
  int64_t kseq = 0;
  edp_delivery_header_int(d, "x-edp-kseq", &kseq);
  const char *key = edp_delivery_header_str(d, "x-edp-key");
  if (app.json) {
    json_t *o =
        json_pack("{s:s,s:i,s:I,s:b}", "event", "processed", "broker", broker,
                  "kseq", (json_int_t)kseq, "redelivered", d->redelivered);
    cli_json_set(o, "message_id", d->message_id);
    cli_json_set(o, "key", key);
    cli_json_trace(o, NULL, d->routing_key);
    cli_emit(o);
  } else {
    char text[801];
    cli_say(&app, "received from broker %d: %s\n", broker,
            cli_text(d->body, d->body_len > 200 ? 200 : d->body_len, text,
                     sizeof(text)));
  }
  r->processed++;
  __atomic_store_n(&r->last_msg_ms, edp_now_ms(), __ATOMIC_RELAXED);
  if (r->count > 0 && r->processed == (uint64_t)r->count) {
    ssize_t w;
    do
      w = write(r->done_pipe[1], "x", 1);
    while (w < 0 && errno == EINTR);
  }
  return 0;
}

static void on_event(void *ud, int broker, int ev, size_t count) {
  (void)ud;
  (void)count;
  if (app.json)
    cli_emit(json_pack("{s:s,s:i,s:I}", "event",
                       ev == EDP_MULTI_UP          ? "broker_up"
                       : ev == EDP_MULTI_CANCELLED ? "consumer_cancelled"
                                                   : "broker_down",
                       "broker", broker, "t_ms", (json_int_t)edp_wall_ms()));
}

/* The broker connections' events as --json lines, but for those the
 * multi-broker events say per broker already (up, down, cancelled). */
static void multi_conn_event(void *ud, const edp_conn_event *ev) {
  if (ev->type == EDP_CONN_BLOCKED || ev->type == EDP_CONN_UNBLOCKED ||
      ev->type == EDP_CONN_CHANNEL_RESTORED)
    cli_conn_event(ud, ev);
}

/* /healthz: 503 while no broker is consumed; the reason says how many
 * are. */
typedef struct multi_health_arg {
  const edp_multi_consumer *mc;
  size_t n;
} multi_health_arg;

static int multi_health(void *ud, char *reason, size_t len) {
  const multi_health_arg *a = ud;
  size_t live = 0;
  for (size_t i = 0; i < a->n; i++) {
    edp_multi_consumer_stats st;
    if (!edp_multi_consumer_stats_get(a->mc, i, &st))
      live += st.live != 0;
  }
  snprintf(reason, len, "%s (%zu of %zu brokers consumed)",
           live ? "ok" : "no broker consumed", live, a->n);
  return live ? 200 : 503;
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-multi-receiver");
  static const struct option opts[] = {
      {"queue", required_argument, NULL, 'q'},
      {"count", required_argument, NULL, 'n'},
      {"idle-exit-ms", required_argument, NULL, 'i'},
      {"prefetch", required_argument, NULL, 'p'},
      {"quorum", no_argument, NULL, 'Q'},
      CLI_QUEUE_LONGOPTS,
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *queue = "edp.multi";
  long count = 0, idle_exit = 0, prefetch = 200;
  int opt;
  edp_queue_kind kind = {0};
  while ((opt = getopt_long(argc, argv, "q:n:p:" CLI_COMMON_SHORTOPTS, opts,
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
      count = cli_int(&app, "count", optarg, 1, 1000000000L);
      break;
    case 'i':
      idle_exit = cli_int(&app, "idle-exit-ms", optarg, 0, 86400000L);
      break;
    case 'p':
      prefetch = cli_int(&app, "prefetch", optarg, 0, 65535);
      break;
    case 'Q':
      kind.type = "quorum";
      break;
    default:
      fprintf(stderr, "Try 'edp-multi-receiver --help'.\n");
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
  run r = {.count = count, .last_msg_ms = edp_now_ms()};
  if (pipe(r.done_pipe))
    cli_die(&app, CLI_SOFTWARE, "pipe: %s", strerror(errno));
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  char dlq[256];
  snprintf(dlq, sizeof(dlq), "%s.dlq", queue);
  if (edp_queue_opts_kind(&qo, &kind, dlq))
    cli_die(&app, CLI_USAGE, "--queue-type, --delivery-limit: invalid");
  edp_multi_consumer_opts o;
  edp_multi_consumer_opts_init(&o);
  o.urls = urls;
  o.n_urls = n_urls;
  o.queue = queue;
  o.queue_opts = &qo;
  o.prefetch = (int)prefetch;
  o.client_name = "edp-multi-receiver";
  o.handler = handler;
  o.on_event = on_event;
  o.ud = &r;
  o.log = cli_log;
  o.log_ud = &app;
  o.on_conn_event = multi_conn_event;
  o.on_conn_event_ud = &app;
  edp_multi_consumer *mc = NULL;
  char why[700] = "";
  int rc = edp_multi_consumer_new(&o, &mc, why, sizeof(why));
  if (rc)
    cli_die(&app, rc == EDP_EURL ? CLI_USAGE : cli_exit_code(rc), "%s",
            why[0] ? why : edp_strerror(rc));

  multi_health_arg ha = {mc, n_urls};
  metrics_serve ms = {0};
  metrics_serve_start_obj(&ms, &app, mc, edp_multi_consumer_collect,
                          multi_health, &ha);
  /* The main thread only waits: for the count, idleness, a signal, or
   * every broker thread having failed for good. */
  int code = CLI_OK;
  for (;;) {
    struct pollfd fds[2] = {{cli_stop_fd(), POLLIN, 0},
                            {r.done_pipe[0], POLLIN, 0}};
    int n = poll(fds, 2, 1000);
    if (n < 0 && errno != EINTR)
      cli_die(&app, CLI_SOFTWARE, "poll: %s", strerror(errno));
    if (cli_stopped()) {
      code = CLI_INTERRUPTED;
      break;
    }
    if (n > 0 && (fds[1].revents & POLLIN))
      break;
    int failed = 0, err = 0;
    for (size_t i = 0; i < n_urls; i++) {
      int e = edp_multi_consumer_error(mc, i);
      if (e) {
        failed++;
        err = e;
      }
    }
    if (failed == (int)n_urls) {
      metrics_serve_stop(&ms, &app);
      edp_multi_consumer_destroy(&mc);
      cli_die(&app, cli_exit_code(err), "every broker failed: %s",
              edp_strerror(err));
    }
    if (idle_exit > 0) {
      /* last_msg_ms is written under the handler mutex; a torn read only
       * delays the exit by one round. */
      int64_t last = __atomic_load_n(&r.last_msg_ms, __ATOMIC_RELAXED);
      if (edp_now_ms() - last > idle_exit)
        break;
    }
  }
  edp_multi_consumer_stop(mc);
  /* After the stop: the hold serves the final counts. */
  metrics_serve_stop(&ms, &app);
  uint64_t total = 0;
  json_t *per = json_array();
  for (size_t i = 0; i < n_urls; i++) {
    edp_multi_consumer_stats st;
    edp_multi_consumer_stats_get(mc, i, &st);
    total += st.processed;
    json_array_append_new(
        per, json_pack("{s:I,s:I,s:I,s:I,s:i}", "processed",
                       (json_int_t)st.processed, "redelivered",
                       (json_int_t)st.redelivered, "downs",
                       (json_int_t)st.downs, "cancels", (json_int_t)st.cancels,
                       "error", edp_multi_consumer_error(mc, i)));
    fprintf(stderr, "edp-multi-receiver: broker %zu: %llu processed\n", i,
            (unsigned long long)st.processed);
  }
  if (app.json)
    cli_emit(json_pack("{s:s,s:I,s:o}", "event", "summary", "processed",
                       (json_int_t)total, "brokers", per));
  else
    json_decref(per);
  edp_multi_consumer_destroy(&mc);
  close(r.done_pipe[0]);
  close(r.done_pipe[1]);
  if (code == CLI_INTERRUPTED)
    fprintf(stderr, "edp-multi-receiver: interrupted after %llu message(s)\n",
            (unsigned long long)total);
  return code;
}
