/*
 * cli.h - what every edp program shares: the connection options (--url,
 * --url-file, EDP_URL_FILE, EDP_URL), --json output, --help/--version, exit
 * codes, signal handling and the die helpers. Lives in cmd/ only: the library
 * never exits or prints.
 */
#ifndef EDP_CLI_H
#define EDP_CLI_H

#include <getopt.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "edp.h"

/* Exit codes (sysexits.h values), documented in README.md. */
enum {
  CLI_OK = 0,
  CLI_USAGE = 64,       /* bad option or URL */
  CLI_DATAERR = 65,     /* bad input data, message too large, refused */
  CLI_UNAVAILABLE = 69, /* broker unreachable or lost for good */
  CLI_SOFTWARE = 70,    /* internal error */
  CLI_NOPERM = 77,      /* access refused: credentials, vhost, permissions */
  CLI_INTERRUPTED = 130 /* SIGINT or SIGTERM */
};

/* The getopt value of --connect-retry-ms: long-only, above every value a
 * program's own options use (characters, and config-server's from 256). */
#define CLI_OPT_CONNECT_RETRY 1100

/* Long options every program accepts; put CLI_COMMON_LONGOPTS in the
 * program's table and "u:jvhV" in its short option string. */
#define CLI_COMMON_LONGOPTS                                                    \
  {"url", required_argument, NULL, 'u'},                                       \
      {"url-file", required_argument, NULL, 'U'},                              \
      {"connect-retry-ms", required_argument, NULL, CLI_OPT_CONNECT_RETRY},    \
      {"json", no_argument, NULL, 'j'}, {"verbose", no_argument, NULL, 'v'},   \
      {"help", no_argument, NULL, 'h'}, {                                      \
    "version", no_argument, NULL, 'V'                                          \
  }
#define CLI_COMMON_SHORTOPTS "u:jvhV"

/* The help text of the common options, for each program's usage(). */
#define CLI_COMMON_HELP                                                        \
  "  -u, --url URL        broker URL (default: the file $EDP_URL_FILE\n"       \
  "                       names, else $EDP_URL, else\n"                        \
  "                       " EDP_URL_DEFAULT ")\n"                              \
  "      --url-file PATH  read the URL from PATH (a secret file): keeps\n"     \
  "                       the password out of argv and the environment\n"      \
  "      --connect-retry-ms MS  while the broker refuses connections (it\n"    \
  "                       is still starting), retry with backoff for up\n"     \
  "                       to MS ms before exiting 69 (default:\n"              \
  "                       $EDP_CONNECT_RETRY_MS, else 0: exit at once)\n"      \
  "  -j, --json           one JSON object per event on stdout\n"               \
  "  -v, --verbose        log more on stderr\n"                                \
  "  -h, --help           this help\n"                                         \
  "  -V, --version        print the version\n"                                 \
  "Exit codes: 0 ok, 64 usage, 65 bad data, 69 broker unavailable,\n"          \
  "70 internal error, 77 access refused, 130 interrupted.\n"

/* Options of the programs that declare a durable queue of the user's
 * kind (edp_queue_kind): put CLI_QUEUE_LONGOPTS in the option table and
 * CLI_QUEUE_HELP in the usage, and hand options to cli_queue_opt(). The
 * forwarding programs also take CLI_SINGLE_ACTIVE_LONGOPT. */
enum {
  CLI_OPT_QUEUE_TYPE = 0x200,
  CLI_OPT_DELIVERY_LIMIT,
  CLI_OPT_SINGLE_ACTIVE
};
#define CLI_QUEUE_LONGOPTS                                                     \
  {"queue-type", required_argument, NULL, CLI_OPT_QUEUE_TYPE}, {               \
    "delivery-limit", required_argument, NULL, CLI_OPT_DELIVERY_LIMIT          \
  }
#define CLI_SINGLE_ACTIVE_LONGOPT                                              \
  { "single-active", no_argument, NULL, CLI_OPT_SINGLE_ACTIVE }
#define CLI_QUEUE_HELP                                                         \
  "      --queue-type T   classic (default) or quorum (replicated over a\n"    \
  "                       cluster); the queue's other users must agree\n"      \
  "      --delivery-limit N  quorum: the broker moves a message delivered\n"   \
  "                       N+1 times unsettled (its consumer crashed each\n"    \
  "                       time) to QUEUE.dlq (default 20; 0 = the\n"           \
  "                       broker's default: none on 3.x, 20 on 4.x)\n"
#define CLI_SINGLE_ACTIVE_HELP                                                 \
  "      --single-active  one consumer at a time (ordered consumption):\n"     \
  "                       others stand by and take over in order\n"
