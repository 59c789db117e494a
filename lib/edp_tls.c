/*
 * edp_tls.c - the TLS side of a connection attempt: an amqp_ssl_socket set
 * up the way a security review expects, and one-line explanations of why
 * a handshake failed.
 *
 * rabbitmq-c 0.11 gets several things wrong for us, so we configure its
 * SSL_CTX (amqp_ssl_socket_get_context) directly with OpenSSL:
 *  - with no CA file it loads no CA at all, so verification of any real
 *    broker fails: we load the system store (SSL_CTX_set_default_verify_
 *    paths, /usr/lib/ssl/certs -> /etc/ssl/certs on Debian) instead;
 *  - it checks the peer only after the handshake and keeps the reason to
 *    itself; its host name check knows DNS names only, so a host given as
 *    an IP address always fails. We turn both of its checks off and let
 *    OpenSSL verify during the handshake (SSL_VERIFY_PEER plus
 *    X509_VERIFY_PARAM host or IP), with a callback that keeps the first
 *    verification error for the message;
 *  - it always sends the host as SNI, IP addresses included (RFC 6066
 *    forbids that) and cannot be told otherwise: an info callback at the
 *    start of the handshake sets or clears the name.
 * It reads records into a 128 KiB buffer and a TLS record holds at most
 * 16 KiB, so no decrypted bytes wait inside OpenSSL when rabbitmq-c says
 * its buffer is empty: poll() on the socket stays correct.
 */
#include "edp_tls.h"

#include <amqp_ssl_socket.h>
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "edp_conn_internal.h"

static int is_ip(const char *host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host, buf) == 1 ||
         inet_pton(AF_INET6, host, buf) == 1;
}

static edp_conn *conn_of_ssl(const SSL *ssl) {
  return ssl ? SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)) : NULL;
}

/* Keeps the first verification error and the certificate it concerns. */
static int verify_cb(int ok, X509_STORE_CTX *store) {
  SSL *ssl =
      X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
  edp_conn *c = conn_of_ssl(ssl);
  if (!ok && c && !c->tls_verify_err) {
    c->tls_verify_err = X509_STORE_CTX_get_error(store);
    X509 *cert = X509_STORE_CTX_get_current_cert(store);
    c->tls_subject[0] = '\0';
    if (cert)
      X509_NAME_oneline(X509_get_subject_name(cert), c->tls_subject,
                        (int)sizeof(c->tls_subject));
  }
  return ok;
}

/* At the start of the handshake, before the ClientHello is built. */
static void info_cb(const SSL *ssl, int where, int ret) {
  edp_conn *c = conn_of_ssl(ssl);
  if (!c)
    return;
  /* The broker's verdict on our certificate comes as an alert, under TLS
   * 1.3 only after our side of the handshake is done, so it reaches us in
   * a read where rabbitmq-c reports just "a SSL error occurred". */
  if ((where & SSL_CB_READ_ALERT) && (ret >> 8) == SSL3_AL_FATAL &&
      !c->tls_alert)
    c->tls_alert = ret & 0xff ? ret & 0xff : -1;
  if (!(where & SSL_CB_HANDSHAKE_START))
    return;
  c->tls_started = 1;
  const edp_url *u = &c->url;
  const char *sni = u->sni[0] ? u->sni : u->host;
  if (u->sni_disabled || (!u->sni[0] && is_ip(u->host)))
    sni = NULL;
  /* The callback gets a const SSL; setting the name is what it is for. */
  SSL_set_tlsext_host_name((SSL *)ssl, sni);
}

/* Refuses to prompt on a terminal for an encrypted key's passphrase. */
static int no_passphrase(char *buf, int size, int rwflag, void *ud) {
  (void)buf, (void)size, (void)rwflag, (void)ud;
  return 0;
}

/* Checks that path can be read, for a message better than OpenSSL's
 * "system lib". */
static int readable(edp_conn *c, const char *what, const char *path,
                    char *err_text, size_t err_len) {
  FILE *f = fopen(path, "r");
  if (f) {
    fclose(f);
    return 0;
  }
  snprintf(err_text, err_len, "%s: cannot read %s %s: %s", c->masked, what,
           path, strerror(errno));
  return EDP_ETLS;
}

/* The CN of the certificate in path, "" if it has none. */
static void cert_cn(const char *path, char *out, size_t len) {
  out[0] = '\0';
  FILE *f = fopen(path, "r");
  if (!f)
    return;
  X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  if (x) {
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out,
                              (int)len);
    X509_free(x);
  }
}

/* 1 if OpenSSL's last error is the network's (a reset, an EOF), not a
 * word of TLS from the peer. */
