/*
 * edp-config-server - the watch notification pattern's config server.
 * Serves registrations on config.q and reads commands on stdin:
 *   set KEY VALUE    change a value (VALUE is JSON, or else a string)
 * Each change goes to every service watching the key; services that are
 * gone are removed from the registry.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

#define MAX_LINE ((size_t)1 << 20)

/* Long-only options: values no short option (or common one) can take. */
enum {
  OPT_MAX_WATCHES = 256,
  OPT_MAX_PER_USER,
  OPT_PRUNE_INTERVAL,
  OPT_PRUNE_RATE
};

static void usage(void) {
  printf("usage: edp-config-server [options]\n"
         "Keeps configuration values and the services watching them; reads\n"
         "'set KEY VALUE' lines on stdin (VALUE: JSON, or else a string).\n"
         "  -s, --store FILE       the JSON store (default config-store.json)\n"
         "      --request-queue Q  registration queue (default config.q)\n"
         "      --queue-prefix P   also accept watch queues named P...\n"
         "                         (default: only server-named amq.gen-)\n"
         "      --max-watches N    registry bound (default 10000)\n"
         "      --max-per-user N   watches one user_id may hold (default "
         "1000)\n"
         "      --prune-interval S ping each watch's queue every S seconds\n"
         "                         to remove orphans (default 30, 0 = "
         "never)\n"
         "      --prune-rate N     at most N pings a second (default "
         "500)\n" CLI_METRICS_HELP CLI_COMMON_HELP);
}

static void on_event(void *ud, const edp_watch_info *in) {
  (void)ud;
  static const char *names[] = {"registered", "notified", "removed",
                                "rejected",   "changed",  "saved"};
  if (app.json) {
    json_t *o = json_pack("{s:s}", "event", names[in->event]);
    if (in->queue)
      cli_json_set(o, "queue", in->queue);
    if (in->service)
      cli_json_set(o, "service", in->service);
    if (in->key)
      cli_json_set(o, "key", in->key);
    if (in->event == EDP_WATCH_NOTIFIED || in->event == EDP_WATCH_CHANGED)
      json_object_set_new(o, "version", json_integer(in->version));
    if (in->detail && in->event == EDP_WATCH_REJECTED)
      cli_json_set(o, "reason", in->detail);
    if (in->user)
      cli_json_set(o, "user", in->user);
    if (in->event == EDP_WATCH_SAVED) {
      json_object_set_new(o, "watches", json_integer(in->version));
      json_object_set_new(o, "reason", json_string(in->detail));
    }
    cli_emit(o);
    return;
  }
  /* Names and keys come from requests anyone may send: escaped, so they
   * can neither forge lines nor send terminal escapes. */
  char svc[256], q[512], key[512], why[512], user[256];
  cli_text(in->service ? in->service : "?",
           in->service ? strlen(in->service) : 1, svc, sizeof(svc));
  cli_text(in->queue, in->queue ? strlen(in->queue) : 0, q, sizeof(q));
  cli_text(in->key, in->key ? strlen(in->key) : 0, key, sizeof(key));
  cli_text(in->detail, in->detail ? strlen(in->detail) : 0, why, sizeof(why));
  cli_text(in->user ? in->user : "?", in->user ? strlen(in->user) : 1, user,
           sizeof(user));
  switch (in->event) {
  case EDP_WATCH_REGISTERED:
    printf("Registered service %s (%s)\n", svc, q);
    break;
  case EDP_WATCH_NOTIFIED:
    printf("Notified %s (%s) of %s\n", svc, q, key);
    break;
  case EDP_WATCH_REMOVED:
    printf("Service not found: %s\nRemoving service from registry\n", q);
    break;
  case EDP_WATCH_REJECTED:
    fprintf(stderr,
            "edp-config-server: rejected a registration (user %s): %s\n", user,
            why);
    break;
  case EDP_WATCH_SAVED:
    break;
  case EDP_WATCH_CHANGED:
    printf("Config %s changed (version %lld)\n", key, (long long)in->version);
    break;
  }
  fflush(stdout);
}

