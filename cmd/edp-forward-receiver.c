/*
 * edp-forward-receiver - consumes with the event forwarding pattern: a
 * message is acked only after it was processed ('Database commit.'); a
 * failure ('Error processing message.') requeues it with a retry count,
 * and after --max-retries it goes to the dead-letter queue <queue>.dlq.
 */
#define _GNU_SOURCE /* memmem */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

static void usage(void) {
  printf("usage: edp-forward-receiver [options]\n"
         "Processes messages of a durable queue; acks after processing.\n"
         "  -q, --queue NAME       queue (default edp.forward)\n"
         "  -n, --count N          exit 0 after N processed messages\n"
         "      --idle-timeout MS  exit 0 when no message came for MS ms\n"
         "                         (default: wait forever)\n"
         "      --work-ms N        simulated processing time (default 0)\n"
         "      --fail-every N     every Nth attempt fails (default 0: "
         "never)\n"
         "      --fail-match TEXT  messages whose body contains TEXT always\n"
         "                         fail (a poison message)\n"
         "      --crash-match TEXT the process dies (exit 70, no ack, no\n"
         "                         retry written) on a message whose body\n"
         "                         contains TEXT: a crash, for the\n"
         "                         delivery limit of a quorum queue\n"
         "      --max-retries N    requeues before the .dlq (default 3)\n"
         "      --prefetch N       unacked messages in flight (default 32)\n"
         "      --dedup N          drop message_ids seen among the last N\n"
         "                         (default 0: off)\n"
         "      --coalesce-acks    one ack (multiple) for each batch of\n"
         "                         handled messages, sent when the last\n"
         "                         of them was handled\n"
         "      --quiet            no line per message\n" CLI_QUEUE_HELP
             CLI_SINGLE_ACTIVE_HELP CLI_METRICS_HELP CLI_COMMON_HELP);
}

typedef struct receiver_run {
  long work_ms, fail_every, attempts;
  const char *fail_match, *crash_match;
  int quiet;
} receiver_run;

static int handler(void *ud, const edp_delivery *d, char *reason,
                   size_t reason_len) {
  receiver_run *r = ud;
  r->attempts++;
  if (r->quiet) {
    /* A load test's receiver: the counts at the end say enough. */
  } else if (app.json) {
    json_t *o = json_pack("{s:s,s:b}", "event", "received", "redelivered",
                          d->redelivered);
    cli_json_set(o, "message_id", d->message_id);
    /* What a dead-letter queue's reader wants to know. */
    cli_json_set(o, "dead_reason", edp_fwd_dead_reason(d));
    cli_json_trace(o, NULL, d->routing_key);
    cli_emit(o);
  } else {
    char text[801];
    printf("Processing message: %s%s\n",
           cli_text(d->body, d->body_len > 200 ? 200 : d->body_len, text,
                    sizeof(text)),
           d->redelivered ? " (redelivered)" : "");
  }
  if (!r->quiet)
    fflush(stdout);
  /* The work is bounded by --work-ms and is finished even after SIGINT:
   * rule 5 says finish or requeue in-flight work, and finishing is what
   * a database commit would do. */
  if (r->work_ms > 0)
    edp_sleep_ms((int)r->work_ms, -1);
  if (r->crash_match &&
      memmem(d->body, d->body_len, r->crash_match, strlen(r->crash_match))) {
    fprintf(stderr, "edp-forward-receiver: simulated crash (--crash-match)\n");
    _exit(CLI_SOFTWARE);
  }
  if (r->fail_every > 0 && r->attempts % r->fail_every == 0) {
    snprintf(reason, reason_len, "simulated failure (--fail-every %ld)",
             r->fail_every);
    cli_say(&app, "Error processing message.\n");
    return -1;
  }
  if (r->fail_match &&
      memmem(d->body, d->body_len, r->fail_match, strlen(r->fail_match))) {
    snprintf(reason, reason_len, "simulated failure: body contains '%s'",
             r->fail_match);
    cli_say(&app, "Error processing message.\n");
    return -1;
  }
  if (!r->quiet)
    cli_say(&app, "Database commit.\n");
  return 0;
}

