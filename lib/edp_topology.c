/*
 * edp_topology.c - exchanges, queues and bindings on an edp_conn, recorded
 * so that the recovery sequence can declare them again.
 *
 * Replaying is idempotent for named things. A server-named queue is the
 * exception: after a new connection its exclusive queue is gone and gets a
 * new name (bindings and consumers follow, the owner hears of it through
 * edp_rename_fn); after a channel close it may still exist, so it is asked
 * for first (a passive declare), and declared anew only if the broker says
 * it is gone. An op the broker refuses on replay is logged and skipped,
 * never retried in a loop.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp_conn_internal.h"

void edp_queue_opts_init(edp_queue_opts *o) {
  memset(o, 0, sizeof(*o));
  o->durable = 1;
  o->message_ttl_ms = -1;
  o->max_length = -1;
  o->delivery_limit = -1;
}

/* Only what the patterns can consume: a stream queue needs offsets and
 * credit flow that the patterns don't speak. */
static int known_type(const char *t) {
  return !t || !strcmp(t, "classic") || !strcmp(t, "quorum");
}

static int is_quorum(const char *t) { return t && !strcmp(t, "quorum"); }

int edp_queue_opts_kind(edp_queue_opts *o, const edp_queue_kind *k,
                        const char *dlq) {
  if (!o)
    return EDP_EINVAL;
  if (!k)
    return 0;
  if (!known_type(k->type) || k->delivery_limit < 0 ||
      (k->delivery_limit > 0 && !is_quorum(k->type)))
    return EDP_EINVAL;
  o->durable = 1;
  /* A classic queue is declared without x-queue-type, as every queue was
   * before: RabbitMQ compares the arguments given, and one user's
   * "classic" must match another's nothing. */
  o->queue_type = is_quorum(k->type) ? k->type : NULL;
  o->single_active = k->single_active;
  if (k->delivery_limit > 0) {
    o->delivery_limit = k->delivery_limit;
    if (dlq && dlq[0]) {
      /* At-least-once dead-lettering: the broker keeps the message until
       * the .dlq confirmed it (the default, at-most-once, may drop it on
       * a leader change). It needs reject-publish overflow. */
      o->dead_letter_exchange = "";
      o->dead_letter_routing_key = dlq;
      o->dead_letter_strategy = "at-least-once";
      o->overflow = "reject-publish";
    }
  }
  return 0;
}

int edp_conn_declare_kind(edp_conn *c, const char *name,
                          const edp_queue_kind *k, int with_dlq) {
  if (!c || !name || !name[0] || strlen(name) > 200)
    return EDP_EINVAL;
  char dlq[256];
  snprintf(dlq, sizeof(dlq), "%s.dlq", name);
  int need_dlq = with_dlq || (k && k->delivery_limit > 0);
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  int rc = edp_queue_opts_kind(&qo, k, need_dlq ? dlq : NULL);
  if (rc)
    return rc;
  /* The .dlq first: a message dead-lettered meanwhile has somewhere to
   * go. It keeps its messages as long as the main queue does (same type)
   * and is read by whoever looks, so it has no limit and no standby. */
  if (need_dlq) {
    edp_queue_opts dq;
    edp_queue_opts_init(&dq);
    dq.queue_type = qo.queue_type;
    if ((rc = edp_conn_queue_declare(c, dlq, &dq, NULL, 0, NULL, NULL)))
      return rc;
  }
  return edp_conn_queue_declare(c, name, &qo, NULL, 0, NULL, NULL);
}

static void free_qo(edp_queue_opts *q) {
  free((char *)q->dead_letter_exchange);
  free((char *)q->dead_letter_routing_key);
  free((char *)q->queue_type);
  free((char *)q->overflow);
  free((char *)q->dead_letter_strategy);
}

static void free_op(struct edp__topo_op *op) {
  free(op->name);
  free(op->exchange);
  free(op->key);
  free_qo(&op->qo);
}

void edp__free_topology(edp_conn *c) {
  for (size_t i = 0; i < c->n_ops; i++)
    free_op(&c->ops[i]);
  free(c->ops);
  c->ops = NULL;
  c->n_ops = c->cap_ops = 0;
}

/* Appends a zeroed op; NULL when out of memory. */
static struct edp__topo_op *add_op(edp_conn *c) {
  if (c->n_ops == c->cap_ops) {
    size_t cap = c->cap_ops ? c->cap_ops * 2 : 8;
    struct edp__topo_op *n = realloc(c->ops, cap * sizeof(*n));
    if (!n)
      return NULL;
    c->ops = n;
    c->cap_ops = cap;
  }
  struct edp__topo_op *op = &c->ops[c->n_ops++];
  memset(op, 0, sizeof(*op));
  return op;
}

