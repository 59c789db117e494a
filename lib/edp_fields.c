/*
 * edp_fields.c - AMQP field tables as edp_field arrays, both ways.
 *
 * A delivery keeps its headers table whole, every type and nesting level,
 * so that a retry or dead-letter copy can publish it unchanged (issue 12:
 * the string-and-integer view dropped x-death, booleans, floats, arrays).
 * A copy lives in one allocation: a measuring pass sizes it, a second pass
 * fills it, both by the same code (an arena whose buffer is NULL while
 * measuring). Publishing goes the other way through an amqp_pool that
 * points into the edp_field memory, so nothing is copied twice.
 */
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "edp_conn_internal.h"

typedef struct arena {
  char *buf; /* NULL: only measure */
  size_t off;
} arena;

static void *take(arena *a, size_t n, size_t align) {
  a->off = (a->off + align - 1) & ~(align - 1);
  void *p = a->buf ? a->buf + a->off : NULL;
  a->off += n;
  return p;
}

/* Copies len bytes and a NUL terminator. */
static const char *put_bytes(arena *a, const void *p, size_t len) {
  char *d = take(a, len + 1, 1);
  if (d) {
    if (len)
      memcpy(d, p, len);
    d[len] = '\0';
  }
  return d;
}

size_t edp__field_key_len(const edp_field *f) {
  return f->key_len ? f->key_len : strlen(f->key);
}

/* ---------- edp -> edp ---------- */

static const edp_field *copy_fields(arena *a, const edp_field *s, size_t n);

static void copy_value(arena *a, edp_value *dst, const edp_value *s) {
  edp_value v = *s;
  if (s->kind == EDP_FIELD_STRING || s->kind == EDP_FIELD_BYTES) {
    v.v.bytes.ptr = put_bytes(a, s->v.bytes.ptr, s->v.bytes.len);
  } else if (s->kind == EDP_FIELD_ARRAY) {
    edp_value *items =
        take(a, s->v.array.n * sizeof(edp_value), alignof(edp_value));
    for (size_t i = 0; i < s->v.array.n; i++)
      copy_value(a, items ? &items[i] : NULL, &s->v.array.v[i]);
    v.v.array.v = items;
  } else if (s->kind == EDP_FIELD_TABLE) {
    v.v.table.v = copy_fields(a, s->v.table.v, s->v.table.n);
  }
  if (dst)
    *dst = v;
}

static const edp_field *copy_fields(arena *a, const edp_field *s, size_t n) {
  edp_field *f = take(a, n * sizeof(edp_field), alignof(edp_field));
  for (size_t i = 0; i < n; i++) {
    size_t kl = edp__field_key_len(&s[i]);
    const char *k = put_bytes(a, s[i].key, kl);
    copy_value(a, f ? &f[i].value : NULL, &s[i].value);
    if (f) {
      f[i].key = k;
      f[i].key_len = kl;
    }
  }
  return f;
}

size_t edp__fields_size(const edp_field *f, size_t n) {
  arena a = {NULL, 0};
  copy_fields(&a, f, n);
  return a.off;
}

edp_field *edp__fields_copy_into(void *buf, const edp_field *f, size_t n) {
  arena a = {buf, 0};
  return (edp_field *)copy_fields(&a, f, n);
}

edp_field *edp_fields_dup(const edp_field *fields, size_t n, size_t *out_n) {
  if (out_n)
    *out_n = 0;
  if (!fields || !n)
    return NULL;
  void *buf = malloc(edp__fields_size(fields, n));
  if (!buf)
    return NULL;
  if (out_n)
    *out_n = n;
  return edp__fields_copy_into(buf, fields, n);
}

/* ---------- amqp -> edp ---------- */

static const edp_field *from_table(arena *a, const amqp_table_t *t);

