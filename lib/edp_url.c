/*
 * edp_url.c - parse and mask AMQP URLs.
 *
 * We parse URLs ourselves rather than with amqp_parse_url() because that
 * function rewrites its input in place, does not decode the vhost's
 * percent escapes consistently and ignores the query options (heartbeat,
 * connection_timeout ...) that users put in EDP_URL.
 */
#include "edp_url.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp_error.h"

static int fail(char *err_text, size_t err_len, const char *fmt, ...) {
  if (err_text && err_len) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_text, err_len, fmt, ap);
    va_end(ap);
  }
  return EDP_EURL;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = tolower(c);
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

/* Percent-decodes src[0..len) into dst (cap bytes with the NUL).
 * Returns 0, or -1 on a bad escape, an embedded NUL or overflow. */
static int decode(const char *src, size_t len, char *dst, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    int c = (unsigned char)src[i];
    if (c == '%') {
      if (i + 2 >= len)
        return -1;
      int hi = hexval(src[i + 1]), lo = hexval(src[i + 2]);
      if (hi < 0 || lo < 0)
        return -1;
      c = hi * 16 + lo;
      if (c == 0)
        return -1;
      i += 2;
    }
    if (o + 1 >= cap)
      return -1;
    dst[o++] = (char)c;
  }
  dst[o] = '\0';
  return 0;
}

/* Parses a decimal integer in [lo, hi] from s[0..len). */
static int parse_int(const char *s, size_t len, long lo, long hi, int *out) {
  if (len == 0 || len > 10)
    return -1;
  long v = 0;
  for (size_t i = 0; i < len; i++) {
    if (!isdigit((unsigned char)s[i]))
      return -1;
    v = v * 10 + (s[i] - '0');
  }
  if (v < lo || v > hi)
    return -1;
  *out = (int)v;
  return 0;
}

static int parse_query(const char *q, edp_url *out, char *err_text,
                       size_t err_len) {
  while (*q) {
    const char *amp = strchr(q, '&');
    size_t len = amp ? (size_t)(amp - q) : strlen(q);
    const char *eq = memchr(q, '=', len);
    if (!eq)
      return fail(err_text, err_len, "query option without value: %.*s",
                  (int)len, q);
    size_t klen = (size_t)(eq - q), vlen = len - klen - 1;
    const char *v = eq + 1;
    int *dst = NULL;
    long hi = 0;
    if (klen == 9 && !strncmp(q, "heartbeat", 9)) {
      dst = &out->heartbeat_s;
      hi = 3600;
    } else if (klen == 18 && !strncmp(q, "connection_timeout", 18)) {
      dst = &out->connect_timeout_ms;
      hi = 3600000;
    } else if (klen == 9 && !strncmp(q, "frame_max", 9)) {
      dst = &out->frame_max;
      hi = 2147483647;
    } else if (klen == 11 && !strncmp(q, "channel_max", 11)) {
      dst = &out->channel_max;
      hi = 65535;
    } else {
      return fail(err_text, err_len, "unknown query option: %.*s", (int)klen,
                  q);
    }
    if (parse_int(v, vlen, 0, hi, dst))
      return fail(err_text, err_len, "bad value for %.*s: %.*s", (int)klen, q,
                  (int)vlen, v);
    q += len + (amp ? 1 : 0);
  }
  return 0;
}

