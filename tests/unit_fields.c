/*
 * unit_fields.c - AMQP field tables <-> edp_field, both ways, over the
 * whole field-table grammar (every type, nested arrays and tables, bytes
 * with NULs, extreme values): a round trip must encode to the same bytes
 * as the original, and deep copies (edp_fields_dup, edp_msg_dup) must be
 * independent of their source. Also the delivery's typed lookups and the
 * properties edp_msg_from_delivery carries over.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "edp_conn_internal.h"

/* Exported by librabbitmq 0.11 but declared only in its private header. */
int amqp_encode_table(amqp_bytes_t encoded, amqp_table_t *input,
                      size_t *offset);
int amqp_decode_table(amqp_bytes_t encoded, amqp_pool_t *pool,
                      amqp_table_t *output, size_t *offset);

static amqp_bytes_t B(const char *s, size_t n) {
  amqp_bytes_t b = {n, (void *)s};
  return b;
}

/* A table with every kind, two nesting levels, empty containers, a key
 * and strings with NUL bytes, and the extreme values of each type. */
static amqp_table_t grammar(amqp_pool_t *pool) {
  static const char nul_key[] = "k\0ey";
  static const char bin[] = {0, 1, 2, (char)0xff, 0, 'x'};
  amqp_field_value_t *inner = amqp_pool_alloc(pool, 4 * sizeof(*inner));
  inner[0] = (amqp_field_value_t){AMQP_FIELD_KIND_I32, {.i32 = INT32_MIN}};
  inner[1] = (amqp_field_value_t){AMQP_FIELD_KIND_UTF8,
                                  {.bytes = B("\xc3\xa9t\xc3\xa9", 5)}};
  inner[2] = (amqp_field_value_t){AMQP_FIELD_KIND_ARRAY,
                                  {.array = {0, NULL}}}; /* empty */
  inner[3] = (amqp_field_value_t){AMQP_FIELD_KIND_VOID, {.i8 = 0}};
  amqp_table_entry_t *death = amqp_pool_alloc(pool, 5 * sizeof(*death));
  death[0] =
      (amqp_table_entry_t){B("count", 5), {AMQP_FIELD_KIND_I64, {.i64 = 3}}};
  death[1] = (amqp_table_entry_t){
      B("reason", 6), {AMQP_FIELD_KIND_UTF8, {.bytes = B("rejected", 8)}}};
  death[2] = (amqp_table_entry_t){
      B("time", 4), {AMQP_FIELD_KIND_TIMESTAMP, {.u64 = 1764582000}}};
  death[3] = (amqp_table_entry_t){
      B("routing-keys", 12), {AMQP_FIELD_KIND_ARRAY, {.array = {4, inner}}}};
  death[4] = (amqp_table_entry_t){
      B("empty", 5), {AMQP_FIELD_KIND_TABLE, {.table = {0, NULL}}}};
  amqp_field_value_t *deaths = amqp_pool_alloc(pool, 2 * sizeof(*deaths));
  deaths[0] =
      (amqp_field_value_t){AMQP_FIELD_KIND_TABLE, {.table = {5, death}}};
  deaths[1] =
      (amqp_field_value_t){AMQP_FIELD_KIND_TABLE, {.table = {2, death}}};
  amqp_table_entry_t *e = amqp_pool_alloc(pool, 20 * sizeof(*e));
  int n = 0;
  e[n++] = (amqp_table_entry_t){B("bool", 4),
                                {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}};
  e[n++] = (amqp_table_entry_t){B("i8", 2), {AMQP_FIELD_KIND_I8, {.i8 = -128}}};
  e[n++] = (amqp_table_entry_t){B("u8", 2), {AMQP_FIELD_KIND_U8, {.u8 = 255}}};
  e[n++] =
      (amqp_table_entry_t){B("i16", 3), {AMQP_FIELD_KIND_I16, {.i16 = -32768}}};
  e[n++] =
      (amqp_table_entry_t){B("u16", 3), {AMQP_FIELD_KIND_U16, {.u16 = 65535}}};
  e[n++] = (amqp_table_entry_t){B("i32", 3),
                                {AMQP_FIELD_KIND_I32, {.i32 = INT32_MAX}}};
  e[n++] = (amqp_table_entry_t){B("u32", 3),
                                {AMQP_FIELD_KIND_U32, {.u32 = UINT32_MAX}}};
  e[n++] = (amqp_table_entry_t){B("i64", 3),
                                {AMQP_FIELD_KIND_I64, {.i64 = INT64_MIN}}};
  e[n++] = (amqp_table_entry_t){B("u64", 3),
                                {AMQP_FIELD_KIND_U64, {.u64 = UINT64_MAX}}};
  e[n++] = (amqp_table_entry_t){B("f32", 3),
                                {AMQP_FIELD_KIND_F32, {.f32 = -FLT_MIN}}};
  e[n++] = (amqp_table_entry_t){B("f64", 3),
                                {AMQP_FIELD_KIND_F64, {.f64 = DBL_MAX}}};
  e[n++] = (amqp_table_entry_t){
      B("dec", 3), {AMQP_FIELD_KIND_DECIMAL, {.decimal = {2, 314159}}}};
  e[n++] = (amqp_table_entry_t){B("bytes", 5),
                                {AMQP_FIELD_KIND_BYTES, {.bytes = B(bin, 6)}}};
  e[n++] = (amqp_table_entry_t){B("empty-str", 9),
                                {AMQP_FIELD_KIND_UTF8, {.bytes = B("", 0)}}};
  e[n++] = (amqp_table_entry_t){
      B(nul_key, 4), {AMQP_FIELD_KIND_UTF8, {.bytes = B("a\0b", 3)}}};
  e[n++] =
      (amqp_table_entry_t){B("ts", 2), {AMQP_FIELD_KIND_TIMESTAMP, {.u64 = 0}}};
  e[n++] =
      (amqp_table_entry_t){B("void", 4), {AMQP_FIELD_KIND_VOID, {.i8 = 0}}};
  e[n++] = (amqp_table_entry_t){
      B("x-death", 7), {AMQP_FIELD_KIND_ARRAY, {.array = {2, deaths}}}};
  e[n++] = (amqp_table_entry_t){B("", 0), {AMQP_FIELD_KIND_I8, {.i8 = 1}}};
  e[n++] = (amqp_table_entry_t){B("i8", 2), {AMQP_FIELD_KIND_I8, {.i8 = 2}}};
  amqp_table_t t = {n, e};
  return t;
}

