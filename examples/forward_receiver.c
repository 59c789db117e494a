/*
 * forward_receiver - a service built on libedp alone: it processes the
 * messages of a durable queue with the event forwarding pattern (ack after
 * processing, retries, dead-letter queue) and exits after 5 s without one.
 *
 *   cc -o forward_receiver forward_receiver.c $(pkg-config --cflags --libs edp)
 *   EDP_URL=amqp://guest:guest@localhost:5672 ./forward_receiver orders
 */
#include <edp.h>
#include <stdio.h>
#include <stdlib.h>

static int handle(void *ud, const edp_delivery *d, char *reason, size_t len) {
  (void)ud, (void)reason, (void)len;
  printf("got %s: %.*s\n", d->message_id ? d->message_id : "?",
         (int)d->body_len, (const char *)d->body);
  return 0; /* done: ack it */
}

int main(int argc, char **argv) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = getenv("EDP_URL"); /* NULL: amqp://guest:guest@localhost:5672 */
  edp_conn *c = NULL;
  char why[256];
  int rc = edp_conn_open(&o, &c, why, sizeof why);
  if (rc) {
    fprintf(stderr, "%s: %s\n", edp_strerror(rc), why);
    return 69;
  }
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = argc > 1 ? argv[1] : "orders";
  ro.handler = handle;
  edp_fwd_receiver *r = NULL;
  if (!(rc = edp_fwd_receiver_new(c, &ro, &r)))
    while ((rc = edp_fwd_receive(r, 5000)) == 0)
      ;
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  return rc == EDP_ETIMEOUT ? 0 : 1;
}