static int ssl_network_error(void) {
  unsigned long e = ERR_peek_last_error();
  return e && (ERR_GET_LIB(e) == ERR_LIB_SYS ||
               ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
}

/* rabbitmq-c's words for a connection that ended under it. */
static int closed_status(int status) {
  return status == AMQP_STATUS_CONNECTION_CLOSED ||
         status == AMQP_STATUS_SOCKET_ERROR ||
         status == AMQP_STATUS_SSL_ERROR ||
         status == AMQP_STATUS_SSL_CONNECTION_FAILED;
}

/* OpenSSL's reason for the last error of this thread, or "". */
static const char *ssl_reason(void) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  return r ? r : "";
}

int edp__tls_socket(edp_conn *c, amqp_socket_t **out, char *err_text,
                    size_t err_len) {
  const edp_url *u = &c->url;
  c->tls_verify_err = 0;
  c->tls_started = 0;
  c->tls_alert = 0;
  c->tls_subject[0] = '\0';
  if ((u->cacertfile[0] &&
       readable(c, "cacertfile", u->cacertfile, err_text, err_len)) ||
      (u->certfile[0] &&
       (readable(c, "certfile", u->certfile, err_text, err_len) ||
        readable(c, "keyfile", u->keyfile, err_text, err_len))))
    return EDP_ETLS;
  /* A private key others can read is a key others may have copied. */
  struct stat st;
  if (u->keyfile[0] && stat(u->keyfile, &st) == 0 && (st.st_mode & 077))
    edp__log(c, EDP_LOG_WARN,
             "%s: keyfile %s can be read by other users (mode %04o): "
             "chmod 600 it",
             c->masked, u->keyfile, (unsigned)(st.st_mode & 07777));
  ERR_clear_error();
  amqp_socket_t *sock = amqp_ssl_socket_new(c->st);
  if (!sock) {
    snprintf(err_text, err_len, "%s: cannot set up TLS: %s", c->masked,
             ssl_reason()[0] ? ssl_reason() : "out of memory");
    return EDP_ENOMEM;
  }
  SSL_CTX *ctx = amqp_ssl_socket_get_context(sock);
  SSL_CTX_set_app_data(ctx, c);
  SSL_CTX_set_info_callback(ctx, info_cb);
  SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
  /* TLS 1.0 and 1.1 are deprecated (RFC 8996); RabbitMQ speaks 1.2/1.3. */
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  amqp_ssl_socket_set_verify_peer(sock, 0);
  amqp_ssl_socket_set_verify_hostname(sock, 0);

  int loaded =
      u->cacertfile[0]
          ? amqp_ssl_socket_set_cacert(sock, u->cacertfile) == AMQP_STATUS_OK
          : SSL_CTX_set_default_verify_paths(ctx) == 1;
  if (!loaded) {
    snprintf(err_text, err_len, "%s: cannot load the CA certificates %s: %s",
             c->masked, u->cacertfile[0] ? u->cacertfile : "of the system",
             ssl_reason());
    return EDP_ETLS;
  }
  if (u->certfile[0] && amqp_ssl_socket_set_key(sock, u->certfile,
                                                u->keyfile) != AMQP_STATUS_OK) {
    snprintf(err_text, err_len,
             "%s: cannot load the client certificate %s with key %s: %s",
             c->masked, u->certfile, u->keyfile, ssl_reason());
    return EDP_ETLS;
  }
  /* rabbitmq-c 0.11 cannot send an empty EXTERNAL response (it reports
   * "out of memory"): we send the certificate's CN, which is the user
   * RabbitMQ takes from the certificate anyway (ssl_cert_login_from). */
  if (u->certfile[0])
    cert_cn(u->certfile, c->tls_identity, sizeof(c->tls_identity));
  if (!c->tls_identity[0])
    snprintf(c->tls_identity, sizeof(c->tls_identity), "-");
  if (u->verify_peer) {
    X509_VERIFY_PARAM *vp = SSL_CTX_get0_param(ctx);
    int ok;
    if (u->sni[0]) {
      ok = X509_VERIFY_PARAM_set1_host(vp, u->sni, 0);
    } else if (is_ip(u->host)) {
      ok = X509_VERIFY_PARAM_set1_ip_asc(vp, u->host);
    } else {
      ok = X509_VERIFY_PARAM_set1_host(vp, u->host, 0);
    }
    X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (ok != 1) {
      snprintf(err_text, err_len, "%s: cannot set the name to verify",
               c->masked);
      return EDP_ETLS;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_cb);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    edp__log(c, EDP_LOG_WARN,
             "%s: verify=verify_none: the broker's certificate is not "
             "checked, anyone on the path can read and change the traffic",
             c->masked);
  }
  *out = sock;
  return 0;
}