/* --metrics HOST:PORT (issue 17): the long-running programs put
 * CLI_METRICS_LONGOPT in their table and CLI_METRICS_HELP in their help,
 * and serve c->metrics_addr with metrics_http_start() (metrics_http.h).
 * cli_connect() turns on the connection's timing when it is set. */
#define CLI_OPT_METRICS 0x4d45
#define CLI_OPT_METRICS_HOLD 0x4d46
#define CLI_METRICS_LONGOPT                                                    \
  {"metrics", required_argument, NULL, CLI_OPT_METRICS}, {                     \
    "metrics-hold", required_argument, NULL, CLI_OPT_METRICS_HOLD              \
  }
#define CLI_METRICS_HELP                                                       \
  "      --metrics ADDR   serve GET /metrics (Prometheus) and GET /healthz\n"  \
  "                       on ADDR: HOST:PORT, [IPV6]:PORT, or PORT alone\n"    \
  "                       for 127.0.0.1:PORT (docs/metrics.md)\n"              \
  "      --metrics-hold MS  when done, keep serving the final counts for\n"    \
  "                       MS ms (or until SIGINT/SIGTERM) before exiting,\n"   \
  "                       so that a last scrape sees them (default 0)\n"

/* --trace and --traceparent TP (issue 17): senders put CLI_TRACE_LONGOPT
 * in their table and CLI_TRACE_HELP in their help, and give each message
 * the context cli_trace_next() returns. */
#define CLI_OPT_TRACE 0x5452
#define CLI_OPT_TRACEPARENT 0x5453
#define CLI_TRACE_LONGOPT                                                      \
  {"trace", no_argument, NULL, CLI_OPT_TRACE}, {                               \
    "traceparent", required_argument, NULL, CLI_OPT_TRACEPARENT                \
  }
#define CLI_TRACE_HELP                                                         \
  "      --trace          start a W3C trace per message (traceparent\n"        \
  "                       header; trace_id and span_id in --json events)\n"    \
  "      --traceparent TP continue the trace TP: each message is a child\n"    \
  "                       span of it\n"

/* The most broker URLs a program takes (multi-broker's limit). */
#define CLI_MAX_URLS 64

typedef struct cli {
  const char *prog;
  int json;
  int verbose;
  /* The broker URLs, private: read them with cli_url() or cli_urls(). */
  const char *url_file; /* --url-file */
  char *urls[CLI_MAX_URLS];
  size_t n_urls;
  int urls_resolved;
  int delivery_limit_set;   /* --delivery-limit given */
  const char *metrics_addr; /* --metrics, or NULL */
  long metrics_hold_ms;     /* --metrics-hold */
  int trace;                /* --trace or --traceparent given */
  int has_trace_parent;
  edp_trace trace_parent; /* --traceparent */
  long connect_retry_ms; /* --connect-retry-ms; -1: not given */
} cli;

/* The default --delivery-limit of a quorum queue: RabbitMQ 4.x's own
 * default, so that a queue behaves alike on 3.x and 4.x. */
#define CLI_DELIVERY_LIMIT_DEFAULT 20

/* Handles a queue option into k; returns 1 if it was one. Dies with a
 * usage error for a type other than classic or quorum. */
int cli_queue_opt(cli *c, int opt, const char *arg, edp_queue_kind *k);

/* Call once after the options: dies with a usage error for a delivery
 * limit on a classic queue, and gives a quorum queue the default limit
 * when none was given. */
void cli_queue_done(cli *c, edp_queue_kind *k);

/* Sets the program name and installs the SIGINT/SIGTERM handlers that
 * make cli_stop_fd() readable. */
void cli_init(cli *c, const char *prog);

/* The broker URL of a one-broker program, chosen in this order: --url or
 * --url-file, else the file $EDP_URL_FILE names, else $EDP_URL, else
 * EDP_URL_DEFAULT. Dies with a usage error (64) when the choice is
 * ambiguous (--url with --url-file, EDP_URL with EDP_URL_FILE, more than
 * one URL) or the file can't be read. A URL file holds one URL per line;
 * blank lines and lines starting with '#' are skipped. */
const char *cli_url(cli *c);

/* The same for programs that take several brokers: every --url given, or
 * every URL of the file; sets *n. */
const char *const *cli_urls(cli *c, size_t *n);

/* Handles a common option; returns 1 if it was one. Exits for -h (after
 * calling usage) and -V. */
int cli_common_opt(cli *c, int opt, const char *arg, void (*usage)(void));