/* The op just added could not be completed (out of memory): forget it. */
static int drop_last_op(edp_conn *c) {
  free_op(&c->ops[--c->n_ops]);
  return EDP_ENOMEM;
}

static struct edp__topo_op *find_op(edp_conn *c, int kind, const char *name,
                                    const char *exchange, const char *key) {
  for (size_t i = 0; i < c->n_ops; i++) {
    struct edp__topo_op *op = &c->ops[i];
    if (op->kind == kind && !strcmp(op->name, name) &&
        (!exchange || !strcmp(op->exchange, exchange)) &&
        (!key || !strcmp(op->key, key)))
      return op;
  }
  return NULL;
}

/* Builds x-arguments of a queue declare into entries (at most 10). */
static amqp_table_t queue_args(const edp_queue_opts *o, amqp_table_entry_t *e) {
  int n = 0;
  if (o->dead_letter_exchange) {
    e[n].key = amqp_cstring_bytes("x-dead-letter-exchange");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n++].value.value.bytes = amqp_cstring_bytes(o->dead_letter_exchange);
  }
  if (o->dead_letter_routing_key) {
    e[n].key = amqp_cstring_bytes("x-dead-letter-routing-key");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n++].value.value.bytes = amqp_cstring_bytes(o->dead_letter_routing_key);
  }
  if (o->max_priority > 0) {
    e[n].key = amqp_cstring_bytes("x-max-priority");
    e[n].value.kind = AMQP_FIELD_KIND_I32;
    e[n++].value.value.i32 = o->max_priority;
  }
  if (o->queue_type) {
    e[n].key = amqp_cstring_bytes("x-queue-type");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n++].value.value.bytes = amqp_cstring_bytes(o->queue_type);
  }
  if (o->message_ttl_ms >= 0) {
    e[n].key = amqp_cstring_bytes("x-message-ttl");
    e[n].value.kind = AMQP_FIELD_KIND_I64;
    e[n++].value.value.i64 = o->message_ttl_ms;
  }
  if (o->max_length >= 0) {
    e[n].key = amqp_cstring_bytes("x-max-length");
    e[n].value.kind = AMQP_FIELD_KIND_I64;
    e[n++].value.value.i64 = o->max_length;
  }
  if (o->overflow) {
    e[n].key = amqp_cstring_bytes("x-overflow");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n++].value.value.bytes = amqp_cstring_bytes(o->overflow);
  }
  if (o->single_active) {
    e[n].key = amqp_cstring_bytes("x-single-active-consumer");
    e[n].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    e[n++].value.value.boolean = 1;
  }
  if (o->delivery_limit >= 0) {
    e[n].key = amqp_cstring_bytes("x-delivery-limit");
    e[n].value.kind = AMQP_FIELD_KIND_I64;
    e[n++].value.value.i64 = o->delivery_limit;
  }
  if (o->dead_letter_strategy) {
    e[n].key = amqp_cstring_bytes("x-dead-letter-strategy");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n++].value.value.bytes = amqp_cstring_bytes(o->dead_letter_strategy);
  }
  amqp_table_t t = {n, e};
  return t;
}

int edp__queue_declare_raw(edp_conn *c, const char *name,
                           const edp_queue_opts *o, int passive, char *name_out,
                           size_t name_out_len, uint32_t *msgs,
                           uint32_t *consumers) {
  amqp_table_entry_t e[10];
  amqp_queue_declare_ok_t *ok = amqp_queue_declare(
      c->st, c->chan, edp__bytes_of(name), passive, o->durable, o->exclusive,
      o->auto_delete, queue_args(o, e));
  int rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  if (rc)
    return rc;
  if (name_out && name_out_len)
    snprintf(name_out, name_out_len, "%.*s", (int)ok->queue.len,
             (const char *)ok->queue.bytes);
  if (msgs)
    *msgs = ok->message_count;
  if (consumers)
    *consumers = ok->consumer_count;
  return 0;
}