/* The table's wire encoding, malloc'd, into *len. */
static char *encode(amqp_table_t *t, size_t *len) {
  char *buf = malloc(65536);
  size_t off = 0;
  ck_assert_int_eq(amqp_encode_table(B(buf, 65536), t, &off), 0);
  *len = off;
  return buf;
}

static char *encode_fields(const edp_field *f, size_t n, size_t *len) {
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  amqp_table_t t;
  ck_assert_int_eq(edp__fields_to_amqp(&pool, f, n, &t), 0);
  char *buf = encode(&t, len);
  empty_amqp_pool(&pool);
  return buf;
}

START_TEST(round_trip_full_grammar) {
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  amqp_table_t t = grammar(&pool);
  size_t want_len = 0, got_len = 0, dup_len = 0;
  char *want = encode(&t, &want_len);

  edp_field *f = NULL;
  size_t n = 0;
  ck_assert_int_eq(edp__fields_from_amqp(&t, &f, &n), 0);
  ck_assert_uint_eq(n, (size_t)t.num_entries);
  char *got = encode_fields(f, n, &got_len);
  ck_assert_uint_eq(got_len, want_len);
  ck_assert(!memcmp(got, want, want_len));

  /* A deep copy encodes the same and outlives its source. */
  size_t dn = 0;
  edp_field *dup = edp_fields_dup(f, n, &dn);
  ck_assert_ptr_nonnull(dup);
  free(f);
  empty_amqp_pool(&pool);
  char *again = encode_fields(dup, dn, &dup_len);
  ck_assert_uint_eq(dup_len, want_len);
  ck_assert(!memcmp(again, want, want_len));

  /* The typed view: kinds, values, lengths, NULs kept. */
  ck_assert_int_eq(dup[0].value.kind, EDP_FIELD_BOOL);
  ck_assert_int_eq(dup[0].value.v.i, 1);
  ck_assert_int_eq(dup[8].value.kind, EDP_FIELD_U64);
  ck_assert(dup[8].value.v.u == UINT64_MAX);
  ck_assert_int_eq(dup[12].value.kind, EDP_FIELD_BYTES);
  ck_assert_uint_eq(dup[12].value.v.bytes.len, 6);
  ck_assert_uint_eq(dup[14].key_len, 4);
  ck_assert(!memcmp(dup[14].key, "k\0ey", 4));
  const edp_value *x = &dup[17].value;
  ck_assert_int_eq(x->kind, EDP_FIELD_ARRAY);
  ck_assert_uint_eq(x->v.array.n, 2);
  ck_assert_int_eq(x->v.array.v[0].kind, EDP_FIELD_TABLE);
  ck_assert_uint_eq(x->v.array.v[0].v.table.n, 5);
  ck_assert_str_eq(x->v.array.v[0].v.table.v[1].value.v.bytes.ptr, "rejected");
  free(want);
  free(got);
  free(again);
  free(dup);
}
END_TEST

