/*
 * metrics_http.c - GET /metrics and GET /healthz for the programs, on
 * libmicrohttpd's own polling thread.
 *
 * libmicrohttpd rather than a hand-written server: a scrape endpoint
 * faces whatever reaches the port, and parsing HTTP safely is its job.
 * The handler only reads: the registry renders the counters (each object
 * read atomically, the registry's lock held), and the health function
 * reads the connection's state the same way. It binds to loopback unless
 * given a host: a metrics endpoint tells anyone who reaches it what the
 * service does.
 */
#include "metrics_http.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libmicrohttpd is loaded when a program is asked to serve metrics, not
 * when it starts: it brings GnuTLS and its dependencies (p11-kit, nettle,
 * gmp, libunistring ...), whose loading and initialisation made every
 * program about 2.5 MiB bigger (edp-forward-receiver's peak RSS 4.2 ->
 * 6.7 MiB) whether it served /metrics or not. The calls below go through
 * these pointers, filled once by load_mhd(). */
static struct {
  void *lib;
  __typeof__(MHD_start_daemon) *start_daemon;
  __typeof__(MHD_stop_daemon) *stop_daemon;
  __typeof__(MHD_get_daemon_info) *get_daemon_info;
  __typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
  __typeof__(MHD_add_response_header) *add_response_header;
  __typeof__(MHD_queue_response) *queue_response;
  __typeof__(MHD_destroy_response) *destroy_response;
} mhd;

#define MHD_start_daemon (*mhd.start_daemon)
#define MHD_stop_daemon (*mhd.stop_daemon)
#define MHD_get_daemon_info (*mhd.get_daemon_info)
#define MHD_create_response_from_buffer (*mhd.create_response_from_buffer)
#define MHD_add_response_header (*mhd.add_response_header)
#define MHD_queue_response (*mhd.queue_response)
#define MHD_destroy_response (*mhd.destroy_response)

/* Called on the main thread before the daemon starts (so before any
 * other thread uses the pointers). 0, or -1 with dlerror() saying why. */
static int load_mhd(void) {
  if (mhd.lib)
    return 0;
  void *lib = dlopen("libmicrohttpd.so.12", RTLD_NOW | RTLD_LOCAL);
  if (!lib)
    return -1;
#define EDP__SYM(field, name)                                                  \
  if (!(*(void **)&mhd.field = dlsym(lib, name))) {                            \
    dlclose(lib);                                                              \
    return -1;                                                                 \
  }
  EDP__SYM(start_daemon, "MHD_start_daemon")
  EDP__SYM(stop_daemon, "MHD_stop_daemon")
  EDP__SYM(get_daemon_info, "MHD_get_daemon_info")
  EDP__SYM(create_response_from_buffer, "MHD_create_response_from_buffer")
  EDP__SYM(add_response_header, "MHD_add_response_header")
  EDP__SYM(queue_response, "MHD_queue_response")
  EDP__SYM(destroy_response, "MHD_destroy_response")
#undef EDP__SYM
  mhd.lib = lib;
  return 0;
}

struct metrics_http {
  struct MHD_Daemon *d;
  int port;
  edp_metrics *m;
  metrics_health_fn health;
  void *ud;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status,
                             const char *type, char *body, size_t len,
                             int owned) {
  struct MHD_Response *r = MHD_create_response_from_buffer(
      len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
  if (!r) {
    if (owned)
      free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  enum MHD_Result ok = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_len, void **state) {
  (void)version;
  (void)upload;
  metrics_http *h = cls;
  static const char *text = "text/plain; charset=utf-8";
  /* A request body is never wanted; the first call for a request comes
   * before any of it, and answering then refuses the rest. */
  (void)state;
  if (*upload_len)
    return MHD_NO;
  if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, "HEAD"))
    return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, text, "only GET and HEAD\n",
                 18, 0);
  if (!strcmp(url, "/metrics")) {
    char *body = NULL;
    size_t len = 0;
    if (edp_metrics_render(h->m, &body, &len))
      return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, text,
                   "out of memory\n", 14, 0);
    return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                 body, len, 1);
  }
  if (!strcmp(url, "/healthz")) {
    char reason[256] = "ok";
    int status = h->health ? h->health(h->ud, reason, sizeof(reason)) : 200;
    char line[300];
    int n = snprintf(line, sizeof(line), "%s\n", reason);
    return reply(conn,
                 status == 200 ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                 text, line, (size_t)n, 0);
  }
  return reply(conn, MHD_HTTP_NOT_FOUND, text, "try /metrics or /healthz\n", 25,
               0);
}

