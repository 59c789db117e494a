/*
 * edp-trade-dispatcher - drains trades with the thread delegate pattern:
 * one dispatcher thread owns the connection and places each account on
 * one of --workers threads (the allocation map); an account's trades are
 * processed in order, different accounts in parallel, and each trade is
 * acked only after its worker finished it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;
static const char *drained_queue; /* for the role events */

static void usage(void) {
  printf(
      "usage: edp-trade-dispatcher [options]\n"
      "Processes trades of a queue on N worker threads, keeping each\n"
      "account's trades in order; acks after processing.\n"
      "  -e, --exchange NAME    topic exchange (default edp.trades)\n"
      "  -q, --queue NAME       queue (default edp.trades)\n"
      "      --shard K          drain shard queue QUEUE.K of the consistent-\n"
      "                         hash exchange EXCHANGE.hash instead\n"
      "  -w, --workers N        worker threads (default 5)\n"
      "      --work-ms N        simulated processing time per trade (0)\n"
      "      --work-jitter-ms J add a random 0..J ms to each (default 0)\n"
      "      --prefetch N       unacked trades in flight (default 16 x "
      "workers)\n"
      "      --context SRC      routing-key (default: its last segment),\n"
      "                         header:NAME or json:FIELD\n"
      "      --max-retries N    in-place retries before the .dlq (default 3)\n"
      "      --retry-delay-ms N pause before a retry (default 100)\n"
      "      --fail-every N     the first attempt of each trade whose seq is\n"
      "                         a multiple of N fails (a transient error;\n"
      "                         a trade without a seq header never does)\n"
      "      --poison-seq S     every attempt of trades with seq S fails\n"
      "      --display          print the allocation map as it changes\n"
      "  -n, --count N          exit 0 after N trades were settled\n"
      "      --idle-timeout MS  exit 0 when idle (nothing in flight, no\n"
      "                         trade) for MS ms (default: run until stopped)\n"
      "JSON events: processed, dead_lettered, requeued (with account, seq,\n"
      "worker, message_id), map (with --display) and a final "
      "summary.\n" CLI_QUEUE_HELP CLI_METRICS_HELP CLI_COMMON_HELP);
}

typedef struct disp {
  long work_ms, jitter_ms, fail_every, poison_seq;
  int display;
  unsigned seeds[1024];
} disp;

static int64_t seq_of(const edp_delivery *d) {
  int64_t seq = 0;
  edp_delivery_header_int(d, "seq", &seq);
  return seq;
}

static int handler(void *ud, int worker, const char *context,
                   const edp_delivery *d, int attempt, char *reason,
                   size_t reason_len) {
  disp *p = ud;
  int64_t seq = seq_of(d);
  long ms = p->work_ms;
  if (p->jitter_ms > 0)
    ms += (long)(rand_r(&p->seeds[worker]) % (unsigned)(p->jitter_ms + 1));
  /* Simulated I/O. It is bounded and always finished, even after SIGINT:
   * rule 5 says finish or requeue in-flight work. */
  if (ms > 0)
    edp_sleep_ms((int)ms, -1);
  if (p->poison_seq > 0 && seq == p->poison_seq) {
    snprintf(reason, reason_len, "simulated poison trade (--poison-seq %ld)",
             p->poison_seq);
    return -1;
  }
  /* seq 0: no usable seq header (a foreign producer's trade), which is no
   * multiple of anything here. */
  if (p->fail_every > 0 && attempt == 1 && seq > 0 &&
      seq % p->fail_every == 0) {
    snprintf(reason, reason_len, "simulated transient error (--fail-every)");
    return -1;
  }
  (void)context;
  char text[801];
  cli_say(&app, "Thread %d: Placed (%lld) %s\n", worker + 1, (long long)seq,
          cli_text(d->body, d->body_len > 200 ? 200 : d->body_len, text,
                   sizeof(text)));
  return 0;
}

/* Which dispatcher of a single-active queue works: a standby says so at
 * the start, and again when the broker hands it the queue (its first
 * delivery). */
static void say_role(const char *queue, int standby, int takeover) {
  if (app.json) {
    json_t *o = json_pack("{s:s,s:b}", "event", standby ? "standby" : "active",
                          "takeover", takeover);
    cli_json_set(o, "queue", queue);
    json_object_set_new(o, "at_us", json_integer(edp_now_us()));
    cli_emit(o);
  }
  fprintf(stderr, "edp-trade-dispatcher: %s on %s\n",
          standby    ? "standby: another dispatcher is active"
          : takeover ? "active: took over"
                     : "active",
          queue);
}

