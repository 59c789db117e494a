/*
 * cli.c - shared option handling, exit codes, signals and output of the
 * edp programs. Signals only write a byte to a self-pipe; every wait in
 * libedp polls that pipe (edp_conn_opts.stop_fd), so SIGINT ends any wait
 * at once and the program can close its connection cleanly.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int stop_pipe[2] = {-1, -1};
static volatile sig_atomic_t stopped;

static void on_signal(int sig) {
  (void)sig;
  int saved = errno;
  stopped = 1;
  if (stop_pipe[1] >= 0) {
    ssize_t n = write(stop_pipe[1], "x", 1);
    (void)n;
  }
  errno = saved;
}

void cli_init(cli *c, const char *prog) {
  memset(c, 0, sizeof(*c));
  c->prog = prog;
  c->connect_retry_ms = -1;
  if (pipe(stop_pipe) == 0) {
    for (int i = 0; i < 2; i++)
      fcntl(stop_pipe[i], F_SETFL, fcntl(stop_pipe[i], F_GETFL) | O_NONBLOCK);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
}

int cli_stop_fd(void) { return stop_pipe[0]; }
int cli_stopped(void) { return stopped; }

/* A password in argv is visible to every user of the machine (ps,
 * /proc/PID/cmdline): warn, and overwrite it in place, which hides it
 * from later reads (not from one made before, hence the warning). The
 * well-known guest password is no secret and gets no warning. */
static void scrub_password(const cli *c, char *arg) {
  edp_url u;
  if (edp_url_parse(arg, &u, NULL, 0) || !u.pass[0] ||
      u.auth_mechanism == EDP_AUTH_EXTERNAL || !strcmp(u.pass, "guest"))
    return;
  fprintf(stderr,
          "%s: warning: a password in --url is visible to other users "
          "of this machine; use --url-file or EDP_URL_FILE\n",
          c->prog);
  char *auth = strstr(arg, "://");
  char *at = auth ? strchr(auth + 3, '@') : NULL;
  char *colon = at ? memchr(auth + 3, ':', (size_t)(at - auth - 3)) : NULL;
  if (colon)
    memset(colon + 1, 'x', (size_t)(at - colon - 1));
}

static void add_url(cli *c, const char *url, const char *from) {
  if (c->n_urls == CLI_MAX_URLS)
    cli_die(c, CLI_USAGE, "%s: at most %d URLs", from, CLI_MAX_URLS);
  c->urls[c->n_urls] = strdup(url);
  if (!c->urls[c->n_urls])
    cli_die(c, CLI_SOFTWARE, "out of memory");
  c->n_urls++;
}

int cli_common_opt(cli *c, int opt, const char *arg, void (*usage)(void)) {
  switch (opt) {
  case 'u':
    if (c->url_file)
      cli_die(c, CLI_USAGE, "--url and --url-file exclude each other");
    add_url(c, arg, "--url");
    scrub_password(c, (char *)arg); /* optarg points into argv */
    return 1;
  case 'U':
    if (c->n_urls)
      cli_die(c, CLI_USAGE, "--url and --url-file exclude each other");
    if (c->url_file)
      cli_die(c, CLI_USAGE, "--url-file given twice");
    c->url_file = arg;
    return 1;
  case CLI_OPT_CONNECT_RETRY:
    c->connect_retry_ms = cli_int(c, "connect-retry-ms", arg, 0, 3600000);
    return 1;
  case 'j':
    c->json = 1;
    return 1;
  case CLI_OPT_METRICS:
    c->metrics_addr = arg;
    return 1;
  case CLI_OPT_TRACE:
    c->trace = 1;
    return 1;
  case CLI_OPT_TRACEPARENT:
    if (edp_trace_parse(arg, strlen(arg), &c->trace_parent))
      cli_die(c, CLI_USAGE,
              "--traceparent %s: not a W3C traceparent "
              "(00-<32 hex>-<16 hex>-<2 hex>)",
              arg);
    c->trace = c->has_trace_parent = 1;
    return 1;
  case CLI_OPT_METRICS_HOLD:
    c->metrics_hold_ms = cli_int(c, "metrics-hold", arg, 0, 86400000L);
    return 1;
  case 'v':
    c->verbose++;
    return 1;
  case 'h':
    usage();
    exit(CLI_OK);
  case 'V':
    printf("%s %s\n", c->prog, EDP_VERSION);
    exit(CLI_OK);
  default:
    return 0;
  }
}