/* A verification error in words. */
static void verify_words(const edp_conn *c, char *out, size_t len) {
  const char *subj = c->tls_subject[0] ? c->tls_subject : "?";
  const char *host = c->url.sni[0] ? c->url.sni : c->url.host;
  switch (c->tls_verify_err) {
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
  case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
  case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
  case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    snprintf(out, len,
             "unknown CA: the broker's certificate chain (up to %.120s) is not "
             "signed by a CA in %.120s",
             subj,
             c->url.cacertfile[0] ? c->url.cacertfile : "the system store");
    break;
  case X509_V_ERR_HOSTNAME_MISMATCH:
    snprintf(
        out, len,
        "host name mismatch: the broker's certificate (%.120s) does not name "
        "'%.100s'",
        subj, host);
    break;
  case X509_V_ERR_IP_ADDRESS_MISMATCH:
    snprintf(
        out, len,
        "IP address mismatch: the broker's certificate (%.120s) has no IP SAN "
        "%.60s (connect by a name it holds, or add the IP to its SANs)",
        subj, host);
    break;
  case X509_V_ERR_CERT_HAS_EXPIRED:
    snprintf(out, len, "expired certificate: %.120s", subj);
    break;
  case X509_V_ERR_CERT_NOT_YET_VALID:
    snprintf(out, len, "certificate not yet valid: %.120s", subj);
    break;
  default:
    snprintf(out, len, "certificate refused (%.120s): %s",
             X509_verify_cert_error_string(c->tls_verify_err), subj);
  }
}

/* OpenSSL's reason, read as what the broker said about us or what the
 * port is. */
static const char *reason_words(const char *r) {
  if (strstr(r, "wrong version number") ||
      strstr(r, "packet length too long") ||
      strstr(r, "record layer failure") || strstr(r, "http request"))
    return "the port does not speak TLS (a plain amqp:// port?)";
  if (strstr(r, "certificate required"))
    return "the broker requires a client certificate (certfile, keyfile)";
  if (strstr(r, "unknown ca") || strstr(r, "unknown CA"))
    return "the broker refused our client certificate: unknown CA";
  if (strstr(r, "bad certificate") || strstr(r, "certificate unknown"))
    return "the broker refused our client certificate";
  if (strstr(r, "certificate expired"))
    return "the broker refused our client certificate: expired";
  return NULL;
}

int edp__tls_explain(edp_conn *c, int status, int in_login, char *err_text,
                     size_t err_len) {
  char why[400];
  int rc = EDP_ETLS;
  const char *r = ssl_reason();
  const char *words = r[0] ? reason_words(r) : NULL;
  if (c->tls_verify_err) {
    verify_words(c, why, sizeof(why));
  } else if (c->tls_alert) {
    const char *a =
        c->tls_alert > 0 ? SSL_alert_desc_string_long(c->tls_alert) : "?";
    const char *w = reason_words(a);
    /* OpenSSL 3.0 has no name for TLS 1.3's certificate_required alert. */
    if (!w && (strstr(a, "required") ||
               c->tls_alert == TLS13_AD_CERTIFICATE_REQUIRED))
      w = "the broker requires a client certificate (certfile, keyfile)";
    if (w)
      snprintf(why, sizeof(why), "%s", w);
    else
      snprintf(why, sizeof(why), "the broker refused the handshake: %s", a);
  } else if (words) {
    snprintf(why, sizeof(why), "%s", words);
  } else if (!in_login && c->tls_started &&
             (ssl_network_error() || (!r[0] && closed_status(status)))) {
    /* Closed or reset before the peer said a TLS word: no refusal, a
     * broker going down or a balancer with nothing behind it. Retried,
     * like an unreachable broker (a plain AMQP port answers with bytes
     * that are not TLS: "does not speak TLS" above). */
    snprintf(why, sizeof(why),
             "the connection was closed during the TLS handshake, before "
             "the peer answered%s%s%s",
             r[0] ? " (" : "", r, r[0] ? ")" : "");
    rc = EDP_ECONNECT;
  } else if (r[0]) {
    snprintf(why, sizeof(why), "TLS handshake failed: %s", r);
  } else if (status == AMQP_STATUS_TIMEOUT && c->tls_started && !in_login) {
    /* The peer took the connection and did not finish the handshake: a
     * stall, not a refusal; retried like an unreachable broker. */
    snprintf(why, sizeof(why), "TLS handshake timed out");
    rc = EDP_ECONNECT;
  } else if (in_login && closed_status(status)) {
    /* Under TLS 1.3 the broker refuses a client certificate, or the lack
     * of one (fail_if_no_peer_cert), after we sent our first bytes; it
     * then closes with those unread, the kernel answers with a reset and
     * the reset discards its alert before we read it. */
    if (c->url.certfile[0])
      snprintf(why, sizeof(why),
               "the broker closed the connection right after the TLS "
               "handshake: it refused our client certificate %.200s (its "
               "log says why)",
               c->url.certfile);
    else
      snprintf(why, sizeof(why),
               "the broker closed the connection right after the TLS "
               "handshake: no client certificate was given and it probably "
               "requires one (certfile, keyfile)");
  } else if (in_login || !c->tls_started) {
    return 0; /* not a TLS matter: the caller says what it is */
  } else {
    snprintf(why, sizeof(why), "TLS handshake failed: %s",
             amqp_error_string2(status));
  }
  snprintf(err_text, err_len, "%s: %s", c->masked, why);
  ERR_clear_error();
  return rc;
}