static void from_value(arena *a, edp_value *dst, const amqp_field_value_t *s) {
  edp_value v;
  memset(&v, 0, sizeof(v));
  v.kind = s->kind;
  switch (s->kind) {
  case AMQP_FIELD_KIND_BOOLEAN:
    v.v.i = s->value.boolean != 0;
    break;
  case AMQP_FIELD_KIND_I8:
    v.v.i = s->value.i8;
    break;
  case AMQP_FIELD_KIND_U8:
    v.v.i = s->value.u8;
    break;
  case AMQP_FIELD_KIND_I16:
    v.v.i = s->value.i16;
    break;
  case AMQP_FIELD_KIND_U16:
    v.v.i = s->value.u16;
    break;
  case AMQP_FIELD_KIND_I32:
    v.v.i = s->value.i32;
    break;
  case AMQP_FIELD_KIND_U32:
    v.v.i = s->value.u32;
    break;
  case AMQP_FIELD_KIND_I64:
    v.v.i = s->value.i64;
    break;
  case AMQP_FIELD_KIND_U64:
  case AMQP_FIELD_KIND_TIMESTAMP:
    v.v.u = s->value.u64;
    break;
  case AMQP_FIELD_KIND_F32:
    v.v.f32 = s->value.f32;
    break;
  case AMQP_FIELD_KIND_F64:
    v.v.f64 = s->value.f64;
    break;
  case AMQP_FIELD_KIND_DECIMAL:
    v.v.dec.decimals = s->value.decimal.decimals;
    v.v.dec.value = s->value.decimal.value;
    break;
  case AMQP_FIELD_KIND_UTF8:
  case AMQP_FIELD_KIND_BYTES:
    v.v.bytes.len = s->value.bytes.len;
    v.v.bytes.ptr = put_bytes(a, s->value.bytes.bytes, s->value.bytes.len);
    break;
  case AMQP_FIELD_KIND_ARRAY: {
    size_t n =
        (size_t)(s->value.array.num_entries > 0 ? s->value.array.num_entries
                                                : 0);
    edp_value *items = take(a, n * sizeof(edp_value), alignof(edp_value));
    for (size_t i = 0; i < n; i++)
      from_value(a, items ? &items[i] : NULL, &s->value.array.entries[i]);
    v.v.array.v = items;
    v.v.array.n = n;
    break;
  }
  case AMQP_FIELD_KIND_TABLE:
    v.v.table.v = from_table(a, &s->value.table);
    v.v.table.n =
        (size_t)(s->value.table.num_entries > 0 ? s->value.table.num_entries
                                                : 0);
    break;
  default: /* void, and nothing else rabbitmq-c decodes */
    v.kind = EDP_FIELD_VOID;
    break;
  }
  if (dst)
    *dst = v;
}

static const edp_field *from_table(arena *a, const amqp_table_t *t) {
  size_t n = (size_t)(t->num_entries > 0 ? t->num_entries : 0);
  edp_field *f = take(a, n * sizeof(edp_field), alignof(edp_field));
  for (size_t i = 0; i < n; i++) {
    const char *k =
        put_bytes(a, t->entries[i].key.bytes, t->entries[i].key.len);
    from_value(a, f ? &f[i].value : NULL, &t->entries[i].value);
    if (f) {
      f[i].key = k;
      f[i].key_len = t->entries[i].key.len;
    }
  }
  return f;
}

int edp__fields_from_amqp(const amqp_table_t *t, edp_field **out, size_t *n) {
  *out = NULL;
  *n = 0;
  if (!t || t->num_entries <= 0)
    return 0;
  arena a = {NULL, 0};
  from_table(&a, t);
  if (!(a.buf = malloc(a.off)))
    return EDP_ENOMEM;
  a.off = 0;
  *out = (edp_field *)from_table(&a, t);
  *n = (size_t)t->num_entries;
  return 0;
}

/* ---------- edp -> amqp ---------- */

static amqp_bytes_t bytes_of(const char *p, size_t len) {
  amqp_bytes_t b = {len, (void *)p};
  return b;
}

static int to_table(amqp_pool_t *pool, const edp_field *f, size_t n,
                    amqp_table_t *out);