/* Reads the URLs of a secret file (Docker mounts secrets as files): one
 * per line, blank lines and '#' comments skipped. A URL file is small;
 * the limit keeps a wrong path (/dev/zero) from eating memory. */
static void read_url_file(cli *c, const char *path, const char *from) {
  enum { URL_FILE_MAX = 64 * 1024 };
  FILE *f = fopen(path, "r");
  if (!f)
    cli_die(c, CLI_USAGE, "%s %s: %s", from, path, strerror(errno));
  char *buf = malloc(URL_FILE_MAX + 1);
  if (!buf)
    cli_die(c, CLI_SOFTWARE, "out of memory");
  size_t len = fread(buf, 1, URL_FILE_MAX + 1, f);
  int failed = ferror(f);
  fclose(f);
  if (failed)
    cli_die(c, CLI_USAGE, "%s %s: read error", from, path);
  if (len > URL_FILE_MAX)
    cli_die(c, CLI_USAGE, "%s %s: larger than %d bytes, not a URL file", from,
            path, URL_FILE_MAX);
  buf[len] = '\0';
  if (memchr(buf, '\0', len))
    cli_die(c, CLI_USAGE, "%s %s: holds a NUL byte, not a URL file", from,
            path);
  for (char *line = buf, *next; line; line = next) {
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    size_t n = strlen(line);
    while (n && strchr(" \t\r", line[n - 1]))
      line[--n] = '\0';
    line += strspn(line, " \t");
    if (line[0] && line[0] != '#')
      add_url(c, line, from);
  }
  free(buf);
  if (!c->n_urls)
    cli_die(c, CLI_USAGE, "%s %s: no URL in it", from, path);
}

static void resolve_urls(cli *c) {
  if (c->urls_resolved)
    return;
  c->urls_resolved = 1;
  if (c->url_file) {
    read_url_file(c, c->url_file, "--url-file");
    return;
  }
  if (c->n_urls)
    return;
  const char *file = getenv("EDP_URL_FILE");
  const char *env = getenv("EDP_URL");
  if (file && file[0] && env && env[0])
    cli_die(c, CLI_USAGE, "EDP_URL and EDP_URL_FILE are both set: unset one");
  if (file && file[0])
    read_url_file(c, file, "EDP_URL_FILE");
  else
    add_url(c, env && env[0] ? env : EDP_URL_DEFAULT, "EDP_URL");
}

const char *cli_url(cli *c) {
  resolve_urls(c);
  if (c->n_urls > 1)
    cli_die(c, CLI_USAGE, "%zu broker URLs given; this program connects to one",
            c->n_urls);
  return c->urls[0];
}

const char *const *cli_urls(cli *c, size_t *n) {
  resolve_urls(c);
  *n = c->n_urls;
  return (const char *const *)c->urls;
}

void cli_die(const cli *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", c->prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(code);
}

int cli_exit_code(int err) {
  switch (err) {
  case 0:
    return CLI_OK;
  case EDP_EURL:
  case EDP_EINVAL:
    return CLI_USAGE;
  case EDP_EBADDATA:
  case EDP_ETOOBIG:
  case EDP_ENACKED:
  case EDP_ERETURNED:
  case EDP_EPRECONDITION:
    return CLI_DATAERR;
  case EDP_ECONNECT:
  case EDP_ECLOSED:
  case EDP_ETIMEOUT:
  case EDP_ENOTFOUND:
  case EDP_ECHANNEL:
    return CLI_UNAVAILABLE;
  /* A refused certificate is a trust decision like a refused password, not
   * an outage: retrying will not change it. */
  case EDP_EAUTH:
  case EDP_EACCESS:
  case EDP_ETLS:
    return CLI_NOPERM;
  case EDP_ESTOPPED:
    return CLI_INTERRUPTED;
  default:
    return CLI_SOFTWARE;
  }
}