/* Splits "HOST:PORT", "[V6]:PORT" or "PORT" into host and port. */
static int split_addr(const char *addr, char *host, size_t hlen, char *port,
                      size_t plen) {
  const char *colon = strrchr(addr, ':');
  const char *h = "127.0.0.1", *p = addr;
  size_t hl = strlen(h);
  if (colon) {
    h = addr;
    hl = (size_t)(colon - addr);
    p = colon + 1;
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
      h++;
      hl -= 2;
    }
  }
  if (!hl || hl >= hlen || !p[0] || strlen(p) >= plen ||
      strspn(p, "0123456789") != strlen(p) || atol(p) > 65535)
    return -1;
  memcpy(host, h, hl);
  host[hl] = '\0';
  snprintf(port, plen, "%s", p);
  return 0;
}

metrics_http *metrics_http_start(const cli *c, const char *addr, edp_metrics *m,
                                 metrics_health_fn health, void *ud) {
  char host[256], port[16];
  if (split_addr(addr, host, sizeof(host), port, sizeof(port)))
    cli_die(c, CLI_USAGE,
            "--metrics %s: expected HOST:PORT, [IPV6]:PORT or "
            "PORT",
            addr);
  if (load_mhd())
    cli_die(c, CLI_SOFTWARE, "--metrics: cannot load libmicrohttpd: %s",
            dlerror());
  struct addrinfo hints = {0}, *ai = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  int gai = getaddrinfo(host, port, &hints, &ai);
  if (gai)
    cli_die(c, CLI_USAGE, "--metrics %s: %s", addr, gai_strerror(gai));
  metrics_http *h = calloc(1, sizeof(*h));
  if (!h)
    cli_die(c, CLI_SOFTWARE, "out of memory");
  h->m = m;
  h->health = health;
  h->ud = ud;
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
  if (ai->ai_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  h->d = MHD_start_daemon(
      flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)16, MHD_OPTION_CONNECTION_TIMEOUT,
      (unsigned)10, MHD_OPTION_END);
  freeaddrinfo(ai);
  if (!h->d)
    cli_die(c, CLI_UNAVAILABLE, "--metrics %s: cannot listen there", addr);
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
  unsigned bound = info ? info->port : (unsigned)atoi(port);
  h->port = (int)bound;
  char url[300];
  snprintf(url, sizeof(url),
           strchr(host, ':') ? "http://[%s]:%u/metrics"
                             : "http://%s:%u/metrics",
           host, bound);
  fprintf(stderr, "%s: metrics on %s\n", c->prog, url);
  if (c->json) {
    json_t *o = json_pack("{s:s,s:i}", "event", "metrics_listening", "port",
                          (int)bound);
    cli_json_set(o, "url", url);
    cli_emit(o);
  }
  return h;
}

int metrics_http_port(const metrics_http *h) { return h ? h->port : 0; }

void metrics_http_stop(metrics_http **hp) {
  if (!hp || !*hp)
    return;
  MHD_stop_daemon((*hp)->d);
  free(*hp);
  *hp = NULL;
}

