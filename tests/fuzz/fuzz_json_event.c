/*
 * fuzz_json_event.c - libFuzzer target for the event output of the edp
 * programs (cmd/cli.c): cli_json_setn, which must put any bytes into a
 * JSON event without losing the event or the bytes, and cli_text, which
 * must turn any bytes into one line of text without control characters.
 *
 * The first input byte sizes the text buffer; the rest is the value.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int unb64(int c) {
  return c >= 'A' && c <= 'Z'   ? c - 'A'
         : c >= 'a' && c <= 'z' ? c - 'a' + 26
         : c >= '0' && c <= '9' ? c - '0' + 52
         : c == '+'             ? 62
         : c == '/'             ? 63
                                : -1;
}

/* Decodes padded base64 s into out; returns the length or -1. */
static long b64_decode(const char *s, unsigned char *out) {
  size_t n = strlen(s), o = 0;
  if (n % 4)
    return -1;
  for (size_t i = 0; i < n; i += 4) {
    int a = unb64(s[i]), b = unb64(s[i + 1]);
    int c = s[i + 2] == '=' ? 0 : unb64(s[i + 2]);
    int d = s[i + 3] == '=' ? 0 : unb64(s[i + 3]);
    if (a < 0 || b < 0 || c < 0 || d < 0)
      return -1;
    uint32_t v =
        (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
    out[o++] = (unsigned char)(v >> 16);
    if (s[i + 2] != '=')
      out[o++] = (unsigned char)(v >> 8);
    if (s[i + 3] != '=')
      out[o++] = (unsigned char)v;
  }
  return (long)o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t cap = (size_t)data[0] + 1;
  const char *s = (const char *)data + 1;
  size_t len = size - 1;

  /* JSON: the event always encodes, and the bytes come back exactly. */
  json_t *o = json_pack("{s:s}", "event", "processed");
  cli_json_setn(o, "message_id", s, len);
  char *line = json_dumps(o, JSON_COMPACT);
  if (!line || strchr(line, '\n'))
    __builtin_trap();
  /* A NUL is valid JSON (\u0000); jansson parses it only when asked. */
  json_t *back = json_loads(line, JSON_ALLOW_NUL, NULL);
  json_t *v = json_object_get(back, "message_id");
  json_t *b = json_object_get(back, "message_id_b64");
  if (!json_is_string(v))
    __builtin_trap(); /* the event lost its id */
  if (b) {
    unsigned char *raw = malloc(len + 3);
    long n = b64_decode(json_string_value(b), raw);
    if (n != (long)len || (len && memcmp(raw, s, len)))
      __builtin_trap();
    free(raw);
  } else if (json_string_length(v) != len ||
             (len && memcmp(json_string_value(v), s, len))) {
    __builtin_trap(); /* valid UTF-8 must pass unchanged */
  }
  json_decref(back);
  free(line);
  json_decref(o);

  /* Text: one line, no C0/C1 control or DEL, NUL-terminated within cap. */
  char *buf = malloc(cap);
  cli_text(s, len, buf, cap);
  size_t tl = strnlen(buf, cap);
  if (tl >= cap)
    __builtin_trap();
  for (size_t i = 0; i < tl; i++) {
    unsigned char c = (unsigned char)buf[i];
    if (c < 0x20 || c == 0x7f ||
        (c == 0xc2 && i + 1 < tl && (unsigned char)buf[i + 1] < 0xa0))
      __builtin_trap();
  }
  free(buf);
  return 0;
}
