/*
 * fuzz_headers.c - libFuzzer target for the conversion between AMQP field
 * tables and edp_field arrays (lib/edp_fields.c), both ways, nested.
 *
 * The input is the body of an encoded field table (the target prepends
 * its 32-bit length) and goes through rabbitmq-c's own decoder,
 * amqp_decode_table: exported by librabbitmq 0.11 though only declared in
 * its private header. Whatever it accepts must survive AMQP -> edp_field
 * -> deep copy -> AMQP and encode to exactly the bytes the decoded table
 * encodes to; the typed lookups and edp_msg_dup must not misbehave on it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "edp_conn_internal.h"

int amqp_decode_table(amqp_bytes_t encoded, amqp_pool_t *pool,
                      amqp_table_t *output, size_t *offset);
int amqp_encode_table(amqp_bytes_t encoded, amqp_table_t *input,
                      size_t *offset);

static size_t encode(amqp_table_t *t, char *buf, size_t cap) {
  size_t off = 0;
  amqp_bytes_t b = {cap, buf};
  if (amqp_encode_table(b, t, &off))
    __builtin_trap(); /* cap is twice what it decoded from */
  return off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 1 << 20)
    return 0;
  uint8_t *in = malloc(size + 4);
  in[0] = (uint8_t)(size >> 24);
  in[1] = (uint8_t)(size >> 16);
  in[2] = (uint8_t)(size >> 8);
  in[3] = (uint8_t)size;
  if (size)
    memcpy(in + 4, data, size);
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  amqp_table_t t;
  size_t off = 0;
  amqp_bytes_t enc = {size + 4, in};
  if (amqp_decode_table(enc, &pool, &t, &off) == 0) {
    size_t cap = 2 * size + 64;
    char *want = malloc(cap), *got = malloc(cap);
    size_t wl = encode(&t, want, cap);

    edp_field *f = NULL;
    size_t n = 0;
    if (edp__fields_from_amqp(&t, &f, &n) == 0) {
      size_t dn = 0;
      edp_field *dup = edp_fields_dup(f, n, &dn);
      if (n && (!dup || dn != n))
        __builtin_trap();
      amqp_pool_t back;
      init_amqp_pool(&back, 4096);
      amqp_table_t t2;
      if (edp__fields_to_amqp(&back, dup, dn, &t2))
        __builtin_trap(); /* everything decoded must encode */
      size_t gl = encode(&t2, got, cap);
      if (gl != wl || memcmp(got, want, wl))
        __builtin_trap(); /* not a faithful round trip */
      empty_amqp_pool(&back);

      /* The views the patterns use on untrusted headers. */
      edp_delivery d;
      memset(&d, 0, sizeof(d));
      d.headers = dup;
      d.n_headers = dn;
      int64_t v;
      for (size_t i = 0; i < dn; i++) {
        edp_delivery_header_str(&d, dup[i].key);
        edp_delivery_header_int(&d, dup[i].key, &v);
      }
      edp_delivery_header_int(&d, EDP_FWD_HDR_RETRIES, &v);
      edp_msg m;
      edp_msg_from_delivery(&m, &d);
      m.routing_key = "q";
      edp_msg *copy = edp_msg_dup(&m);
      if (n && (!copy || copy->n_table != n))
        __builtin_trap();
      free(copy);
      free(dup);
      free(f);
    }
    free(want);
    free(got);
  }
  empty_amqp_pool(&pool);
  free(in);
  return 0;
}