int edp_conn_queue_declare(edp_conn *c, const char *name,
                           const edp_queue_opts *o, char *name_out,
                           size_t name_out_len, uint32_t *msgs,
                           uint32_t *consumers) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  edp_queue_opts defaults;
  if (!o) {
    edp_queue_opts_init(&defaults);
    o = &defaults;
  }
  /* The broker would refuse these with a channel close; say it here. */
  if (!known_type(o->queue_type) ||
      (is_quorum(o->queue_type) &&
       (!o->durable || o->exclusive || o->auto_delete || o->max_priority)) ||
      (o->delivery_limit >= 0 && !is_quorum(o->queue_type)))
    return EDP_EINVAL;
  if (!name)
    name = "";
  char actual[256];
  rc = edp__queue_declare_raw(c, name, o, 0, actual, sizeof(actual), msgs,
                              consumers);
  if (rc)
    return edp__settle(c, rc);
  if (name_out && name_out_len)
    snprintf(name_out, name_out_len, "%s", actual);
  if (find_op(c, EDP__OP_QUEUE, actual, NULL, NULL))
    return 0;
  struct edp__topo_op *op = add_op(c);
  if (!op)
    return EDP_ENOMEM;
  op->kind = EDP__OP_QUEUE;
  op->name = strdup(actual);
  op->server_named = name[0] == '\0';
  op->qo = *o;
  op->qo.dead_letter_exchange = edp__dupstr(o->dead_letter_exchange);
  op->qo.dead_letter_routing_key = edp__dupstr(o->dead_letter_routing_key);
  op->qo.queue_type = edp__dupstr(o->queue_type);
  op->qo.overflow = edp__dupstr(o->overflow);
  op->qo.dead_letter_strategy = edp__dupstr(o->dead_letter_strategy);
  if (!op->name || (o->dead_letter_exchange && !op->qo.dead_letter_exchange) ||
      (o->dead_letter_routing_key && !op->qo.dead_letter_routing_key) ||
      (o->queue_type && !op->qo.queue_type) ||
      (o->overflow && !op->qo.overflow) ||
      (o->dead_letter_strategy && !op->qo.dead_letter_strategy))
    return drop_last_op(c);
  return 0;
}

int edp_conn_queue_inspect(edp_conn *c, const char *name, uint32_t *msgs,
                           uint32_t *consumers) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (!name || !name[0])
    return EDP_EINVAL;
  edp_queue_opts o;
  edp_queue_opts_init(&o);
  return edp__settle(
      c, edp__queue_declare_raw(c, name, &o, 1, NULL, 0, msgs, consumers));
}

int edp_conn_queue_delete(edp_conn *c, const char *name) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (!name)
    return EDP_EINVAL;
  amqp_queue_delete(c->st, c->chan, amqp_cstring_bytes(name), 0, 0);
  rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  struct edp__topo_op *op = find_op(c, EDP__OP_QUEUE, name, NULL, NULL);
  if (!rc && op) {
    free_op(op);
    *op = c->ops[--c->n_ops];
  }
  return edp__settle(c, rc);
}

int edp_conn_queue_purge(edp_conn *c, const char *name, uint32_t *purged) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (!name)
    return EDP_EINVAL;
  amqp_queue_purge_ok_t *ok =
      amqp_queue_purge(c->st, c->chan, amqp_cstring_bytes(name));
  rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc && purged)
    *purged = ok->message_count;
  return edp__settle(c, rc);
}

int edp_conn_exchange_declare(edp_conn *c, const char *name, const char *type,
                              int durable) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (!name || !type)
    return EDP_EINVAL;
  amqp_exchange_declare(c->st, c->chan, amqp_cstring_bytes(name),
                        amqp_cstring_bytes(type), 0, durable, 0, 0,
                        amqp_empty_table);
  rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  if (rc)
    return edp__settle(c, rc);
  if (find_op(c, EDP__OP_EXCHANGE, name, NULL, NULL))
    return 0;
  struct edp__topo_op *op = add_op(c);
  if (!op)
    return EDP_ENOMEM;
  op->kind = EDP__OP_EXCHANGE;
  op->name = strdup(name);
  op->key = strdup(type);
  op->durable = durable;
  return op->name && op->key ? 0 : drop_last_op(c);
}

int edp_conn_exchange_delete(edp_conn *c, const char *name) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (!name)
    return EDP_EINVAL;
  amqp_exchange_delete(c->st, c->chan, amqp_cstring_bytes(name), 0);
  return edp__settle(c, edp__rpc_result(c, amqp_get_rpc_reply(c->st)));
}

int edp_conn_queue_bind(edp_conn *c, const char *queue, const char *exchange,
                        const char *routing_key) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (!queue || !exchange || !routing_key)
    return EDP_EINVAL;
  amqp_queue_bind(c->st, c->chan, amqp_cstring_bytes(queue),
                  amqp_cstring_bytes(exchange), amqp_cstring_bytes(routing_key),
                  amqp_empty_table);
  rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  if (rc)
    return edp__settle(c, rc);
  if (find_op(c, EDP__OP_BIND, queue, exchange, routing_key))
    return 0;
  struct edp__topo_op *op = add_op(c);
  if (!op)
    return EDP_ENOMEM;
  op->kind = EDP__OP_BIND;
  op->name = strdup(queue);
  op->exchange = strdup(exchange);
  op->key = strdup(routing_key);
  return op->name && op->exchange && op->key ? 0 : drop_last_op(c);
}