static void on_event(void *ud, const edp_td_event *ev) {
  (void)ud;
  static const char *names[] = {"processed", "dead_lettered", "requeued"};
  const edp_delivery *d = ev->d;
  if (ev->type == EDP_TD_ACTIVE) {
    say_role(drained_queue, 0, 1);
    return;
  }
  if (app.json) {
    json_t *o = json_pack(
        "{s:s,s:I,s:i,s:i,s:b,s:I,s:I}", "event", names[ev->type], "seq",
        (json_int_t)seq_of(d), "worker", ev->worker + 1, "attempts",
        ev->attempts, "redelivered", d->redelivered, "start_us",
        (json_int_t)ev->started_us, "end_us", (json_int_t)ev->finished_us);
    cli_json_set(o, "account", ev->context);
    cli_json_set(o, "message_id", d->message_id);
    /* When the dispatcher settles it (just before the ack, after the
     * dead-letter copy), on the same clock as start_us/end_us. */
    json_object_set_new(o, "settled_us", json_integer(edp_now_us()));
    if (ev->reason[0])
      cli_json_set(o, "reason", ev->reason);
    if (edp_trace_current()) {
      cli_json_trace(o, NULL, NULL);
      cli_json_set(o, "messaging.rabbitmq.destination.routing_key",
                   d->routing_key);
    }
    cli_emit(o);
  } else if (ev->type == EDP_TD_DEAD_LETTERED) {
    char ctx[1025], why[1025];
    printf("Moved to dead-letter queue: (%lld) %s: %s\n", (long long)seq_of(d),
           cli_text(ev->context, strlen(ev->context), ctx, sizeof(ctx)),
           cli_text(ev->reason, strlen(ev->reason), why, sizeof(why)));
    fflush(stdout);
  }
}

