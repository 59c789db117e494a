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

/* Compares the key q[0..klen) with name. */
static int key_is(const char *q, size_t klen, const char *name) {
  return strlen(name) == klen && !strncmp(q, name, klen);
}

/* A TLS option's string value, percent-decoded into dst. */
static int tls_value(const char *k, size_t klen, const char *v, size_t vlen,
                     char *dst, size_t cap, char *err_text, size_t err_len) {
  if (vlen == 0 || decode(v, vlen, dst, cap))
    return fail(err_text, err_len,
                "bad value for %.*s (empty, a bad %% "
                "escape or too long)",
                (int)klen, k);
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
    int rc = 0, is_tls = 1;
    char word[32] = "";
    if (key_is(q, klen, "heartbeat")) {
      dst = &out->heartbeat_s;
      hi = 3600;
    } else if (key_is(q, klen, "connection_timeout")) {
      dst = &out->connect_timeout_ms;
      hi = 3600000;
    } else if (key_is(q, klen, "frame_max")) {
      dst = &out->frame_max;
      hi = 2147483647;
    } else if (key_is(q, klen, "channel_max")) {
      dst = &out->channel_max;
      hi = 65535;
    } else if (key_is(q, klen, "cacertfile")) {
      rc = tls_value(q, klen, v, vlen, out->cacertfile, sizeof(out->cacertfile),
                     err_text, err_len);
    } else if (key_is(q, klen, "certfile")) {
      rc = tls_value(q, klen, v, vlen, out->certfile, sizeof(out->certfile),
                     err_text, err_len);
    } else if (key_is(q, klen, "keyfile")) {
      rc = tls_value(q, klen, v, vlen, out->keyfile, sizeof(out->keyfile),
                     err_text, err_len);
    } else if (key_is(q, klen, "verify")) {
      if (decode(v, vlen, word, sizeof(word)))
        word[0] = '\0';
      if (!strcmp(word, "verify_peer"))
        out->verify_peer = 1;
      else if (!strcmp(word, "verify_none"))
        out->verify_peer = 0;
      else
        return fail(err_text, err_len,
                    "bad value for verify (verify_peer or verify_none)");
    } else if (key_is(q, klen, "server_name_indication")) {
      rc = tls_value(q, klen, v, vlen, out->sni, sizeof(out->sni), err_text,
                     err_len);
      if (!rc && !strcmp(out->sni, "disable")) {
        out->sni[0] = '\0';
        out->sni_disabled = 1;
      } else if (!rc) {
        out->sni_disabled = 0;
      }
    } else if (key_is(q, klen, "auth_mechanism")) {
      /* RabbitMQ's URIs spell the mechanism in either case. */
      if (decode(v, vlen, word, sizeof(word)))
        word[0] = '\0';
      for (char *w = word; *w; w++)
        *w = (char)tolower((unsigned char)*w);
      if (!strcmp(word, "plain"))
        out->auth_mechanism = EDP_AUTH_PLAIN;
      else if (!strcmp(word, "external"))
        out->auth_mechanism = EDP_AUTH_EXTERNAL;
      else
        return fail(err_text, err_len,
                    "bad value for auth_mechanism (plain or external)");
    } else {
      return fail(err_text, err_len, "unknown query option: %.*s", (int)klen,
                  q);
    }
    if (rc)
      return rc;
    if (dst) {
      is_tls = 0;
      if (parse_int(v, vlen, 0, hi, dst))
        return fail(err_text, err_len, "bad value for %.*s: %.*s", (int)klen, q,
                    (int)vlen, v);
    }
    if (is_tls && !out->tls)
      return fail(err_text, err_len,
                  "%.*s is a TLS option: it needs an amqps:// URL", (int)klen,
                  q);
    q += len + (amp ? 1 : 0);
  }
  if (!out->certfile[0] != !out->keyfile[0])
    return fail(err_text, err_len, "certfile and keyfile go together");
  if (out->auth_mechanism == EDP_AUTH_EXTERNAL && !out->certfile[0])
    return fail(err_text, err_len,
                "auth_mechanism=external needs certfile and keyfile");
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
  out->verify_peer = 1;

  const char *p;
  if (!strncmp(url, "amqps://", 8)) {
    out->tls = 1;
    out->port = 5671;
    p = url + 8;
  } else if (!strncmp(url, "amqp://", 7)) {
    p = url + 7;
  } else {
    return fail(err_text, err_len, "URL must start with amqp:// or amqps://");
  }
  for (const char *c = p; *c; c++)
    if ((unsigned char)*c <= ' ' || *c == 0x7f)
      return fail(err_text, err_len, "URL contains a space or control byte");

  /* The authority ends at the first '/', '?' or '#'; a '@' in it separates
   * the user information, whose ':' separates the password. A '@' after
   * that end means the user information held an unescaped / ? or #: say
   * so rather than read a piece of the password as the host. */
  size_t alen = strcspn(p, "/?#");
  const char *auth_end = p + alen;
  if (*auth_end && strchr(auth_end, '@'))
    return fail(err_text, err_len,
                "'@' after the host: a user name or password holds an "
                "unescaped '/', '?' or '#' (write %%2F, %%3F, %%23; '@' as "
                "%%40, also in a path or query value)");
  if (strchr(p, '#'))
    return fail(err_text, err_len,
                "a URL fragment ('#') is not allowed; "
                "write '#' in a password as %%23");
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
                              65535, &out->port)) {
    /* Only echo a port made of digits: anything else may be a piece of a
     * password whose '@' went missing. */
    size_t plen = (size_t)(auth_end - port_start);
    int digits = plen > 0 && plen <= 12;
    for (size_t i = 0; digits && i < plen; i++)
      digits = isdigit((unsigned char)port_start[i]) != 0;
    if (digits)
      return fail(err_text, err_len, "bad port in URL: '%.*s'", (int)plen,
                  port_start);
    return fail(err_text, err_len,
                "bad port in URL (not a number in 1..65535)");
  }

  /* No path means the default vhost "/"; a path, even an empty one, is
   * the vhost itself: amqp://host/ is the vhost "" (as rabbitmq-c, the
   * Java client and the specification's appendix read it). */
  const char *rest = auth_end;
  if (*rest == '/') {
    rest++;
    size_t plen = strcspn(rest, "?");
    if (memchr(rest, '/', plen))
      return fail(err_text, err_len,
                  "vhost must be one path segment (write '/' as %%2f)");
    if (decode(rest, plen, out->vhost, sizeof(out->vhost)))
      return fail(err_text, err_len, "bad vhost in URL");
    rest += plen;
  }
  if (*rest == '?')
    return parse_query(rest + 1, out, err_text, err_len);
  return parse_query("", out, err_text, err_len);
}