int edp_conn_qos(edp_conn *c, int prefetch) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (prefetch < 0 || prefetch > 65535)
    return EDP_EINVAL;
  amqp_basic_qos(c->st, c->chan, 0, (uint16_t)prefetch, 0);
  rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc)
    c->prefetch = prefetch;
  return edp__settle(c, rc);
}

int edp_conn_confirm_select(edp_conn *c) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (c->confirm)
    return 0;
  amqp_confirm_select(c->st, c->chan);
  rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc) {
    c->confirm = 1;
    c->next_seq = 1;
  }
  return edp__settle(c, rc);
}

/* The server-named queue at op came back as fresh: bindings and consumers
 * that used the old name follow it. Returns 0 or EDP_ENOMEM (nothing
 * changed then). */
static int rename_queue(edp_conn *c, struct edp__topo_op *op,
                        const char *fresh) {
  size_t n = 1;
  for (size_t j = 0; j < c->n_ops; j++)
    n += c->ops[j].kind == EDP__OP_BIND && !strcmp(c->ops[j].name, op->name);
  for (size_t j = 0; j < c->n_cons; j++)
    n += !strcmp(c->cons[j].queue, op->name);
  /* All copies first, so that running out of memory changes nothing. */
  char **copies = calloc(n, sizeof(*copies));
  size_t k = 0;
  for (; copies && k < n; k++)
    if (!(copies[k] = strdup(fresh)))
      break;
  if (!copies || k < n) {
    for (size_t j = 0; copies && j < k; j++)
      free(copies[j]);
    free(copies);
    return EDP_ENOMEM;
  }
  char *old = op->name;
  k = 0;
  for (size_t j = 0; j < c->n_ops; j++)
    if (c->ops[j].kind == EDP__OP_BIND && !strcmp(c->ops[j].name, old)) {
      free(c->ops[j].name);
      c->ops[j].name = copies[k++];
    }
  for (size_t j = 0; j < c->n_cons; j++)
    if (!strcmp(c->cons[j].queue, old)) {
      free(c->cons[j].queue);
      c->cons[j].queue = copies[k++];
    }
  op->name = copies[k];
  free(copies);
  if (c->on_rename)
    c->on_rename(c->on_rename_ud, old, op->name);
  free(old);
  return 0;
}

static int replay_queue(edp_conn *c, struct edp__topo_op *op,
                        int fresh_connection) {
  if (!op->server_named)
    return edp__queue_declare_raw(c, op->name, &op->qo, 0, NULL, 0, NULL, NULL);
  if (!op->gone && !(fresh_connection && op->qo.exclusive)) {
    int rc =
        edp__queue_declare_raw(c, op->name, &op->qo, 1, NULL, 0, NULL, NULL);
    if (rc != EDP_ENOTFOUND)
      return rc;
    op->gone = 1; /* the channel closed on it: retried on the next one */
    return rc;
  }
  char actual[256];
  int rc = edp__queue_declare_raw(c, "", &op->qo, 0, actual, sizeof(actual),
                                  NULL, NULL);
  if (rc)
    return rc;
  op->gone = 0;
  return strcmp(actual, op->name) ? rename_queue(c, op, actual) : 0;
}

int edp__restore_topology(edp_conn *c, size_t *next, int fresh_connection) {
  for (; *next < c->n_ops; (*next)++) {
    struct edp__topo_op *op = &c->ops[*next];
    int rc = 0;
    if (op->kind == EDP__OP_EXCHANGE) {
      amqp_exchange_declare(c->st, c->chan, amqp_cstring_bytes(op->name),
                            amqp_cstring_bytes(op->key), 0, op->durable, 0, 0,
                            amqp_empty_table);
      rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
    } else if (op->kind == EDP__OP_QUEUE) {
      rc = replay_queue(c, op, fresh_connection);
    } else {
      amqp_queue_bind(c->st, c->chan, amqp_cstring_bytes(op->name),
                      amqp_cstring_bytes(op->exchange),
                      amqp_cstring_bytes(op->key), amqp_empty_table);
      rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
    }
    if (!rc)
      continue;
    if (!c->st || rc == EDP_ENOMEM)
      return rc;
    if (op->kind == EDP__OP_QUEUE && op->gone)
      return rc; /* declared anew on the next channel, same op */
    /* Refused (e.g. redeclared elsewhere with other arguments): the rest
     * of the session may still work, so skip it, loudly. */
    edp__log(c, EDP_LOG_ERROR, "cannot restore %s %s: %d %s; skipped",
             op->kind == EDP__OP_EXCHANGE ? "exchange"
             : op->kind == EDP__OP_QUEUE  ? "queue"
                                          : "binding of queue",
             op->name, c->reply_code, c->reply_text);
    (*next)++;
    return rc;
  }
  return 0;
}
