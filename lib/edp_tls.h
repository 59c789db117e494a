/*
 * edp_tls.h - TLS for edp_conn (internal, not installed).
 */
#ifndef EDP_TLS_H
#define EDP_TLS_H

#include <amqp.h>
#include <stddef.h>

#include "edp_conn.h"

/* Creates the amqp_ssl_socket of c->st for c->url: CA file or the system
 * store, client certificate, peer and host name (or IP) verification
 * unless verify=verify_none, SNI as the URL says, TLS 1.2 at least.
 * Returns 0 with *out set, EDP_ENOMEM or EDP_ETLS (a file that does not
 * load), with a one-line reason in err_text. */
int edp__tls_socket(edp_conn *c, amqp_socket_t **out, char *err_text,
                    size_t err_len);

/* After a failed open (in_login 0) or login (in_login 1) with rabbitmq-c
 * status: writes a one-line reason naming the cause and returns EDP_ETLS
 * (a refusal), EDP_ECONNECT (a handshake timeout, worth retrying) or 0
 * when it was not a TLS matter (err_text untouched). */
int edp__tls_explain(edp_conn *c, int status, int in_login, char *err_text,
                     size_t err_len);

#endif
