/*
 * edp-watch-service - a service of the watch notification pattern: it
 * registers a temporary queue with the config server and prints the
 * configuration it gets, then every change. Its queue dies with it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

static void usage(void) {
  printf("usage: edp-watch-service [options]\n"
         "Watches configuration keys through the config server.\n"
         "  -n, --name NAME        service name (default service)\n"
         "  -k, --keys K1,K2       keys to watch (default: all)\n"
         "      --request-queue Q  the server's queue (default config.q)\n"
         "      --count N          exit 0 after N changes\n"
         "      --idle-timeout MS  exit 0 after MS ms without an "
         "update\n" CLI_METRICS_HELP CLI_COMMON_HELP);
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-watch-service");
  static const struct option opts[] = {
      {"name", required_argument, NULL, 'n'},
      {"keys", required_argument, NULL, 'k'},
      {"request-queue", required_argument, NULL, 'Q'},
      {"count", required_argument, NULL, 'c'},
      {"idle-timeout", required_argument, NULL, 'i'},
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *name = "service", *request_queue = NULL;
  char *keys_arg = NULL;
  long count = -1, idle = -1;
  int opt;
  while ((opt = getopt_long(argc, argv, "n:k:" CLI_COMMON_SHORTOPTS, opts,
                            NULL)) != -1) {
    if (cli_common_opt(&app, opt, optarg, usage))
      continue;
    switch (opt) {
    case 'n':
      name = optarg;
      break;
    case 'k':
      keys_arg = optarg;
      break;
    case 'Q':
      request_queue = optarg;
      break;
    case 'c':
      count = cli_int(&app, "count", optarg, 0, 1000000000L);
      break;
    case 'i':
      idle = cli_int(&app, "idle-timeout", optarg, 0, 86400000L);
      break;
    default:
      fprintf(stderr, "Try 'edp-watch-service --help'.\n");
      return CLI_USAGE;
    }
  }
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (keys_arg && !keys_arg[strspn(keys_arg, ",")])
    cli_die(&app, CLI_USAGE, "--keys: no key given (omit --keys to watch all)");
  const char *keys[EDP_WATCH_MAX_KEYS];
  size_t n_keys = 0;
  for (char *k = keys_arg ? strtok(keys_arg, ",") : NULL; k;
       k = strtok(NULL, ",")) {
    if (n_keys == EDP_WATCH_MAX_KEYS)
      cli_die(&app, CLI_USAGE, "--keys: at most %d keys", EDP_WATCH_MAX_KEYS);
    keys[n_keys++] = k;
  }

  edp_conn *conn = cli_connect(&app, name);
  edp_watch_client *cl = NULL;
  int rc = edp_watch_client_new(conn, name, keys, n_keys, request_queue, &cl);
  if (rc == EDP_EINVAL)
    cli_die(&app, CLI_USAGE, "bad --name or --keys (printable, short)");
  if (rc)
    cli_die_err(&app, conn, rc, "cannot register");
  fprintf(stderr, "edp-watch-service: %s watching through %s\n", name,
          edp_watch_client_queue(cl));
  /* /healthz: 503 while the connection is down or blocked, or while the
   * watch queue is not consumed. */
  metrics_serve ms = {0};
  metrics_serve_start(&ms, &app, conn, 1, cl, edp_watch_client_collect);
  long changes = 0;
  int code = CLI_OK;
  while (count < 0 || changes < count) {
    edp_watch_update u;
    rc = edp_watch_client_next(cl, &u, (int)idle);
    if (rc == EDP_ETIMEOUT)
      break;
    if (rc == EDP_ESTOPPED || cli_stopped()) {
      edp_watch_update_clear(&u); /* an update may have come with the signal */
      code = CLI_INTERRUPTED;
      break;
    }
    if (rc == EDP_EACCESS || rc == EDP_EPROTOCOL) {
      fprintf(stderr, "edp-watch-service: registration refused: %s\n",
              u.value ? u.value : "?");
      edp_watch_update_clear(&u);
      code = CLI_NOPERM;
      break;
    }
    if (rc) {
      fprintf(stderr, "edp-watch-service: %s\n", edp_strerror(rc));
      code = cli_exit_code(rc);
      break;
    }
    if (!u.key) {
      if (app.json)
        cli_emit(json_pack("{s:s,s:s,s:s}", "event", "registered", "service",
                           name, "queue", edp_watch_client_queue(cl)));
      else
        printf("Registered with the config server (%s)\n",
               edp_watch_client_queue(cl));
    } else if (app.json) {
      json_t *v = json_loads(u.value, JSON_DECODE_ANY, NULL);
      json_t *o =
          json_pack("{s:s,s:o?,s:I,s:b}", "event", "config", "value", v,
                    "version", (json_int_t)u.version, "initial", u.initial);
      cli_json_set(o, "service", name);
      cli_json_set(o, "key", u.key);
      cli_emit(o);
    } else {
      /* A string value prints as the talk shows it, without quotes. */
      json_t *v = json_loads(u.value, JSON_DECODE_ANY, NULL);
      const char *text = json_is_string(v) ? json_string_value(v) : u.value;
      char key[512], val[2048];
      cli_text(u.key, strlen(u.key), key, sizeof(key));
      cli_text(text, text ? strlen(text) : 0, val, sizeof(val));
      if (u.initial)
        printf("Config value %s: %s\n", key, val);
      else
        printf("New Config Value Received: %s = %s\n", key, val);
      json_decref(v);
    }
    fflush(stdout);
    if (u.key && !u.initial)
      changes++;
    edp_watch_update_clear(&u);
  }
  /* Messages someone else put in our queue: worth knowing, never shown. */
  size_t dropped = edp_watch_client_dropped(cl);
  if (dropped && app.json)
    cli_emit(json_pack("{s:s,s:s,s:I}", "event", "dropped", "service", name,
                       "count", (json_int_t)dropped));
  else if (dropped)
    fprintf(stderr,
            "edp-watch-service: dropped %zu message(s) not from the config "
            "server\n",
            dropped);
  metrics_serve_stop(&ms, &app);
  edp_watch_client_destroy(&cl);
  edp_conn_destroy(&conn);
  return code;
}