int edp_url_parse(const char *url, edp_url *out, char *err_text,
                  size_t err_len) {
  if (!url || !out)
    return EDP_EINVAL;
  memset(out, 0, sizeof(*out));
  out->port = 5672;
  out->heartbeat_s = out->connect_timeout_ms = -1;
  out->frame_max = out->channel_max = -1;
  strcpy(out->user, "guest");
  strcpy(out->pass, "guest");
  strcpy(out->vhost, "/");

  if (!strncmp(url, "amqps://", 8))
    return fail(err_text, err_len, "amqps:// (TLS) is not supported yet");
  if (strncmp(url, "amqp://", 7))
    return fail(err_text, err_len, "URL must start with amqp://");
  const char *p = url + 7;
  for (const char *c = p; *c; c++)
    if ((unsigned char)*c <= ' ' || *c == 0x7f)
      return fail(err_text, err_len, "URL contains a space or control byte");

  /* The authority ends at the first '/' or '?'; a '@' in it separates the
   * user information, whose ':' separates the password. */
  size_t alen = strcspn(p, "/?");
  const char *auth_end = p + alen;
  const char *at = NULL;
  for (const char *c = p; c < auth_end; c++)
    if (*c == '@')
      at = c;
  const char *hostpart = p;
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
    if (decode(p, ulen, out->user, sizeof(out->user)))
      return fail(err_text, err_len, "bad user name in URL");
    if (colon) {
      if (decode(colon + 1, (size_t)(at - colon - 1), out->pass,
                 sizeof(out->pass)))
        return fail(err_text, err_len, "bad password in URL");
    } else {
      out->pass[0] = '\0';
    }
    hostpart = at + 1;
  }

  const char *port_start = NULL;
  const char *host_end;
  if (*hostpart == '[') {
    const char *rb = memchr(hostpart, ']', (size_t)(auth_end - hostpart));
    if (!rb)
      return fail(err_text, err_len, "unclosed '[' in IPv6 host");
    if (rb - hostpart - 1 <= 0 ||
        (size_t)(rb - hostpart - 1) >= sizeof(out->host))
      return fail(err_text, err_len, "bad IPv6 host");
    memcpy(out->host, hostpart + 1, (size_t)(rb - hostpart - 1));
    out->host[rb - hostpart - 1] = '\0';
    host_end = rb + 1;
    if (host_end < auth_end) {
      if (*host_end != ':')
        return fail(err_text, err_len, "junk after IPv6 host");
      port_start = host_end + 1;
    }
  } else {
    const char *colon = memchr(hostpart, ':', (size_t)(auth_end - hostpart));
    host_end = colon ? colon : auth_end;
    if (colon)
      port_start = colon + 1;
    if (decode(hostpart, (size_t)(host_end - hostpart), out->host,
               sizeof(out->host)))
      return fail(err_text, err_len, "bad host in URL");
    if (!out->host[0])
      strcpy(out->host, "localhost");
  }
  if (!out->host[0])
    return fail(err_text, err_len, "empty host in URL");
  if (port_start && parse_int(port_start, (size_t)(auth_end - port_start), 1,
                              65535, &out->port))
    return fail(err_text, err_len, "bad port in URL: '%.*s'",
                (int)(auth_end - port_start), port_start);

  const char *rest = auth_end;
  if (*rest == '/') {
    rest++;
    size_t plen = strcspn(rest, "?");
    if (plen > 0) {
      if (memchr(rest, '/', plen))
        return fail(err_text, err_len,
                    "vhost must be one path segment (write '/' as %%2f)");
      if (decode(rest, plen, out->vhost, sizeof(out->vhost)))
        return fail(err_text, err_len, "bad vhost in URL");
    }
    rest += plen;
  }
  if (*rest == '?')
    return parse_query(rest + 1, out, err_text, err_len);
  return 0;
}

char *edp_url_mask(const char *url, char *out, size_t out_len) {
  if (!out || out_len == 0)
    return out;
  if (!url) {
    snprintf(out, out_len, "(null)");
    return out;
  }
  const char *sep = strstr(url, "://");
  const char *p = sep ? sep + 3 : url;
  size_t alen = strcspn(p, "/?");
  const char *at = NULL;
  for (const char *c = p; c < p + alen; c++)
    if (*c == '@')
      at = c;
  const char *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
  if (!colon) {
    snprintf(out, out_len, "%s", url);
  } else {
    snprintf(out, out_len, "%.*s:***%s", (int)(colon - url), url, at);
  }
  return out;
}

char *edp_url_format_masked(const edp_url *u, char *out, size_t out_len) {
  if (!out || out_len == 0)
    return out;
  int v6 = strchr(u->host, ':') != NULL;
  const char *vh = strcmp(u->vhost, "/") ? u->vhost : "";
  snprintf(out, out_len, "amqp://%s:***@%s%s%s:%d/%s", u->user, v6 ? "[" : "",
           u->host, v6 ? "]" : "", u->port, vh);
  return out;
}
