/*
 * edp-forward-sender - publishes messages with the event forwarding
 * pattern: persistent, to a durable queue, with pipelined publisher
 * confirms. A message counts as sent only once the broker confirmed it.
 */
#define _GNU_SOURCE /* MADV_HUGEPAGE */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

static void usage(void) {
  printf(
      "usage: edp-forward-sender [options] [MESSAGE...]\n"
      "Sends each MESSAGE, or --count generated ones, or else each line of\n"
      "stdin, to a durable queue and waits for the broker's confirms.\n"
      "  -q, --queue NAME       queue (default edp.forward)\n"
      "  -n, --count N          send N generated messages 'order N'\n"
      "      --persistent       persistent messages (default)\n"
      "      --transient        transient messages (lost if the broker "
      "restarts)\n"
      "  -w, --confirm-window N messages in flight (default 1024; 0 = no\n"
      "                         confirms, fire-and-forget, unsafe)\n"
      "      --rate R           at most R messages per second (default 0:\n"
      "                         as fast as confirms allow)\n"
      "      --id-prefix P      message_id is P-SEQ (default: a per-run id)\n"
      "      --body-size BYTES  --count messages are 'order N' padded with\n"
      "                         dots to BYTES (default 0: no padding)\n"
      "      --quiet            no 'sending:' line per message\n"
      "      --max-body BYTES   refuse bigger messages before sending them,\n"
      "                         exit 65 (default 16777216: RabbitMQ 4.x's\n"
      "                         max_message_size, within 3.x's 128 MiB;\n"
      "                         0 = let the broker decide)\n" CLI_QUEUE_HELP
          CLI_TRACE_HELP CLI_METRICS_HELP CLI_COMMON_HELP);
}

static uint64_t seq_of(const char *message_id) {
  const char *dash = message_id ? strrchr(message_id, '-') : NULL;
  return dash ? strtoull(dash + 1, NULL, 10) : 0;
}

static void on_confirm(void *ud, const edp_confirm *cf) {
  (void)ud;
  if (!app.json) {
    if (cf->status != EDP_CONFIRM_ACK)
      fprintf(stderr, "edp-forward-sender: message %s %s %s\n",
              cf->message_id ? cf->message_id : "?",
              cf->status == EDP_CONFIRM_NACK ? "refused by the broker"
                                             : "returned:",
              cf->status == EDP_CONFIRM_NACK ? "" : cf->reply_text);
    return;
  }
  const char *ev = cf->status == EDP_CONFIRM_ACK    ? "confirmed"
                   : cf->status == EDP_CONFIRM_NACK ? "nacked"
                                                    : "returned";
  json_t *o = json_pack("{s:s,s:I}", "event", ev, "seq",
                        (json_int_t)seq_of(cf->message_id));
  cli_json_set(o, "message_id", cf->message_id);
  edp_trace t;
  if (cf->msg && !cli_msg_trace(&app, cf->msg, &t))
    cli_json_trace(o, &t, cf->msg->routing_key);
  if (cf->status == EDP_CONFIRM_RETURNED)
    cli_json_set(o, "reason", cf->reply_text);
  cli_emit(o);
}

typedef struct sender_run {
  edp_conn *conn;
  edp_fwd_sender *s;
  char prefix[64];
  uint64_t seq;
  size_t max_body;
  long rate;
  int quiet;
  int64_t start_us;
} sender_run;

/* Writes v in decimal with a NUL at buf (21 bytes at most); returns the
 * number of digits. */
static size_t fmt_u64(char *buf, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do
    tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10));
  for (size_t i = 0; i < n; i++)
    buf[i] = tmp[n - 1 - i];
  buf[n] = '\0';
  return n;
}

/* Generated bodies of LEND_MIN bytes or more are lent to the sender
 * (edp_fwd_send_lent) instead of copied into its copy for republishing:
 * a buffer stays as it is until its message was confirmed, then comes
 * back here for a later message, which rewrites only its head. The
 * window bounds how many exist (window + 1). The copy of a 16 MiB body
 * was a third of the program's CPU per message. */
#define LEND_MIN (64 * 1024)

typedef struct body_pool {
  char *arena; /* slots x size bytes, mapped once, touched as used */
  size_t slots, used, size, n;
  char **free; /* n buffers given back, room for all slots */
} body_pool;

/* The window's buffers are touched afresh once each (the sender holds
 * window + 1, raw rabbitmq-c one): in 4 KiB pages that was 16,000 minor
 * faults per 64 MiB. One mapping for all of them gets transparent huge
 * pages where the kernel gives them on request (madvise mode). Returns
 * 0, or -1 if it cannot be mapped (then bodies are copied as usual). */