/* Bytes off the wire decode, convert and encode back to the same bytes:
 * what the fuzz target does with arbitrary input, here with the grammar
 * table and every truncation of it (which must fail cleanly). */
START_TEST(decode_convert_encode) {
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  amqp_table_t t = grammar(&pool);
  size_t len = 0;
  char *wire = encode(&t, &len);
  for (size_t cut = 0; cut <= len; cut++) {
    amqp_pool_t p2;
    init_amqp_pool(&p2, 4096);
    amqp_table_t back;
    size_t off = 0;
    int rc = amqp_decode_table(B(wire, cut), &p2, &back, &off);
    if (cut < len) {
      ck_assert_int_ne(rc, 0);
    } else {
      ck_assert_int_eq(rc, 0);
      edp_field *f = NULL;
      size_t n = 0, got_len = 0;
      ck_assert_int_eq(edp__fields_from_amqp(&back, &f, &n), 0);
      char *got = encode_fields(f, n, &got_len);
      ck_assert_uint_eq(got_len, len);
      ck_assert(!memcmp(got, wire, len));
      free(got);
      free(f);
    }
    empty_amqp_pool(&p2);
  }
  free(wire);
  empty_amqp_pool(&pool);
}
END_TEST

START_TEST(bad_fields_refused) {
  amqp_pool_t pool;
  init_amqp_pool(&pool, 1024);
  amqp_table_t t;
  char longkey[300];
  memset(longkey, 'k', sizeof(longkey) - 1);
  longkey[299] = '\0';
  edp_field f = {longkey, 0, {.kind = EDP_FIELD_I8, .v.i = 1}};
  ck_assert_int_eq(edp__fields_to_amqp(&pool, &f, 1, &t), EDP_EINVAL);
  f.key = "ok";
  f.value.kind = 'Z';
  ck_assert_int_eq(edp__fields_to_amqp(&pool, &f, 1, &t), EDP_EINVAL);
  f.value.kind = EDP_FIELD_STRING;
  f.value.v.bytes.ptr = NULL;
  f.value.v.bytes.len = 3;
  ck_assert_int_eq(edp__fields_to_amqp(&pool, &f, 1, &t), EDP_EINVAL);
  empty_amqp_pool(&pool);
  ck_assert_ptr_null(edp_fields_dup(NULL, 3, NULL));
  /* A message with such a table is refused, not walked. */
  edp_value none = {.kind = EDP_FIELD_ARRAY, .v.array = {NULL, 2}};
  edp_field bad[3] = {
      {NULL, 0, {.kind = EDP_FIELD_VOID}}, {"s", 0, f.value}, {"a", 0, none}};
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = "q";
  for (int i = 0; i < 3; i++) {
    m.table = &bad[i];
    m.n_table = 1;
    ck_assert_ptr_null(edp_msg_dup(&m));
  }
  m.table = NULL;
  ck_assert_ptr_null(edp_msg_dup(&m));
}
END_TEST