int cli_queue_opt(cli *c, int opt, const char *arg, edp_queue_kind *k) {
  switch (opt) {
  case CLI_OPT_QUEUE_TYPE:
    if (strcmp(arg, "classic") && strcmp(arg, "quorum"))
      cli_die(c, CLI_USAGE, "--queue-type: classic or quorum, got '%s'", arg);
    k->type = arg;
    return 1;
  case CLI_OPT_DELIVERY_LIMIT:
    k->delivery_limit = cli_int(c, "delivery-limit", arg, 0, 1000000000L);
    c->delivery_limit_set = 1;
    return 1;
  case CLI_OPT_SINGLE_ACTIVE:
    k->single_active = 1;
    return 1;
  default:
    return 0;
  }
}

void cli_queue_done(cli *c, edp_queue_kind *k) {
  int quorum = k->type && !strcmp(k->type, "quorum");
  if (c->delivery_limit_set && k->delivery_limit && !quorum)
    cli_die(c, CLI_USAGE,
            "--delivery-limit needs --queue-type quorum (a classic queue "
            "does not count deliveries)");
  if (quorum && !c->delivery_limit_set)
    k->delivery_limit = CLI_DELIVERY_LIMIT_DEFAULT;
}

/* The broker's 406 for a queue declared again with other arguments says
 * "inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received
 * the value 'quorum' of type 'longstr' but current is none". Said
 * plainly, with what to do about it. */
static void explain_precondition(const cli *c, edp_conn *conn) {
  const char *t = edp_conn_reply_text(conn);
  const char *arg = strstr(t, "inequivalent arg '");
  const char *queue = strstr(t, " for queue '");
  const char *got = strstr(t, ": received ");
  const char *has = got ? strstr(got, " but current is ") : NULL;
  if (!arg || !queue || !got || !has)
    return;
  arg += strlen("inequivalent arg '");
  queue += strlen(" for queue '");
  int arg_len = (int)strcspn(arg, "'"), queue_len = (int)strcspn(queue, "'");
  got += strlen(": received ");
  has += strlen(" but current is ");
  fprintf(stderr,
          "%s: queue '%.*s' exists with another %.*s: asked %.*s, it has "
          "%s. Give the options it was declared with (e.g. --queue-type) "
          "or delete it first (rabbitmqctl delete_queue).\n",
          c->prog, queue_len, queue, arg_len, arg,
          (int)(has - strlen(" but current is ") - got), got, has);
}

void cli_die_err(const cli *c, edp_conn *conn, int err, const char *what) {
  if (conn && err == EDP_EPRECONDITION)
    explain_precondition(c, conn);
  if (conn && edp_conn_reply_code(conn))
    cli_die(c, cli_exit_code(err), "%s: %s (broker: %d %s)", what,
            edp_strerror(err), edp_conn_reply_code(conn),
            edp_conn_reply_text(conn));
  cli_die(c, cli_exit_code(err), "%s: %s", what, edp_strerror(err));
}

long cli_int(const cli *c, const char *name, const char *arg, long lo,
             long hi) {
  char *end = NULL;
  errno = 0;
  long v = strtol(arg, &end, 10);
  if (errno || !end || end == arg || *end || v < lo || v > hi)
    cli_die(c, CLI_USAGE, "--%s: expected an integer in [%ld, %ld], got '%s'",
            name, lo, hi, arg);
  return v;
}

void cli_log(void *ud, int level, const char *msg) {
  const cli *c = ud;
  if (level > EDP_LOG_WARN + (c ? c->verbose : 0))
    return;
  static const char *names[] = {"error", "warning", "info", "debug"};
  fprintf(stderr, "%s: %s: %s\n", c ? c->prog : "edp",
          names[level < 0   ? 0
                : level > 3 ? 3
                            : level],
          msg);
}

/* How long to wait for a broker that refuses connections: the option,
 * else $EDP_CONNECT_RETRY_MS (set for every service of the compose stack,
 * where the programs may start before the broker listens), else 0. */
static long connect_retry_ms(const cli *c) {
  if (c->connect_retry_ms >= 0)
    return c->connect_retry_ms;
  const char *env = getenv("EDP_CONNECT_RETRY_MS");
  if (!env || !env[0])
    return 0;
  char *end = NULL;
  errno = 0;
  long v = strtol(env, &end, 10);
  if (errno || *end || v < 0 || v > 3600000)
    cli_die(c, CLI_USAGE,
            "EDP_CONNECT_RETRY_MS: expected an integer in [0, 3600000], got "
            "'%s'",
            env);
  return v;
}