char *edp_url_mask(const char *url, char *out, size_t out_len) {
  if (!out || out_len == 0)
    return out;
  if (!url) {
    snprintf(out, out_len, "(null)");
    return out;
  }
  /* Mask from the first ':' of the user information to the last '@' of
   * the whole string: a password may hold unescaped '/', '?', '#' or '@'
   * that end the authority early, and masking a '@' in the query as well
   * costs readability, never secrecy. */
  const char *sep = strstr(url, "://");
  const char *p = sep ? sep + 3 : url;
  const char *at = strrchr(p, '@');
  const char *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
  if (!at && *p != '[') {
    /* No '@' at all: "user:secret" without a host would read as host and
     * port. A port that is not all digits may be a password, so mask
     * everything after that ':'. */
    size_t alen = strcspn(p, "/?#");
    const char *c = memchr(p, ':', alen);
    int digits = 1;
    for (const char *d = c ? c + 1 : p + alen; d < p + alen; d++)
      digits = digits && *d >= '0' && *d <= '9';
    if (c && !digits) {
      snprintf(out, out_len, "%.*s:***", (int)(c - url), url);
      return out;
    }
  }
  if (!colon) {
    snprintf(out, out_len, "%s", url);
  } else {
    snprintf(out, out_len, "%.*s:***%s", (int)(colon - url), url, at);
  }
  return out;
}

/* Appends s to out[*o..cap) percent-encoded: everything but RFC 3986's
 * unreserved characters, so that the result parses back to s. */
static void encode(const char *s, char *out, size_t cap, size_t *o) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s && *o + 4 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (isalnum(c) || strchr("-._~", c)) {
      out[(*o)++] = (char)c;
    } else {
      out[(*o)++] = '%';
      out[(*o)++] = hex[c >> 4];
      out[(*o)++] = hex[c & 15];
    }
  }
  out[*o] = '\0';
}

/* Appends the literal text s to out[*o..cap), truncating. */
static void append(const char *s, char *out, size_t cap, size_t *o) {
  for (; *s && *o + 1 < cap; s++)
    out[(*o)++] = *s;
  out[*o] = '\0';
}

/* An IPv6 literal: hex digits, ':' and '.' only (it goes in brackets). */
static int is_ipv6(const char *h) {
  return strchr(h, ':') && strspn(h, "0123456789abcdefABCDEF:.") == strlen(h);
}

char *edp_url_format_masked(const edp_url *u, char *out, size_t out_len) {
  if (!out || out_len == 0)
    return out;
  /* Built whole first (each field encoded fits: 3 bytes per byte), then
   * truncated as snprintf would. */
  char buf[2048], port[16];
  size_t o = 0, cap = sizeof(buf);
  append(u->tls ? "amqps://" : "amqp://", buf, cap, &o);
  if (u->auth_mechanism != EDP_AUTH_EXTERNAL) {
    encode(u->user, buf, cap, &o);
    append(":***@", buf, cap, &o);
  }
  if (is_ipv6(u->host)) {
    append("[", buf, cap, &o);
    append(u->host, buf, cap, &o);
    append("]", buf, cap, &o);
  } else {
    encode(u->host, buf, cap, &o);
  }
  snprintf(port, sizeof(port), ":%d", u->port);
  append(port, buf, cap, &o);
  /* The default vhost "/" is written as no path at all: every client
   * reads that as "/", while a trailing '/' would mean the vhost "". */
  if (strcmp(u->vhost, "/")) {
    append("/", buf, cap, &o);
    encode(u->vhost, buf, cap, &o);
  }
  if (u->auth_mechanism == EDP_AUTH_EXTERNAL)
    append("?auth_mechanism=external", buf, cap, &o);
  snprintf(out, out_len, "%s", buf);
  return out;
}