/* Handles one stdin line; returns an exit code or -1 to go on. */
static int command(edp_watch_server *s, edp_conn *conn, char *line) {
  while (*line == ' ' || *line == '\t')
    line++;
  if (!*line || *line == '#')
    return -1;
  if (strncmp(line, "set ", 4)) {
    fprintf(stderr,
            "edp-config-server: unknown command (use: set KEY VALUE)\n");
    return -1;
  }
  char *key = line + 4;
  while (*key == ' ')
    key++;
  char *sp = strchr(key, ' ');
  if (!sp || !sp[1]) {
    fprintf(stderr, "edp-config-server: usage: set KEY VALUE\n");
    return -1;
  }
  *sp = '\0';
  int64_t version = 0;
  int rc = edp_watch_server_set(s, key, sp + 1, &version);
  if (rc == EDP_EINVAL || rc == EDP_ETOOBIG || rc == EDP_EBADDATA) {
    fprintf(stderr, "edp-config-server: set %s refused: %s\n", key,
            edp_strerror(rc));
    return -1;
  }
  if (rc == EDP_ESTOPPED)
    return CLI_INTERRUPTED;
  if (rc == EDP_EIO) {
    fprintf(stderr, "edp-config-server: cannot write the store: %s\n",
            strerror(errno));
    return CLI_SOFTWARE;
  }
  if (rc) {
    fprintf(stderr, "edp-config-server: set failed: %s (%d %s)\n",
            edp_strerror(rc), edp_conn_reply_code(conn),
            edp_conn_reply_text(conn));
    return cli_exit_code(rc);
  }
  cli_say(&app, "Enter new config value:\n");
  return -1;
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-config-server");
  static const struct option opts[] = {
      {"store", required_argument, NULL, 's'},
      {"request-queue", required_argument, NULL, 'Q'},
      {"queue-prefix", required_argument, NULL, 'P'},
      {"max-watches", required_argument, NULL, OPT_MAX_WATCHES},
      {"max-per-user", required_argument, NULL, OPT_MAX_PER_USER},
      {"prune-interval", required_argument, NULL, OPT_PRUNE_INTERVAL},
      {"prune-rate", required_argument, NULL, OPT_PRUNE_RATE},
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  edp_watch_server_opts so;
  edp_watch_server_opts_init(&so);
  so.store_path = "config-store.json";
  int opt;
  while ((opt = getopt_long(argc, argv, "s:" CLI_COMMON_SHORTOPTS, opts,
                            NULL)) != -1) {
    if (cli_common_opt(&app, opt, optarg, usage))
      continue;
    switch (opt) {
    case 's':
      so.store_path = optarg;
      break;
    case 'Q':
      so.request_queue = optarg;
      break;
    case 'P':
      if (strlen(optarg) < 3)
        cli_die(&app, CLI_USAGE, "--queue-prefix: at least 3 characters");
      so.queue_prefix = optarg;
      break;
    case OPT_MAX_WATCHES:
      so.max_watches =
          (size_t)cli_int(&app, "--max-watches", optarg, 1, 10000000);
      break;
    case OPT_MAX_PER_USER:
      so.max_per_user =
          (size_t)cli_int(&app, "--max-per-user", optarg, 1, 10000000);
      break;
    case OPT_PRUNE_INTERVAL:
      so.prune_interval_ms =
          (int)cli_int(&app, "--prune-interval", optarg, 0, 86400) * 1000;
      break;
    case OPT_PRUNE_RATE:
      so.prune_rate = (int)cli_int(&app, "--prune-rate", optarg, 1, 100000);
      break;
    default:
      fprintf(stderr, "Try 'edp-config-server --help'.\n");
      return CLI_USAGE;
    }
  }
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (!so.store_path[0] || !so.request_queue[0])
    cli_die(&app, CLI_USAGE, "--store and --request-queue must not be empty");

  edp_conn *conn = cli_connect(&app, "edp-config-server");
  so.on_event = on_event;
  edp_watch_server *s = NULL;
  int rc = edp_watch_server_new(conn, &so, &s);
  if (rc == EDP_EBADDATA)
    cli_die(&app, CLI_DATAERR, "%s is not a valid store; not touching it",
            so.store_path);
  if (rc == EDP_EIO)
    cli_die(&app, CLI_SOFTWARE, "cannot read %s: %s", so.store_path,
            strerror(errno));
  if (rc)
    cli_die_err(&app, conn, rc, "cannot start");
  fprintf(stderr,
          "edp-config-server: %zu value(s), %zu watch(es) from %s; serving "
          "%s\n",
          edp_watch_server_key_count(s), edp_watch_server_watch_count(s),
          so.store_path, so.request_queue);
  /* /healthz: 503 while the connection is down or blocked, or while the
   * request queue is not consumed. */
  metrics_serve ms = {0};
  metrics_serve_start(&ms, &app, conn, 1, s, edp_watch_server_collect);
  cli_say(&app, "Enter new config value:\n");

  /* One loop, one thread, one connection: wait on the broker socket and
   * stdin together. Lines are split here, not by getline(), so a partial
   * line never blocks the thread that must service heartbeats. */
  char *buf = malloc(MAX_LINE + 1);
  size_t len = 0;
  int in_fd = 0, code = -1;
  if (!buf)
    cli_die(&app, CLI_SOFTWARE, "out of memory");
  while (code < 0) {
    /* Woken once a second at least: serving also paces the pings that
     * find orphaned watches. */
    rc = edp_conn_wait(conn, in_fd, 1000);
    if (rc == EDP_ESTOPPED || cli_stopped()) {
      code = CLI_INTERRUPTED;
      break;
    }
    if (rc <= 0 || (rc & EDP_READY_DELIVERY)) {
      int src = edp_watch_server_serve(s, 0);
      if (src == EDP_ESTOPPED)
        code = CLI_INTERRUPTED;
      else if (src && src != EDP_ETIMEOUT)
        cli_die_err(&app, conn, src, "serving registrations failed");
    }
    if (rc > 0 && (rc & EDP_READY_WAKE)) {
      ssize_t n = read(in_fd, buf + len, MAX_LINE - len);
      if (n <= 0) {
        in_fd = -1; /* stdin closed: keep serving registrations */
        if (len) {
          buf[len] = '\0';
          code = command(s, conn, buf);
          len = 0;
        }
        continue;
      }
      len += (size_t)n;
      char *start = buf, *nl;
      while (code < 0 &&
             (nl = memchr(start, '\n', len - (size_t)(start - buf)))) {
        *nl = '\0';
        code = command(s, conn, start);
        start = nl + 1;
      }
      len -= (size_t)(start - buf);
      memmove(buf, start, len);
      if (len == MAX_LINE) {
        fprintf(stderr,
                "edp-config-server: input line over %zu bytes dropped\n",
                MAX_LINE);
        len = 0;
      }
    }
  }
  free(buf);
  metrics_serve_stop(&ms, &app);
  edp_watch_server_destroy(&s);
  edp_conn_destroy(&conn);
  return code;
}