static void on_event(void *ud, int ev, const edp_delivery *d,
                     const char *reason) {
  const receiver_run *run = ud;
  if (run->quiet && ev == EDP_FWD_PROCESSED)
    return;
  static const char *names[] = {"processed", "retried", "dead_lettered",
                                "duplicate"};
  if (app.json) {
    json_t *o = json_pack("{s:s,s:b}", "event", names[ev], "redelivered",
                          d->redelivered);
    cli_json_set(o, "message_id", d->message_id);
    /* Quorum queues count the deliveries that ended unsettled. */
    if (edp_delivery_header(d, "x-delivery-count"))
      json_object_set_new(
          o, "delivery_count",
          json_integer((json_int_t)edp_fwd_delivery_count(d, INT64_MAX)));
    if (reason && reason[0])
      cli_json_set(o, "reason", reason);
    cli_json_trace(o, NULL, d->routing_key);
    cli_emit(o);
  } else if (ev == EDP_FWD_DEAD_LETTERED || ev == EDP_FWD_DUPLICATE) {
    char id[1025];
    const char *mid = d->message_id ? d->message_id : "?";
    printf("%s: %s\n",
           ev == EDP_FWD_DUPLICATE ? "Duplicate dropped"
                                   : "Moved to dead-letter queue",
           cli_text(mid, strlen(mid), id, sizeof(id)));
  }
  fflush(stdout);
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-forward-receiver");
  /* Big bodies: glibc maps every block over its (moving) threshold afresh
   * and trims the heap as they are freed, so each message of 1 MiB faulted
   * in all of its pages again (32,000 minor faults per 128 MiB, 2.8 x raw
   * rabbitmq-c's CPU, which holds one body at a time). Blocks up to 32 MiB
   * come from the heap and stay there; the window or the prefetch bounds
   * how many there are. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  static const struct option opts[] = {
      {"queue", required_argument, NULL, 'q'},
      {"count", required_argument, NULL, 'n'},
      {"idle-timeout", required_argument, NULL, 'i'},
      {"work-ms", required_argument, NULL, 'W'},
      {"fail-every", required_argument, NULL, 'F'},
      {"max-retries", required_argument, NULL, 'R'},
      {"fail-match", required_argument, NULL, 'X'},
      {"crash-match", required_argument, NULL, 'K'},
      {"prefetch", required_argument, NULL, 'p'},
      {"dedup", required_argument, NULL, 'D'},
      {"quiet", no_argument, NULL, 'Q'},
      {"coalesce-acks", no_argument, NULL, 'C'},
      CLI_QUEUE_LONGOPTS,
      CLI_SINGLE_ACTIVE_LONGOPT,
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *queue = "edp.forward";
  long count = -1, idle = -1;
  receiver_run run = {0};
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
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
      queue = optarg;
      break;
    case 'n':
      count = cli_int(&app, "count", optarg, 0, 1000000000L);
      break;
    case 'i':
      idle = cli_int(&app, "idle-timeout", optarg, 0, 86400000L);
      break;
    case 'W':
      run.work_ms = cli_int(&app, "work-ms", optarg, 0, 3600000L);
      break;
    case 'F':
      run.fail_every = cli_int(&app, "fail-every", optarg, 0, 1000000000L);
      break;
    case 'X':
      if (!optarg[0])
        cli_die(&app, CLI_USAGE, "--fail-match: empty text");
      run.fail_match = optarg;
      break;
    case 'K':
      if (!optarg[0])
        cli_die(&app, CLI_USAGE, "--crash-match: empty text");
      run.crash_match = optarg;
      break;
    case 'R':
      ro.max_retries = (int)cli_int(&app, "max-retries", optarg, 0, 1000);
      break;
    case 'p':
      ro.prefetch = (int)cli_int(&app, "prefetch", optarg, 0, 65535);
      break;
    case 'Q':
      run.quiet = 1;
      break;
    case 'C':
      ro.coalesce_acks = 1;
      break;
    case 'D':
      ro.dedup_window = (size_t)cli_int(&app, "dedup", optarg, 0, 10000000L);
      break;
    default:
      fprintf(stderr, "Try 'edp-forward-receiver --help'.\n");
      return CLI_USAGE;
    }
  }
  cli_queue_done(&app, &kind);
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (!queue[0] || strlen(queue) > 200)
    cli_die(&app, CLI_USAGE, "--queue: 1 to 200 characters");

  edp_conn *conn = cli_connect(&app, "edp-forward-receiver");
  ro.queue = queue;
  ro.handler = handler;
  ro.kind = kind;
  ro.on_event = on_event;
  ro.ud = &run;
  edp_fwd_receiver *r = NULL;
  int rc = edp_fwd_receiver_new(conn, &ro, &r);
  if (rc)
    cli_die_err(&app, conn, rc, "cannot consume");
  metrics_serve ms = {0};
  metrics_serve_start(&ms, &app, conn, 1, r, edp_fwd_receiver_collect);
  fprintf(stderr, "edp-forward-receiver: waiting for messages on %s\n", queue);
  edp_fwd_receiver_stats st = {0};
  int code = CLI_OK;
  for (;;) {
    edp_fwd_receiver_stats_get(r, &st);
    if (count >= 0 && (long)st.processed >= count)
      break;
    if (cli_stopped()) {
      code = CLI_INTERRUPTED;
      break;
    }
    /* A batch never takes more than --count leaves to do. */
    size_t max = count >= 0 ? (size_t)(count - (long)st.processed) : 256;
    rc = edp_fwd_receive_batch(r, (int)idle, max);
    if (rc == EDP_ETIMEOUT)
      break;
    if (rc == EDP_ESTOPPED) {
      code = CLI_INTERRUPTED;
      break;
    }
    if (rc) {
      fprintf(stderr, "edp-forward-receiver: %s\n", edp_strerror(rc));
      code = cli_exit_code(rc);
      break;
    }
  }
  edp_fwd_receiver_stats_get(r, &st);
  fprintf(stderr,
          "edp-forward-receiver: processed %llu, retried %llu, "
          "dead-lettered %llu, duplicates %llu, redelivered %llu\n",
          (unsigned long long)st.processed, (unsigned long long)st.retried,
          (unsigned long long)st.dead_lettered,
          (unsigned long long)st.duplicates,
          (unsigned long long)st.redelivered);
  metrics_serve_stop(&ms, &app);
  /* Closing the channel gives every prefetched, unacked message back to
   * the queue. */
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&conn);
  return code;
}