static void on_map(void *ud, int worker, const char *context, int in_flight) {
  disp *p = ud;
  if (!p->display)
    return;
  if (app.json) {
    json_t *o = json_pack("{s:s,s:i,s:i}", "event", "map", "worker", worker + 1,
                          "in_flight", in_flight);
    cli_json_set(o, "account", context);
    cli_emit(o);
  } else {
    char ctx[1025];
    cli_say(&app, "Thread-%d,%s,%d\n", worker + 1,
            cli_text(context, strlen(context), ctx, sizeof(ctx)), in_flight);
  }
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-trade-dispatcher");
  static const struct option opts[] = {
      {"exchange", required_argument, NULL, 'e'},
      {"queue", required_argument, NULL, 'q'},
      {"shard", required_argument, NULL, 'S'},
      {"workers", required_argument, NULL, 'w'},
      {"work-ms", required_argument, NULL, 'W'},
      {"work-jitter-ms", required_argument, NULL, 'J'},
      {"prefetch", required_argument, NULL, 'p'},
      {"context", required_argument, NULL, 'C'},
      {"max-retries", required_argument, NULL, 'R'},
      {"retry-delay-ms", required_argument, NULL, 'D'},
      {"fail-every", required_argument, NULL, 'F'},
      {"poison-seq", required_argument, NULL, 'P'},
      {"display", no_argument, NULL, 'd'},
      {"count", required_argument, NULL, 'n'},
      {"idle-timeout", required_argument, NULL, 'i'},
      CLI_QUEUE_LONGOPTS,
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *exchange = "edp.trades", *queue = "edp.trades";
  long shard = 0, count = -1, idle = -1;
  disp p = {0};
  edp_td_opts o;
  edp_td_opts_init(&o);
  int opt;
  edp_queue_kind kind = {0};
  while ((opt = getopt_long(argc, argv, "e:q:w:n:" CLI_COMMON_SHORTOPTS, opts,
                            NULL)) != -1) {
    if (cli_common_opt(&app, opt, optarg, usage))
      continue;
    if (cli_queue_opt(&app, opt, optarg, &kind))
      continue;
    switch (opt) {
    case 'e':
      exchange = optarg;
      break;
    case 'q':
      queue = optarg;
      break;
    case 'S':
      shard = cli_int(&app, "shard", optarg, 1, 1000);
      break;
    case 'w':
      o.workers = (int)cli_int(&app, "workers", optarg, 1, 1024);
      break;
    case 'W':
      p.work_ms = cli_int(&app, "work-ms", optarg, 0, 3600000L);
      break;
    case 'J':
      p.jitter_ms = cli_int(&app, "work-jitter-ms", optarg, 0, 3600000L);
      break;
    case 'p':
      o.prefetch = (int)cli_int(&app, "prefetch", optarg, 1, 65535);
      break;
    case 'C':
      if (!strcmp(optarg, "routing-key")) {
        o.context_from = EDP_TD_CTX_ROUTING_KEY;
      } else if (!strncmp(optarg, "header:", 7) && optarg[7]) {
        o.context_from = EDP_TD_CTX_HEADER;
        o.context_key = optarg + 7;
      } else if (!strncmp(optarg, "json:", 5) && optarg[5]) {
        o.context_from = EDP_TD_CTX_JSON;
        o.context_key = optarg + 5;
      } else {
        cli_die(&app, CLI_USAGE,
                "--context: routing-key, header:NAME or json:FIELD, got '%s'",
                optarg);
      }
      break;
    case 'R':
      o.max_retries = (int)cli_int(&app, "max-retries", optarg, 0, 1000);
      break;
    case 'D':
      o.retry_delay_ms = (int)cli_int(&app, "retry-delay-ms", optarg, 0, 60000);
      break;
    case 'F':
      p.fail_every = cli_int(&app, "fail-every", optarg, 0, 1000000000L);
      break;
    case 'P':
      p.poison_seq = cli_int(&app, "poison-seq", optarg, 0, 1000000000L);
      break;
    case 'd':
      p.display = 1;
      break;
    case 'n':
      count = cli_int(&app, "count", optarg, 0, 1000000000L);
      break;
    case 'i':
      idle = cli_int(&app, "idle-timeout", optarg, 0, 86400000L);
      break;
    default:
      fprintf(stderr, "Try 'edp-trade-dispatcher --help'.\n");
      return CLI_USAGE;
    }
  }
  cli_queue_done(&app, &kind);
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (!exchange[0] || strlen(exchange) > 180 || !queue[0] ||
      strlen(queue) > 180)
    cli_die(&app, CLI_USAGE, "--exchange and --queue: 1 to 180 characters");
  unsigned base = (unsigned)time(NULL) ^ (unsigned)getpid();
  for (int i = 0; i < 1024; i++)
    p.seeds[i] = base + (unsigned)i * 7919u;

  edp_conn *conn = cli_connect(&app, "edp-trade-dispatcher");
  char hash_exchange[200], shard_queue[200];
  int rc;
  if (shard) {
    snprintf(hash_exchange, sizeof(hash_exchange), "%s.hash", exchange);
    snprintf(shard_queue, sizeof(shard_queue), "%s.%ld", queue, shard);
    rc =
        edp_td_declare_shards(conn, hash_exchange, queue, 0, (int)shard, &kind);
    queue = shard_queue;
  } else {
    rc = edp_td_declare(conn, exchange, queue, "trade.eq.*", &kind);
  }
  if (rc)
    cli_die_err(&app, conn, rc, "cannot set up the exchange and queue");
  o.queue = queue;
  o.kind = kind;
  o.handler = handler;
  o.on_event = on_event;
  o.on_map = on_map;
  o.ud = &p;
  edp_td *td = NULL;
  if ((rc = edp_td_new(conn, &o, &td)))
    cli_die_err(&app, conn, rc, "cannot start the dispatcher");
  metrics_serve ms = {0};
  metrics_serve_start(&ms, &app, conn, 1, td, edp_td_collect);
  fprintf(stderr, "edp-trade-dispatcher: %d workers waiting for trades on %s\n",
          o.workers, queue);
  drained_queue = queue;
  edp_td_stats st;
  edp_td_stats_get(td, &st);
  say_role(queue, st.standby, 0);

  int code = CLI_OK;
  int64_t started = edp_now_ms();
  for (;;) {
    edp_td_stats_get(td, &st);
    if (count >= 0 && (long)(st.processed + st.dead_lettered) >= count)
      break;
    int slice = 1000;
    if (idle >= 0 && st.in_flight == 0) {
      int64_t last =
          st.last_activity_ms > started ? st.last_activity_ms : started;
      int64_t left = last + idle - edp_now_ms();
      if (left <= 0)
        break;
      if (left < slice)
        slice = (int)left;
    }
    rc = edp_td_run(td, slice);
    if (rc == EDP_ESTOPPED || cli_stopped()) {
      code = CLI_INTERRUPTED;
      break;
    }
    if (rc) {
      fprintf(stderr, "edp-trade-dispatcher: %s\n", edp_strerror(rc));
      code = cli_exit_code(rc);
      break;
    }
  }
  /* The map is read before stopping: when idle it must already be empty. */
  edp_td_stats_get(td, &st);
  size_t contexts_idle = st.contexts, in_flight_idle = st.in_flight;
  edp_td_stop(td, 30000);
  edp_td_stats_get(td, &st);
  if (app.json)
    cli_emit(json_pack(
        "{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "event", "summary",
        "processed", (json_int_t)st.processed, "dead_lettered",
        (json_int_t)st.dead_lettered, "requeued", (json_int_t)st.requeued,
        "retries", (json_int_t)st.retries, "redelivered",
        (json_int_t)st.redelivered, "reconnects", (json_int_t)st.reconnects,
        "contexts", (json_int_t)contexts_idle, "in_flight",
        (json_int_t)in_flight_idle));
  fprintf(stderr,
          "edp-trade-dispatcher: processed %llu, dead-lettered %llu, "
          "requeued %llu, retries %llu, redelivered %llu, reconnects %llu\n",
          (unsigned long long)st.processed,
          (unsigned long long)st.dead_lettered, (unsigned long long)st.requeued,
          (unsigned long long)st.retries, (unsigned long long)st.redelivered,
          (unsigned long long)st.reconnects);
  metrics_serve_stop(&ms, &app);
  edp_td_destroy(&td);
  /* Closing the channel returns every unacked trade to the queue. */
  edp_conn_destroy(&conn);
  return code;
}
