/*
 * fuzz_watch_store.c - libFuzzer target for the watch store loader: the
 * bytes are a store file (damaged, hand-edited, hostile). A store that
 * loads must dump to a store that loads to the same dump (what the server
 * writes it can read back, unchanged).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edp_watch_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  edp__watch_reg r;
  if (edp__watch_reg_init(&r))
    return 0;
  if (edp__watch_store_parse(&r, (const char *)data, size, "svc.") == 0) {
    char *a = edp__watch_store_dump(&r);
    edp__watch_reg r2;
    if (a && !edp__watch_reg_init(&r2)) {
      if (edp__watch_store_parse(&r2, a, strlen(a), "svc.") != 0)
        abort();
      char *b = edp__watch_store_dump(&r2);
      if (!b || strcmp(a, b))
        abort();
      /* The indexes agree with the array. */
      for (size_t i = 0; i < r2.n_w; i++)
        if (edp__watch_find(&r2, r2.w[i].queue) != &r2.w[i])
          abort();
      free(b);
      edp__watch_reg_free(&r2);
    }
    free(a);
  }
  edp__watch_reg_free(&r);
  return 0;
}