static int to_value(amqp_pool_t *pool, amqp_field_value_t *d,
                    const edp_value *s) {
  memset(d, 0, sizeof(*d));
  d->kind = (uint8_t)s->kind;
  switch (s->kind) {
  case EDP_FIELD_BOOL:
    d->value.boolean = s->v.i != 0;
    return 0;
  case EDP_FIELD_I8:
    d->value.i8 = (int8_t)s->v.i;
    return 0;
  case EDP_FIELD_U8:
    d->value.u8 = (uint8_t)s->v.i;
    return 0;
  case EDP_FIELD_I16:
    d->value.i16 = (int16_t)s->v.i;
    return 0;
  case EDP_FIELD_U16:
    d->value.u16 = (uint16_t)s->v.i;
    return 0;
  case EDP_FIELD_I32:
    d->value.i32 = (int32_t)s->v.i;
    return 0;
  case EDP_FIELD_U32:
    d->value.u32 = (uint32_t)s->v.i;
    return 0;
  case EDP_FIELD_I64:
    d->value.i64 = s->v.i;
    return 0;
  case EDP_FIELD_U64:
  case EDP_FIELD_TIMESTAMP:
    d->value.u64 = s->v.u;
    return 0;
  case EDP_FIELD_F32:
    d->value.f32 = s->v.f32;
    return 0;
  case EDP_FIELD_F64:
    d->value.f64 = s->v.f64;
    return 0;
  case EDP_FIELD_DECIMAL:
    d->value.decimal.decimals = s->v.dec.decimals;
    d->value.decimal.value = s->v.dec.value;
    return 0;
  case EDP_FIELD_STRING:
  case EDP_FIELD_BYTES:
    if (s->v.bytes.len && !s->v.bytes.ptr)
      return EDP_EINVAL;
    d->value.bytes = bytes_of(s->v.bytes.ptr, s->v.bytes.len);
    return 0;
  case EDP_FIELD_VOID:
    return 0;
  case EDP_FIELD_TABLE:
    return to_table(pool, s->v.table.v, s->v.table.n, &d->value.table);
  case EDP_FIELD_ARRAY: {
    size_t n = s->v.array.n;
    if (n > INT32_MAX || (n && !s->v.array.v))
      return EDP_EINVAL;
    amqp_field_value_t *e =
        n ? amqp_pool_alloc(pool, n * sizeof(amqp_field_value_t)) : NULL;
    if (n && !e)
      return EDP_ENOMEM;
    for (size_t i = 0; i < n; i++) {
      int rc = to_value(pool, &e[i], &s->v.array.v[i]);
      if (rc)
        return rc;
    }
    d->value.array.num_entries = (int)n;
    d->value.array.entries = e;
    return 0;
  }
  default:
    return EDP_EINVAL;
  }
}

int edp__field_to_amqp(amqp_pool_t *pool, const edp_field *f,
                       amqp_table_entry_t *out) {
  if (!f->key)
    return EDP_EINVAL;
  size_t kl = edp__field_key_len(f);
  if (kl > 255) /* a shortstr */
    return EDP_EINVAL;
  out->key = bytes_of(f->key, kl);
  return to_value(pool, &out->value, &f->value);
}

static int to_table(amqp_pool_t *pool, const edp_field *f, size_t n,
                    amqp_table_t *out) {
  if (n > INT32_MAX || (n && !f))
    return EDP_EINVAL;
  amqp_table_entry_t *e =
      n ? amqp_pool_alloc(pool, n * sizeof(amqp_table_entry_t)) : NULL;
  if (n && !e)
    return EDP_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    int rc = edp__field_to_amqp(pool, &f[i], &e[i]);
    if (rc)
      return rc;
  }
  out->num_entries = (int)n;
  out->entries = e;
  return 0;
}

int edp__fields_to_amqp(amqp_pool_t *pool, const edp_field *f, size_t n,
                        amqp_table_t *out) {
  return to_table(pool, f, n, out);
}