static int pool_init(body_pool *p, size_t size, size_t slots) {
  if (slots && size > SIZE_MAX / slots)
    return -1;
  size_t total = size * slots;
  void *a = mmap(NULL, total, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (a == MAP_FAILED)
    return -1;
#ifdef MADV_HUGEPAGE
  if (total >= (2 << 20))
    madvise(a, total, MADV_HUGEPAGE);
#endif
  if (!(p->free = calloc(slots, sizeof(*p->free)))) {
    munmap(a, total);
    return -1;
  }
  p->arena = a;
  p->size = size;
  p->slots = slots;
  return 0;
}

static void pool_destroy(body_pool *p) {
  if (p->arena)
    munmap(p->arena, p->size * p->slots);
  free(p->free);
  memset(p, 0, sizeof(*p));
}

/* edp_body_done_fn: a buffer whose message was confirmed (or refused). */
static void body_back(void *ud, const void *body) {
  body_pool *p = ud;
  if (p->n < p->slots)
    p->free[p->n++] = (char *)body;
}

/* A buffer: "order " and dots, the number written later. */
static char *body_take(body_pool *p) {
  if (p->n)
    return p->free[--p->n];
  if (p->used == p->slots)
    cli_die(&app, CLI_SOFTWARE, "internal: more bodies held than the window");
  char *b = p->arena + p->used++ * p->size;
  memset(b, '.', p->size);
  memcpy(b, "order ", 6);
  return b;
}

static void send_one(sender_run *r, const char *body, size_t len,
                     body_pool *lend) {
  char id[96];
  r->seq++;
  if (r->rate > 0) {
    /* Pace against the start time, so that a slow message is caught up
     * rather than slowing every later one; in microseconds, each message
     * at its own time (in milliseconds, 5,000/s went out as bursts of
     * five). Whole milliseconds are slept on the stop fd, the rest with
     * nanosleep. */
    int64_t due = r->start_us + (int64_t)((r->seq - 1) * 1000000 / r->rate);
    int64_t wait = due - edp_now_us();
    if (wait >= 1000 && edp_sleep_ms((int)(wait / 1000), cli_stop_fd()))
      cli_die(&app, CLI_INTERRUPTED, "interrupted; %zu message(s) unconfirmed",
              edp_conn_unconfirmed(r->conn));
    wait = due - edp_now_us();
    if (wait > 0) {
      struct timespec ts = {0, (long)wait * 1000};
      nanosleep(&ts, NULL);
    }
  }
  /* prefix-SEQ without snprintf: formatting was a fifth of the
   * program's instructions per message (callgrind). */
  size_t pl = strlen(r->prefix);
  memcpy(id, r->prefix, pl);
  id[pl] = '-';
  fmt_u64(id + pl + 1, r->seq);
  if (r->max_body && len > r->max_body)
    cli_die(&app, CLI_DATAERR,
            "message %llu is %zu bytes, over the limit of %zu (--max-body)",
            (unsigned long long)r->seq, len, r->max_body);
  if (!app.json && !r->quiet)
    printf("sending: (%llu) %.*s\n", (unsigned long long)r->seq,
           len > 200 ? 200 : (int)len, body);
  edp_trace t;
  int traced = cli_trace_next(&app, &t);
  int rc = lend ? edp_fwd_send_lent(r->s, id, body, len, "text/plain",
                                    traced ? &t : NULL, body_back, lend)
                : edp_fwd_send_traced(r->s, id, body, len, "text/plain",
                                      traced ? &t : NULL);
  if (rc == EDP_ESTOPPED || cli_stopped())
    cli_die(&app, CLI_INTERRUPTED, "interrupted; %zu message(s) unconfirmed",
            edp_conn_unconfirmed(r->conn));
  if (rc)
    cli_die_err(&app, r->conn, rc, "send failed");
  cli_progress(&app, r->seq, edp_conn_unconfirmed(r->conn), 0);
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-forward-sender");
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
      {"persistent", no_argument, NULL, 'P'},
      {"transient", no_argument, NULL, 'T'},
      {"confirm-window", required_argument, NULL, 'w'},
      {"id-prefix", required_argument, NULL, 'I'},
      {"max-body", required_argument, NULL, 'M'},
      {"rate", required_argument, NULL, 'r'},
      {"body-size", required_argument, NULL, 'B'},
      {"quiet", no_argument, NULL, 'Q'},
      CLI_QUEUE_LONGOPTS,
      CLI_METRICS_LONGOPT,
      CLI_TRACE_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *queue = "edp.forward";
  long count = -1, window = 1024;
  long long max_body = (long long)16 << 20;
  long body_size = 0;
  int persistent = 1;
  sender_run r = {0};
  static body_pool pool;
  snprintf(r.prefix, sizeof(r.prefix), "m%lx%x", (long)time(NULL),
           (unsigned)getpid());
  int opt;
  edp_queue_kind kind = {0};
  while ((opt = getopt_long(argc, argv, "q:n:w:" CLI_COMMON_SHORTOPTS, opts,
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
    case 'P':
      persistent = 1;
      break;
    case 'T':
      persistent = 0;
      break;
    case 'w':
      window = cli_int(&app, "confirm-window", optarg, 0, 1000000);
      break;
    case 'I':
      if (!optarg[0] || strlen(optarg) >= sizeof(r.prefix))
        cli_die(&app, CLI_USAGE, "--id-prefix: 1 to %zu characters",
                sizeof(r.prefix) - 1);
      snprintf(r.prefix, sizeof(r.prefix), "%s", optarg);
      break;
    case 'r':
      r.rate = cli_int(&app, "rate", optarg, 0, 10000000L);
      break;
    case 'B':
      body_size = cli_int(&app, "body-size", optarg, 0, 2147483647L);
      break;
    case 'Q':
      r.quiet = 1;
      break;
    case 'M':
      max_body = cli_int(&app, "max-body", optarg, 0, 2147483647L);
      break;
    default:
      fprintf(stderr, "Try 'edp-forward-sender --help'.\n");
      return CLI_USAGE;
    }
  }
  cli_queue_done(&app, &kind);
  if (!queue[0] || strlen(queue) > 200)
    cli_die(&app, CLI_USAGE, "--queue: 1 to 200 characters");
  if (count >= 0 && optind < argc)
    cli_die(&app, CLI_USAGE, "give either --count or messages, not both");

  r.max_body = (size_t)max_body;
  r.start_us = edp_now_us();
  r.conn = cli_connect(&app, "edp-forward-sender");
  edp_fwd_sender_opts so;
  edp_fwd_sender_opts_init(&so);
  so.queue = queue;
  so.kind = kind;
  so.persistent = persistent;
  so.confirm_window = (size_t)window;
  so.on_confirm = on_confirm;
  int rc = edp_fwd_sender_new(r.conn, &so, &r.s);
  if (rc)
    cli_die_err(&app, r.conn, rc, "cannot set up the queue");
  metrics_serve ms = {0};
  metrics_serve_start(&ms, &app, r.conn, 0, r.s, edp_fwd_sender_collect);

  if (count >= 0) {
    /* One buffer for every generated body (only its head changes), or a
     * pool of window + 1 of them for lent bodies. */
    size_t cap = body_size > 64 ? (size_t)body_size : 64;
    int lend = body_size >= LEND_MIN && window > 0 &&
               pool_init(&pool, cap, (size_t)window + 1) == 0;
    char *body = lend ? NULL : malloc(cap);
    if (!lend && !body)
      cli_die(&app, CLI_SOFTWARE, "out of memory");
    if (body) {
      memset(body, '.', cap);
      memcpy(body, "order ", 6);
    }
    for (long i = 1; i <= count; i++) {
      char *b = lend ? body_take(&pool) : body;
      long n = 6 + (long)fmt_u64(b + 6, (uint64_t)i);
      if (n < body_size)
        b[n] = '.';
      send_one(&r, b, body_size > n ? (size_t)body_size : (size_t)n,
               lend ? &pool : NULL);
    }
    free(body);
  } else if (optind < argc) {
    for (int i = optind; i < argc; i++)
      send_one(&r, argv[i], strlen(argv[i]), NULL);
  } else {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
      if (line[n - 1] == '\n')
        n--;
      send_one(&r, line, (size_t)n, NULL);
    }
    free(line);
  }
  rc = edp_fwd_flush(r.s);
  if (rc == EDP_ESTOPPED || cli_stopped())
    cli_die(&app, CLI_INTERRUPTED, "interrupted; %zu message(s) unconfirmed",
            edp_conn_unconfirmed(r.conn));
  if (rc)
    cli_die_err(&app, r.conn, rc, "waiting for confirms failed");
  cli_progress(&app, r.seq, edp_conn_unconfirmed(r.conn), 1);
  edp_fwd_sender_stats st;
  edp_fwd_sender_stats_get(r.s, &st);
  if (app.json)
    cli_emit(json_pack(
        "{s:s,s:I,s:I,s:I,s:I,s:I}", "event", "summary", "sent",
        (json_int_t)st.sent, "confirmed", (json_int_t)st.confirmed, "refused",
        (json_int_t)st.refused, "republished", (json_int_t)st.republished,
        "reconnects", (json_int_t)st.reconnects));
  fprintf(stderr,
          "edp-forward-sender: sent %llu, confirmed %llu, refused %llu, "
          "republished %llu after %llu reconnect(s)\n",
          (unsigned long long)st.sent, (unsigned long long)st.confirmed,
          (unsigned long long)st.refused, (unsigned long long)st.republished,
          (unsigned long long)st.reconnects);
  metrics_serve_stop(&ms, &app);
  edp_fwd_sender_destroy(&r.s);
  edp_conn_destroy(&r.conn); /* gives back the lent bodies still held */
  pool_destroy(&pool);
  return st.refused ? CLI_DATAERR : CLI_OK;
}