int metrics_conn_health(const edp_conn *conn, int consumers, char *reason,
                        size_t len) {
  edp_conn_stats s;
  if (cli_stopped()) {
    snprintf(reason, len, "stopping");
    return 503;
  }
  if (edp_conn_stats_get(conn, &s)) {
    snprintf(reason, len, "no connection");
    return 503;
  }
  if (s.state == EDP_CONN_STATE_DOWN) {
    snprintf(reason, len, "connection lost, reconnecting");
    return 503;
  }
  if (s.state == EDP_CONN_STATE_BLOCKED) {
    snprintf(reason, len, "blocked by the broker (resource alarm)");
    return 503;
  }
  if (s.consumers < consumers) {
    snprintf(reason, len, "not consuming (%d of %d consumers)", s.consumers,
             consumers);
    return 503;
  }
  snprintf(reason, len, "ok");
  return 200;
}

int metrics_conn_health_fn(void *ud, char *reason, size_t len) {
  const metrics_conn_health_arg *a = ud;
  if (__atomic_load_n(&a->finished, __ATOMIC_RELAXED) && !cli_stopped()) {
    snprintf(reason, len, "finished");
    return 503;
  }
  return metrics_conn_health(a->conn, a->consumers, reason, len);
}

void metrics_serve_start(metrics_serve *s, const cli *c, edp_conn *conn,
                         int consumers, const void *obj,
                         edp_metrics_collect_fn fn) {
  if (!c->metrics_addr)
    return;
  if (edp_metrics_new(&s->reg) ||
      edp_metrics_add(s->reg, conn, edp_conn_collect) ||
      (obj && edp_metrics_add(s->reg, obj, fn)))
    cli_die(c, CLI_SOFTWARE, "out of memory");
  s->health.conn = conn;
  s->health.consumers = consumers;
  s->http = metrics_http_start(c, c->metrics_addr, s->reg,
                               metrics_conn_health_fn, &s->health);
}

static int serve_obj_health(void *ud, char *reason, size_t len) {
  metrics_serve *s = ud;
  if (cli_stopped()) {
    snprintf(reason, len, "stopping");
    return 503;
  }
  if (__atomic_load_n(&s->health.finished, __ATOMIC_RELAXED)) {
    snprintf(reason, len, "finished");
    return 503;
  }
  if (s->fn)
    return s->fn(s->fn_ud, reason, len);
  snprintf(reason, len, "ok");
  return 200;
}

void metrics_serve_start_obj(metrics_serve *s, const cli *c, const void *obj,
                             edp_metrics_collect_fn fn,
                             metrics_health_fn health, void *ud) {
  if (!c->metrics_addr)
    return;
  if (edp_metrics_new(&s->reg) || edp_metrics_add(s->reg, obj, fn))
    cli_die(c, CLI_SOFTWARE, "out of memory");
  s->fn = health;
  s->fn_ud = ud;
  s->http = metrics_http_start(c, c->metrics_addr, s->reg, serve_obj_health, s);
}

void metrics_serve_stop(metrics_serve *s, const cli *c) {
  if (s->http && c->metrics_hold_ms > 0 && !cli_stopped()) {
    __atomic_store_n(&s->health.finished, 1, __ATOMIC_RELAXED);
    if (c->json)
      cli_emit(json_pack("{s:s,s:I}", "event", "metrics_hold", "ms",
                         (json_int_t)c->metrics_hold_ms));
    edp_sleep_ms((int)c->metrics_hold_ms, cli_stop_fd());
  }
  metrics_http_stop(&s->http);
  edp_metrics_destroy(&s->reg);
}

void metrics_sent_collect(const void *sent, edp_metrics_out *out) {
  const metrics_sent *x = sent;
  edp_metrics_messages(out, EDP_MSGS_SENT, x->labels, edp_count_read(&x->n));
}

void metrics_serve_add(metrics_serve *s, const cli *c, const void *obj,
                       edp_metrics_collect_fn fn) {
  if (s->reg && edp_metrics_add(s->reg, obj, fn))
    cli_die(c, CLI_SOFTWARE, "out of memory");
}
