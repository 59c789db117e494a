/* A forwarding receiver service in ~30 lines, linked against libedp. */
#include <stdio.h>

#include <edp.h>

static int handle(void *ud, const edp_delivery *d, char *reason, size_t len) {
  (void)ud; (void)reason; (void)len;
  printf("got %.*s\n", (int)d->body_len, (const char *)d->body);
  return 0;                               /* 0 = done: ack it */
}

int main(void) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = "amqp://guest:guest@localhost:5672/";
  edp_conn *c = NULL;
  char why[256];
  int rc = edp_conn_open(&o, &c, why, sizeof why);
  if (rc) { fprintf(stderr, "%s: %s\n", edp_strerror(rc), why); return 69; }
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = "orders";
  ro.handler = handle;
  edp_fwd_receiver *r = NULL;
  if (!(rc = edp_fwd_receiver_new(c, &ro, &r)))
    while ((rc = edp_fwd_receive(r, 5000)) == 0 || rc == EDP_ETIMEOUT)
      ;
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  return rc ? 1 : 0;
}