/* A broker that is still starting refuses connections (RabbitMQ opens
 * its AMQP listener seconds after the node is up), and in a compose
 * stack its host name may not resolve yet: EDP_ECONNECT. A login,
 * vhost or certificate the broker refused is not retried: waiting
 * changes nothing. */
static int broker_not_ready(int rc) {
  return rc == EDP_ECONNECT || rc == EDP_ECLOSED || rc == EDP_ETIMEOUT;
}

/* edp_conn_open, repeated with backoff (100 ms doubling to 1 s) while the
 * broker is not ready and the deadline has not passed. Each attempt's
 * connect timeout is cut to the time left, so a broker that does not
 * answer at all keeps the bound too. */
static int open_until(const cli *c, const edp_conn_opts *o, int64_t deadline,
                      edp_conn **out, char *why, size_t why_len) {
  edp_conn_opts oo = *o;
  int64_t start = edp_now_ms();
  int retrying = deadline > start;
  int delay = 100;
  for (int attempt = 1;; attempt++) {
    int64_t left = deadline - edp_now_ms();
    if (retrying && oo.connect_timeout_ms > left)
      oo.connect_timeout_ms = left > 500 ? (int)left : 500;
    int rc = edp_conn_open(&oo, out, why, why_len);
    left = deadline - edp_now_ms();
    if (!rc || !broker_not_ready(rc) || left <= 0) {
      if (rc && attempt > 1) {
        char msg[120];
        snprintf(msg, sizeof(msg),
                 "gave up waiting for the broker after %d attempts in %lld ms",
                 attempt, (long long)(edp_now_ms() - start));
        cli_log((void *)c, EDP_LOG_WARN, msg);
      }
      return rc;
    }
    int wait = delay < left ? delay : (int)left;
    char msg[800];
    snprintf(msg, sizeof(msg),
             "broker not ready (%s); retrying in %d ms, %lld ms left", why,
             wait, (long long)left);
    cli_log((void *)c, EDP_LOG_WARN, msg);
    if (edp_sleep_ms(wait, cli_stop_fd()))
      return EDP_ESTOPPED;
    delay = delay >= 500 ? 1000 : delay * 2;
  }
}

void cli_await_brokers(cli *c) {
  long bound = connect_retry_ms(c);
  if (bound <= 0)
    return;
  size_t n;
  const char *const *urls = cli_urls(c, &n);
  int64_t deadline = edp_now_ms() + bound;
  for (size_t i = 0; i < n; i++) {
    edp_conn_opts o;
    edp_conn_opts_init(&o);
    o.url = urls[i];
    o.stop_fd = cli_stop_fd();
    o.client_name = c->prog;
    edp_conn *conn = NULL;
    char why[600];
    int rc = open_until(c, &o, deadline, &conn, why, sizeof(why));
    edp_conn_destroy(&conn);
    if (rc == EDP_ESTOPPED)
      cli_die(c, CLI_INTERRUPTED, "interrupted while waiting for the broker");
    if (rc && !broker_not_ready(rc))
      cli_die(c, cli_exit_code(rc), "%s: %s", edp_strerror(rc), why);
  }
}

edp_conn *cli_connect(cli *c, const char *client_name) {
  return cli_connect_url(c, NULL, client_name);
}

edp_conn *cli_connect_url(cli *c, const char *url, const char *client_name) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url ? url : cli_url(c);
  o.stop_fd = cli_stop_fd();
  o.client_name = client_name ? client_name : c->prog;
  o.log = cli_log;
  o.log_ud = (void *)c;
  o.on_event = cli_conn_event;
  o.on_event_ud = (void *)c;
  edp_conn *conn = NULL;
  char why[600];
  int rc = open_until(c, &o, edp_now_ms() + connect_retry_ms(c), &conn, why,
                      sizeof(why));
  if (rc)
    cli_die(c, cli_exit_code(rc), "%s: %s", edp_strerror(rc), why);
  /* A program that serves metrics keeps the latency histograms too. */
  if (c->metrics_addr)
    edp_conn_set_timing(conn, 1);
  return conn;
}