START_TEST(delivery_lookups_and_msg_copy) {
  edp_value items[2] = {{.kind = EDP_FIELD_I8, .v.i = -1},
                        {.kind = EDP_FIELD_STRING, .v.bytes = {"two", 3}}};
  edp_field h[6] = {
      {"s", 0, {.kind = EDP_FIELD_STRING, .v.bytes = {"str", 3}}},
      {"x", 0, {.kind = EDP_FIELD_BYTES, .v.bytes = {"by\0tes", 6}}},
      {"n", 0, {.kind = EDP_FIELD_U32, .v.i = 4000000000LL}},
      {"big", 0, {.kind = EDP_FIELD_U64, .v.u = UINT64_MAX}},
      {"f", 0, {.kind = EDP_FIELD_F64, .v.f64 = 1.5}},
      {"a", 0, {.kind = EDP_FIELD_ARRAY, .v.array = {items, 2}}}};
  edp_delivery d;
  memset(&d, 0, sizeof(d));
  d.headers = h;
  d.n_headers = 6;
  int64_t v = 0;
  ck_assert_str_eq(edp_delivery_header_str(&d, "s"), "str");
  ck_assert_str_eq(edp_delivery_header_str(&d, "x"), "by");
  ck_assert_ptr_null(edp_delivery_header_str(&d, "n"));
  ck_assert_int_eq(edp_delivery_header_int(&d, "n", &v), 0);
  ck_assert_int_eq(v, 4000000000LL);
  ck_assert_int_eq(edp_delivery_header_int(&d, "big", &v), EDP_ENOTFOUND);
  ck_assert_int_eq(edp_delivery_header_int(&d, "f", &v), EDP_ENOTFOUND);
  ck_assert_int_eq(edp_delivery_header_int(&d, "s", &v), EDP_ENOTFOUND);
  ck_assert_ptr_null(edp_delivery_header(&d, "missing"));
  ck_assert_int_eq(edp_delivery_header(&d, "a")->kind, EDP_FIELD_ARRAY);

  d.message_id = "id";
  d.content_encoding = "gzip";
  d.app_id = "app";
  d.expiration = "60000";
  d.user_id = "someone";
  d.cluster_id = "c";
  d.delivery_mode = 1;
  d.priority = 3;
  d.timestamp = -5; /* a u64 over INT64_MAX, kept as its bits */
  edp_msg m;
  edp_msg_from_delivery(&m, &d);
  ck_assert_str_eq(m.content_encoding, "gzip");
  ck_assert_str_eq(m.app_id, "app");
  ck_assert_str_eq(m.expiration, "60000");
  ck_assert_str_eq(m.user_id, "someone");
  ck_assert_int_eq(m.delivery_mode, 1);
  ck_assert_int_eq(m.priority, 3);
  ck_assert_int_eq(m.mandatory, 1);
  ck_assert_ptr_eq(m.table, h);
  ck_assert_uint_eq(m.n_table, 6);
  d.delivery_mode = -1;
  edp_msg_from_delivery(&m, &d);
  ck_assert_int_eq(m.delivery_mode, -1);

  /* edp_msg_dup copies the table deep, with the properties. */
  m.routing_key = "q";
  edp_msg *c = edp_msg_dup(&m);
  ck_assert_ptr_nonnull(c);
  ck_assert_ptr_ne(c->table, h);
  ck_assert_uint_eq(c->n_table, 6);
  ck_assert_str_eq(c->content_encoding, "gzip");
  ck_assert_str_eq(c->cluster_id, "c");
  ck_assert_uint_eq(c->table[1].value.v.bytes.len, 6);
  ck_assert(!memcmp(c->table[1].value.v.bytes.ptr, "by\0tes", 6));
  ck_assert_str_eq(c->table[5].value.v.array.v[1].v.bytes.ptr, "two");
  ck_assert_uint_eq((uintptr_t)c->table % _Alignof(edp_field), 0);
  free(c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("fields");
  TCase *tc = tcase_create("fields");
  tcase_add_test(tc, round_trip_full_grammar);
  tcase_add_test(tc, decode_convert_encode);
  tcase_add_test(tc, bad_fields_refused);
  tcase_add_test(tc, delivery_lookups_and_msg_copy);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
