/*
 * edp-bench-watch - watch notification at scale: 200 watching services
 * (threads, each with its own connection and temporary queue) and one
 * config server; for 50 changes, the time from the change until every
 * service has it. The server needs one connection, not 200.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define SERVICES 200
#define CHANGES 50

static cli app;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int got[CHANGES + 1];
static int ready, failed;
static char request_queue[64];

static void *service(void *arg) {
  (void)arg;
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = cli_url(&app);
  edp_conn *c = NULL;
  edp_watch_client *cl = NULL;
  int rc = edp_conn_open(&o, &c, NULL, 0);
  if (!rc)
    rc = edp_watch_client_new(c, "bench", NULL, 0, request_queue, &cl);
  int seen = 0;
  while (!rc && seen < CHANGES) {
    edp_watch_update u;
    rc = edp_watch_client_next(cl, &u, 30000);
    if (rc)
      break;
    pthread_mutex_lock(&mu);
    if (!u.key)
      ready++;
    else if (!u.initial && u.version >= 1 && u.version <= CHANGES) {
      got[u.version]++;
      seen++;
    }
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    edp_watch_update_clear(&u);
  }
  if (rc) {
    pthread_mutex_lock(&mu);
    failed++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
  }
  edp_watch_client_destroy(&cl);
  edp_conn_destroy(&c);
  return NULL;
}

static int cmp_ll(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return x < y ? -1 : x > y;
}

int main(void) {
  cli_init(&app, "edp-bench-watch");
  snprintf(request_queue, sizeof(request_queue), "bench.config.%d",
           (int)getpid());
  char store[128];
  snprintf(store, sizeof(store), "/tmp/edp-bench-watch-%d.json", (int)getpid());
  edp_conn *c = cli_connect(&app, "edp-bench-watch-server");
  edp_watch_server_opts so;
  edp_watch_server_opts_init(&so);
  so.store_path = store;
  so.request_queue = request_queue;
  edp_watch_server *s = NULL;
  int rc = edp_watch_server_new(c, &so, &s);
  if (rc)
    cli_die_err(&app, c, rc, "server");
  pthread_t th[SERVICES];
  for (int i = 0; i < SERVICES; i++)
    if (pthread_create(&th[i], NULL, service, NULL))
      cli_die(&app, CLI_SOFTWARE, "pthread_create failed");
  fprintf(stderr, "watch: registering %d services...\n", SERVICES);
  int64_t until = edp_now_ms() + 120000;
  for (;;) {
    pthread_mutex_lock(&mu);
    int r = ready, f = failed;
    pthread_mutex_unlock(&mu);
    if (r + f >= SERVICES)
      break;
    if (edp_now_ms() > until)
      cli_die(&app, CLI_SOFTWARE, "only %d services registered", r);
    rc = edp_watch_server_serve(s, 200);
    if (rc && rc != EDP_ETIMEOUT)
      cli_die_err(&app, c, rc, "serve");
  }
  if (failed)
    cli_die(&app, CLI_SOFTWARE, "%d services failed", failed);
  long long lat[CHANGES];
  for (int v = 1; v <= CHANGES; v++) {
    char value[32];
    snprintf(value, sizeof(value), "%d", v);
    int64_t t0 = edp_now_ms();
    rc = edp_watch_server_set(s, "level", value, NULL);
    if (rc)
      cli_die_err(&app, c, rc, "set");
    pthread_mutex_lock(&mu);
    while (got[v] < SERVICES && !failed) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_sec += 10;
      if (pthread_cond_timedwait(&cv, &mu, &ts))
        break;
    }
    int n = got[v];
    pthread_mutex_unlock(&mu);
    if (n < SERVICES)
      cli_die(&app, CLI_SOFTWARE, "change %d reached only %d services", v, n);
    lat[v - 1] = edp_now_ms() - t0;
  }
  for (int i = 0; i < SERVICES; i++)
    pthread_join(th[i], NULL);
  qsort(lat, CHANGES, sizeof(lat[0]), cmp_ll);
  /* nearest-rank percentiles: with 50 samples p99 is the largest */
  long long p50 = lat[(CHANGES * 50 + 99) / 100 - 1];
  long long p99 = lat[(CHANGES * 99 + 99) / 100 - 1];
  printf("## Watch notification (`edp-bench-watch`)\n\n");
  printf("%d services watching (threads, each with its own connection and\n"
         "temporary queue), one config server; %d changes, each published to\n"
         "every service with mandatory set and confirmed.\n\n",
         SERVICES, CHANGES);
  printf("| measure | value |\n|---|---:|\n");
  printf("| time until all %d services have a change, p50 | %lld ms |\n",
         SERVICES, p50);
  printf("| time until all %d services have a change, p99 | %lld ms |\n",
         SERVICES, p99);
  printf("| server connections with the pattern | 1 |\n");
  printf("| server connections if it called each service directly | %d |\n",
         SERVICES);
  printf("| ratio | 1 : %d |\n", SERVICES);
  edp_watch_server_destroy(&s);
  edp_conn_destroy(&c);
  unlink(store);
  return 0;
}