/* Prints "prog: message" to stderr and exits with code. */
void cli_die(const cli *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

/* Exit code for an EDP_E* error. */
int cli_exit_code(int err);

/* Dies with the exit code for err and the connection's broker reply. */
void cli_die_err(const cli *c, edp_conn *conn, int err, const char *what)
    __attribute__((noreturn));

/* Parses an integer option in [lo, hi] or dies with a usage error. */
long cli_int(const cli *c, const char *name, const char *arg, long lo, long hi);

/* A readable fd while SIGINT/SIGTERM was received; 1 if stopped. */
int cli_stop_fd(void);
int cli_stopped(void);

/* Opens a connection to cli_url(c) with stop fd and stderr logging; dies with
 * the right exit code and a one-line error on failure. With
 * --connect-retry-ms (or $EDP_CONNECT_RETRY_MS) a broker that refuses the
 * connection (69: still starting, not yet resolvable) is retried with
 * backoff until that bound. */
edp_conn *cli_connect(cli *c, const char *client_name);

/* The same to url (NULL: cli_url(c)), for programs that pick among
 * brokers themselves (benchmarks that start their own nodes). */
edp_conn *cli_connect_url(cli *c, const char *url, const char *client_name);
/* For programs whose patterns open their own connections: with
 * --connect-retry-ms, waits until every broker of cli_urls() accepted a
 * connection (closed again at once), at most that long in all, then
 * returns whatever the outcome, so the program starts as it would have
 * and reports a broker still down its own way. Dies on a refusal no wait
 * changes (64, 77) and on SIGINT/SIGTERM (130). Without the option it
 * returns at once. */
void cli_await_brokers(cli *c);

/* The log callback used by cli_connect (ud is the cli). */
void cli_log(void *ud, int level, const char *msg);

/* Progress of a long send on stderr, only when stderr is a terminal:
 * at most once a second, "sent N, confirmed C, outstanding K, R msg/s",
 * overwritten in place; final != 0 prints the last state and a newline
 * (if anything was printed). */
void cli_progress(const cli *c, uint64_t sent, size_t outstanding, int final);

/* Prints obj as one compact JSON line on stdout, flushes, frees obj.
 * Thread-safe: lines from different threads never interleave. */
void cli_emit(json_t *obj);

/* The connection event callback cli_connect installs (ud is the cli):
 * with --json each event becomes a line {"event":"blocked"|"unblocked"|
 * "reconnected"|"channel_restored"|"consumer_cancelled"|
 * "connection_lost", "reason", "url", "connection", ...}; the library's
 * log line on stderr says it in human text. Give it to patterns that open
 * their own connections. */
void cli_conn_event(void *ud, const edp_conn_event *ev);

/* Sets o[key] to the len bytes at s (nothing for NULL s or o). A JSON
 * string holds only UTF-8, and a message_id or header from the broker may
 * be anything; so for bytes that are not valid UTF-8, o[key] gets them
 * with each invalid byte replaced by U+FFFD (readable) and o[key "_b64"]
 * the exact bytes in base64 (RFC 4648, padded): the event is never lost,
 * nor are the bytes (docs/programs.md). */
void cli_json_setn(json_t *o, const char *key, const char *s, size_t len);
void cli_json_set(json_t *o, const char *key, const char *s);

/* The len bytes at s as one line of human text, in buf (cap bytes, at
 * least 1; cut short at a whole escape): backslash, control characters,
 * DEL, C1 controls and bytes that are not UTF-8 become \\, \n, \r, \t
 * or \xHH, so that a message can neither forge output lines nor send
 * terminal escapes. NULL s is "". Returns buf. */
const char *cli_text(const char *s, size_t len, char *buf, size_t cap);

/* The trace context for a sender's next message: 0 without --trace or
 * --traceparent; else 1 and *t: a new trace, or a child of --traceparent. */
int cli_trace_next(const cli *c, edp_trace *t);

/* Adds the span t (NULL: edp_trace_current(), none: nothing) to an event:
 * trace_id, span_id, parent_span_id (when it has a parent), and the
 * OpenTelemetry messaging attributes messaging.system ("rabbitmq") and
 * messaging.destination.name (destination, if not NULL). */
void cli_json_trace(json_t *o, const edp_trace *t, const char *destination);

/* The context a message carries in its traceparent header (a simple
 * header or a table entry), with --traceparent's span as its parent when
 * it continues that trace: 0 and *t, or EDP_ENOTFOUND / EDP_EBADDATA. */
int cli_msg_trace(const cli *c, const edp_msg *m, edp_trace *t);

/* Prints a human line on stdout and flushes, unless --json. */
void cli_say(const cli *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
