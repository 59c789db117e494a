/*
 * edp_url.h - broker URLs: parse amqp[s]://user:pass@host:port/vhost?opts
 * (RabbitMQ's URI specification and query parameter names) and print them
 * with the password masked.
 */
#ifndef EDP_URL_H
#define EDP_URL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* No path: the default vhost "/" (a trailing '/' would be the vhost ""). */
#define EDP_URL_DEFAULT "amqp://guest:guest@localhost:5672"

/* Values of edp_url.auth_mechanism. */
enum { EDP_AUTH_PLAIN = 0, EDP_AUTH_EXTERNAL = 1 };

typedef struct edp_url {
  int tls;         /* 1 for amqps:// */
  char host[256];  /* host name or address, IPv6 without brackets */
  int port;        /* 1..65535, default 5672 (amqps: 5671) */
  char user[128];  /* percent-decoded, default "guest" */
  char pass[128];  /* percent-decoded, default "guest" */
  char vhost[128]; /* percent-decoded, default "/" */
  /* Query options (RabbitMQ's URI query parameters); -1 = not given. */
  int heartbeat_s;        /* ?heartbeat=N, seconds, 0 disables */
  int connect_timeout_ms; /* ?connection_timeout=N, milliseconds */
  int frame_max;          /* ?frame_max=N, bytes */
  int channel_max;        /* ?channel_max=N */
  /* TLS options, amqps:// only (percent-decoded). "" = not given. */
  char cacertfile[512]; /* ?cacertfile=PATH; "" = the system CA store */
  char certfile[512];   /* ?certfile=PATH, client certificate (PEM) */
  char keyfile[512];    /* ?keyfile=PATH, its private key (PEM) */
  int verify_peer;      /* ?verify=verify_peer (1, default) | verify_none */
  /* ?server_name_indication=NAME|disable: the name sent as SNI and checked
   * against the certificate; "" = the host. */
  char sni[256];
  int sni_disabled;   /* ?server_name_indication=disable */
  int auth_mechanism; /* ?auth_mechanism=plain (default) | external */
} edp_url;

/* Parses url into *out: amqp:// or amqps:// (TLS, default port 5671).
 * RabbitMQ's URI specification, its appendix examples included: a
 * missing user or password means guest, an empty host localhost, no
 * path the default vhost "/", and a path is the vhost itself, decoded:
 * amqp://host/ is the vhost "", amqp://host/%2f is "/". A vhost holding
 * '/' must write it as %2f; a '@' anywhere after the host is refused
 * (a password with an unescaped '/', '?' or '#', or a '@' to write as
 * %40). TLS query options are refused on amqp://
 * (a URL that asks for a CA file must never silently connect in plain),
 * certfile and keyfile go together, and auth_mechanism=external needs
 * them. The characters / ? # @ in a user name or password must be
 * percent-encoded. If err_text is not NULL, a one-line reason
 * (without the password) is written to it on failure.
 * Returns 0, EDP_EINVAL (NULL argument) or EDP_EURL. */
int edp_url_parse(const char *url, edp_url *out, char *err_text,
                  size_t err_len);

/* Writes url to out with the password replaced by "***"
 * (amqp://user:***@host:5672/vh); works on malformed URLs too, so that
 * error messages never leak a password: everything from the first ':'
 * after the scheme to the last '@' is masked, so a password holding an
 * unescaped / ? # or @ is hidden as well (a '@' in the query makes it
 * mask more than needed, never less). Always NUL-terminates when
 * out_len > 0. Returns out. */
char *edp_url_mask(const char *url, char *out, size_t out_len);

/* Writes the canonical masked form of a parsed URL to out
 * (amqps://user:***@host:5671/vh; with auth_mechanism=external there is no
 * password: amqps://host:5671/vh?auth_mechanism=external). User, host and
 * vhost are percent-encoded, and the vhost "/" is written as no path
 * (amqp://user:***@host:5672), so the text reads back as the same fields
 * in edp and in other clients. Returns out. */
char *edp_url_format_masked(const edp_url *u, char *out, size_t out_len);

#ifdef __cplusplus
}
#endif
#endif
