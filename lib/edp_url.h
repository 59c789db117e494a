/*
 * edp_url.h - broker URLs: parse amqp://user:pass@host:port/vhost?opts
 * and print them with the password masked.
 */
#ifndef EDP_URL_H
#define EDP_URL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDP_URL_DEFAULT "amqp://guest:guest@localhost:5672/"

typedef struct edp_url {
  char host[256];  /* host name or address, IPv6 without brackets */
  int port;        /* 1..65535, default 5672 */
  char user[128];  /* percent-decoded, default "guest" */
  char pass[128];  /* percent-decoded, default "guest" */
  char vhost[128]; /* percent-decoded, default "/" */
  /* Query options (RabbitMQ's URI query parameters); -1 = not given. */
  int heartbeat_s;        /* ?heartbeat=N, seconds, 0 disables */
  int connect_timeout_ms; /* ?connection_timeout=N, milliseconds */
  int frame_max;          /* ?frame_max=N, bytes */
  int channel_max;        /* ?channel_max=N */
} edp_url;

/* Parses url into *out. Accepts amqp:// only (amqps:// comes later).
 * A missing user/password means guest/guest, a missing or "/" path means
 * vhost "/", "%2f" is decoded. If err_text is not NULL, a one-line reason
 * (without the password) is written to it on failure.
 * Returns 0, EDP_EINVAL (NULL argument) or EDP_EURL. */
int edp_url_parse(const char *url, edp_url *out, char *err_text,
                  size_t err_len);

/* Writes url to out with the password replaced by "***"
 * (amqp://user:***@host:5672/vh); works on malformed URLs too, so that
 * error messages never leak a password. Always NUL-terminates when
 * out_len > 0. Returns out. */
char *edp_url_mask(const char *url, char *out, size_t out_len);

/* Writes the canonical masked form of a parsed URL to out. Returns out. */
char *edp_url_format_masked(const edp_url *u, char *out, size_t out_len);

#ifdef __cplusplus
}
#endif
#endif