void cli_progress(const cli *c, uint64_t sent, size_t outstanding, int final) {
  static int enabled = -1, printed;
  static int64_t start, last;
  if (enabled < 0) {
    enabled = isatty(2);
    start = edp_now_ms();
  }
  int64_t now = edp_now_ms();
  if (!enabled || (!final && now - last < 1000) || (final && !printed))
    return;
  last = now;
  printed = 1;
  double secs = (double)(now - start) / 1000.0;
  uint64_t confirmed = sent > outstanding ? sent - outstanding : 0;
  fprintf(stderr,
          "\r%s: sent %llu, confirmed %llu, outstanding %zu, %.0f msg/s   %s",
          c->prog, (unsigned long long)sent, (unsigned long long)confirmed,
          outstanding, secs > 0 ? (double)sent / secs : 0.0, final ? "\n" : "");
}

void cli_emit(json_t *obj) {
  /* Events come from several threads (supervisor consumers, broker
   * threads): one line each, never interleaved. */
  flockfile(stdout);
  if (!obj) {
    /* json_pack refuses strings that are not UTF-8 (a hostile message_id,
     * say); say so rather than drop the event silently. */
    fputs("{\"event\":\"error\",\"reason\":\"event not encodable as "
          "JSON (invalid UTF-8)\"}\n",
          stdout);
  } else {
    char *s = json_dumps(obj, JSON_COMPACT);
    if (s) {
      fputs(s, stdout);
      fputc('\n', stdout);
      free(s);
    }
    json_decref(obj);
  }
  fflush(stdout);
  funlockfile(stdout);
}

void cli_conn_event(void *ud, const edp_conn_event *ev) {
  const cli *c = ud;
  /* The library logged it to stderr already; --json makes it an event. */
  if (!c || !c->json)
    return;
  /* The reason quotes the broker, which quotes queue names: any bytes. */
  json_t *o = json_pack("{s:s}", "event", edp_conn_event_name(ev->type));
  cli_json_set(o, "reason", ev->reason);
  cli_json_set(o, "url", ev->url ? ev->url : "");
  cli_json_set(o, "connection", ev->client_name ? ev->client_name : "");
  if (o && ev->reply_code)
    json_object_set_new(o, "reply_code", json_integer(ev->reply_code));
  cli_json_set(o, "queue", ev->queue);
  cli_json_set(o, "consumer_tag", ev->tag);
  if (o && (ev->type == EDP_CONN_RECONNECTED ||
            ev->type == EDP_CONN_CHANNEL_RESTORED))
    json_object_set_new(o, "republished",
                        json_integer((json_int_t)ev->republished));
  cli_emit(o);
}

void cli_say(const cli *c, const char *fmt, ...) {
  if (c->json)
    return;
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fflush(stdout);
}

/* The length (1..4) of the valid UTF-8 sequence at p, n bytes left, with
 * its code point in *cp; 0 if p starts none (overlong forms, surrogates
 * and code points over U+10FFFF are not UTF-8, as for jansson). */
static size_t utf8_seq(const unsigned char *p, size_t n, uint32_t *cp) {
  static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
  size_t len = p[0] < 0x80             ? 1
               : (p[0] & 0xe0) == 0xc0 ? 2
               : (p[0] & 0xf0) == 0xe0 ? 3
               : (p[0] & 0xf8) == 0xf0 ? 4
                                       : 0;
  if (!len || len > n)
    return 0;
  uint32_t c = len == 1 ? p[0] : p[0] & (0x7f >> len);
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80)
      return 0;
    c = (c << 6) | (p[i] & 0x3f);
  }
  if (c < min[len] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
    return 0;
  *cp = c;
  return len;
}

static char *base64(const unsigned char *p, size_t n) {
  static const char a[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
  if (!out)
    return NULL;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16;
    if (i + 1 < n)
      v |= (uint32_t)p[i + 1] << 8;
    if (i + 2 < n)
      v |= p[i + 2];
    *o++ = a[v >> 18];
    *o++ = a[(v >> 12) & 63];
    *o++ = i + 1 < n ? a[(v >> 6) & 63] : '=';
    *o++ = i + 2 < n ? a[v & 63] : '=';
  }
  *o = '\0';
  return out;
}

