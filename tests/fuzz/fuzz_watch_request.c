/*
 * fuzz_watch_request.c - libFuzzer target for the watch registration
 * request parser: the bytes are a request body as anyone who can publish
 * to config.q may send it, with reply_to "amq.gen-fuzz" (the seeds name
 * that queue, so the fuzzer reaches past the queue check). The first
 * line of the input, if it starts with "reply_to:", replaces reply_to.
 * A parse that says "valid" must give what a valid request is.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edp_watch_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char reply_to[300] = "amq.gen-fuzz";
  const char *body = (const char *)data;
  if (size > 9 && !memcmp(data, "reply_to:", 9)) {
    const uint8_t *nl = memchr(data, '\n', size);
    size_t n = nl ? (size_t)(nl - data) - 9 : 0;
    if (nl && n < sizeof(reply_to)) {
      memcpy(reply_to, data + 9, n);
      reply_to[n] = '\0';
      body = (const char *)nl + 1;
      size -= (size_t)(nl - data) + 1;
    }
  }
  edp__watch_req req;
  const char *why =
      edp__watch_parse_request(body, size, reply_to, "svc.", &req);
  if (!why) {
    /* The promises the server relies on. */
    if (!req.queue || strcmp(req.queue, reply_to) ||
        !edp__watch_queue_allowed("svc.", req.queue))
      abort();
    if (req.service &&
        !edp__watch_printable(req.service, EDP_WATCH_MAX_NAME_LEN))
      abort();
    if (req.keys && (!json_is_array(req.keys) ||
                     json_array_size(req.keys) > EDP_WATCH_MAX_KEYS))
      abort();
    for (size_t i = 0; req.keys && i < json_array_size(req.keys); i++)
      if (!edp__watch_key_valid(json_string_value(json_array_get(req.keys, i))))
        abort();
  }
  edp__watch_req_clear(&req);
  return 0;
}
