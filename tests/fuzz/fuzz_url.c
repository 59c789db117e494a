/*
 * fuzz_url.c - the URL parser and both maskings (lib/edp_url.c).
 *
 * The first byte picks the mode. Raw: the rest is a URL; parsing and
 * masking must not crash, a failure gives a one-line reason, and a parsed
 * URL printed by edp_url_format_masked() parses back to the same fields.
 * Password: the rest is user NUL password NUL tail, made into
 * amqp[s]://user:password@tail (the password unescaped, as users get it
 * wrong); then the masked text may show no byte of the password, and the
 * parser's reason not the password, whatever bytes it holds.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp_url.h"

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_url: " __VA_ARGS__);                               \
      fputc('\n', stderr);                                                     \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* Parses url; checks the reason on failure and the round trip of the
 * canonical masked form on success. why receives the reason. */
static int parse_checked(const char *url, edp_url *u, char *why, size_t len) {
  why[0] = '\0';
  int rc = edp_url_parse(url, u, why, len);
  if (rc) {
    CHECK(why[0] && !strchr(why, '\n'), "no one-line reason for '%s'", url);
    return rc;
  }
  char out[2048], why2[256];
  edp_url back;
  edp_url_format_masked(u, out, sizeof(out));
  CHECK(strstr(out, ":***@") || u->auth_mechanism == EDP_AUTH_EXTERNAL,
        "no mask in '%s'", out);
  if (u->auth_mechanism == EDP_AUTH_EXTERNAL)
    return 0; /* its printed form lacks the certificate options */
  CHECK(edp_url_parse(out, &back, why2, sizeof(why2)) == 0,
        "'%s' printed as '%s', which does not parse: %s", url, out, why2);
  CHECK(!strcmp(back.user, u->user) && !strcmp(back.host, u->host) &&
            !strcmp(back.vhost, u->vhost) && back.port == u->port &&
            back.tls == u->tls,
        "'%s' printed as '%s' reads back differently", url, out);
  return 0;
}

static void raw(const char *url) {
  edp_url u;
  char why[256], out[600];
  parse_checked(url, &u, why, sizeof(why));
  edp_url_mask(url, out, sizeof(out));
  CHECK(strlen(out) < sizeof(out), "mask not terminated");
  edp_url_mask(url, out, 1 + strlen(url) % 13); /* truncation */
}

/* The same password with each letter and digit moved to another of its
 * class (hex digits among hex digits, so %XX escapes stay valid): the
 * parser takes the same path, and text found in both reasons is the
 * reason's own wording (a password "host" in "after the host"), not the
 * password. Returns 0 when pass has no letter or digit to change. */
static int other_password(const char *pass, char *out) {
  int changed = 0;
  for (size_t i = 0;; i++) {
    char c = pass[i];
    if (c >= '0' && c <= '9')
      c = c == '9' ? '0' : c + 1;
    else if (c >= 'a' && c <= 'f')
      c = c == 'f' ? 'a' : c + 1;
    else if (c >= 'A' && c <= 'F')
      c = c == 'F' ? 'A' : c + 1;
    else if (c >= 'g' && c <= 'z')
      c = c == 'z' ? 'g' : c + 1;
    else if (c >= 'G' && c <= 'Z')
      c = c == 'Z' ? 'G' : c + 1;
    changed |= c != pass[i];
    out[i] = c;
    if (!c)
      return changed;
  }
}

/* The same password with every byte the mask does not look at (all but
 * ':', '@', '/', '?', '#', '[') changed: the mask splits both URLs at the
 * same places, so its two outputs differ exactly where a password byte is
 * shown. Comparing text instead read the mask's own "***" as a leak (a
 * password "***@z" and a tail "x@z" mask as "...:***@z"). Returns 0 when
 * no byte can change. */
static int mask_probe(const char *pass, char *out) {
  int changed = 0;
  for (size_t i = 0;; i++) {
    char c = pass[i];
    if (c && !strchr(":@/?#[", c))
      c = c == 'x' ? 'y' : 'x';
    changed |= c != pass[i];
    out[i] = c;
    if (!c)
      return changed;
  }
}

/* Checks that edp_url_mask() shows no byte of pass in url. */
static void mask_hides(const char *url, const char *user, const char *pass,
                       const char *tail, const char *scheme, size_t n) {
  char *url2 = malloc(n), *pass2 = malloc(strlen(pass) + 1);
  if (url2 && pass2 && mask_probe(pass, pass2)) {
    char out[2048], out2[2048];
    snprintf(url2, n, "%s%s:%s@%s", scheme, user, pass2, tail);
    edp_url_mask(url, out, sizeof(out));
    edp_url_mask(url2, out2, sizeof(out2));
    CHECK(!strcmp(out, out2), "'%s' masked as '%s' shows the password", url,
          out);
  }
  free(url2);
  free(pass2);
}

static void password(const char *user, const char *pass, const char *tail,
                     int tls) {
  const char *scheme = tls ? "amqps://" : "amqp://";
  size_t n = strlen(scheme) + strlen(user) + strlen(pass) + strlen(tail) + 8;
  char *url = malloc(n), *shown = malloc(n);
  if (!url || !shown) {
    free(url);
    free(shown);
    return;
  }
  snprintf(url, n, "%s%s:%s@%s", scheme, user, pass, tail);
  snprintf(shown, n, "%s%s:***@%s", scheme, user, tail);
  /* In a reason, a password of a few bytes, or one the rest of the URL
   * holds anyway (a host named like it), can't be told from the rest. */
  int secret = strlen(pass) >= 4 && !strstr(shown, pass);
  char why[256];
  edp_url u;
  mask_hides(url, user, pass, tail, scheme, n);
  if (parse_checked(url, &u, why, sizeof(why)) && secret && strstr(why, pass)) {
    char *pass2 = malloc(strlen(pass) + 1), why2[256] = "";
    if (pass2 && other_password(pass, pass2)) {
      snprintf(url, n, "%s%s:%s@%s", scheme, user, pass2, tail);
      edp_url_parse(url, &u, why2, sizeof(why2));
      snprintf(url, n, "%s%s:%s@%s", scheme, user, pass, tail);
    }
    CHECK(!pass2 || strstr(why2, pass), "'%s': reason '%s' shows it", url, why);
    free(pass2);
  }
  free(url);
  free(shown);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > 4096)
    return 0;
  char *s = malloc(size + 1);
  if (!s)
    return 0;
  memcpy(s, data + 1, size - 1);
  s[size - 1] = '\0';
  if (data[0] & 1) {
    /* user NUL password NUL tail; missing parts are empty (end is the
     * terminating NUL). */
    const char *end = s + size - 1, *p = s + strlen(s);
    const char *pass = p < end ? p + 1 : end;
    const char *q = pass + strlen(pass);
    const char *tail = q < end ? q + 1 : end;
    password(s, pass, tail, data[0] & 2);
  } else {
    raw(s);
  }
  free(s);
  return 0;
}