void cli_json_setn(json_t *o, const char *key, const char *s, size_t len) {
  if (!o || !key || !s)
    return;
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, bad = 0;
  uint32_t cp;
  for (size_t k; i < len; i += k ? k : 1)
    bad += !(k = utf8_seq(p + i, len - i, &cp));
  json_t *v = bad ? NULL : json_stringn(s, len);
  if (v) {
    json_object_set_new(o, key, v);
    return;
  }
  /* U+FFFD for each invalid byte: at most 3 bytes for 1. */
  char *fixed = malloc(len + 2 * bad + 1), *f = fixed;
  char *b64 = base64(p, len);
  size_t kl = strlen(key);
  char *k64 = malloc(kl + 5);
  if (fixed && b64 && k64) {
    for (size_t j = 0, k; j < len; j += k ? k : 1) {
      if ((k = utf8_seq(p + j, len - j, &cp))) {
        memcpy(f, p + j, k);
        f += k;
      } else {
        memcpy(f, "\xef\xbf\xbd", 3);
        f += 3;
      }
    }
    memcpy(k64, key, kl);
    memcpy(k64 + kl, "_b64", 5);
    json_object_set_new(o, key, json_stringn(fixed, (size_t)(f - fixed)));
    json_object_set_new(o, k64, json_string(b64));
  }
  free(fixed);
  free(b64);
  free(k64);
}

void cli_json_set(json_t *o, const char *key, const char *s) {
  if (s)
    cli_json_setn(o, key, s, strlen(s));
}

const char *cli_text(const char *s, size_t len, char *buf, size_t cap) {
  const unsigned char *p = (const unsigned char *)(s ? s : "");
  size_t o = 0;
  if (!s)
    len = 0;
  for (size_t i = 0, k; i < len; i += k) {
    char esc[8];
    uint32_t cp = 0;
    k = utf8_seq(p + i, len - i, &cp);
    const char *out = (const char *)p + i;
    size_t n = k;
    if (!k || cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0) ||
        cp == '\\') {
      k = k ? k : 1;
      n = cp == '\n'   ? (size_t)snprintf(esc, sizeof(esc), "\\n")
          : cp == '\r' ? (size_t)snprintf(esc, sizeof(esc), "\\r")
          : cp == '\t' ? (size_t)snprintf(esc, sizeof(esc), "\\t")
          : cp == '\\' ? (size_t)snprintf(esc, sizeof(esc), "\\\\")
          : cp >= 0x80
              ? (size_t)snprintf(esc, sizeof(esc), "\\u%04x", (unsigned)cp)
              : (size_t)snprintf(esc, sizeof(esc), "\\x%02x", p[i]);
      out = esc;
    }
    if (o + n >= cap)
      break;
    memcpy(buf + o, out, n);
    o += n;
  }
  buf[o] = '\0';
  return buf;
}

int cli_trace_next(const cli *c, edp_trace *t) {
  if (!c->trace)
    return 0;
  if (c->has_trace_parent)
    edp_trace_child(&c->trace_parent, t);
  else
    edp_trace_new(t);
  return 1;
}

void cli_json_trace(json_t *o, const edp_trace *t, const char *destination) {
  if (!t)
    t = edp_trace_current();
  if (!o || !t)
    return;
  json_object_set_new(o, "trace_id", json_string(t->trace_id));
  json_object_set_new(o, "span_id", json_string(t->span_id));
  if (t->parent_id[0])
    json_object_set_new(o, "parent_span_id", json_string(t->parent_id));
  json_object_set_new(o, "messaging.system", json_string("rabbitmq"));
  cli_json_set(o, "messaging.destination.name", destination);
}

int cli_msg_trace(const cli *c, const edp_msg *m, edp_trace *t) {
  int rc = edp_trace_from_msg(m, t);
  /* The message carries its own span only; the one it continues is the
   * --traceparent we were given. */
  if (!rc && c->has_trace_parent &&
      !strcmp(t->trace_id, c->trace_parent.trace_id) &&
      strcmp(t->span_id, c->trace_parent.span_id))
    memcpy(t->parent_id, c->trace_parent.span_id, sizeof(t->parent_id));
  return rc;
}
