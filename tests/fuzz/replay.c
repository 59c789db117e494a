/*
 * replay.c - runs a libFuzzer target's inputs without libFuzzer: each
 * file named on the command line (or each file of a directory named) is
 * read whole and given to LLVMFuzzerTestOneInput() once. make check links
 * it with every tests/fuzz/fuzz_<name>.c, built with the normal compiler
 * (and ASan/UBSan under SAN=1), and replays the seed corpus and the
 * crashes found earlier, so regressions need no clang.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return -1;
  }
  size_t cap = 4096, n = 0, got;
  uint8_t *buf = malloc(cap);
  while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) {
      uint8_t *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  fclose(f);
  if (!buf) {
    fprintf(stderr, "%s: out of memory\n", path);
    return -1;
  }
  /* A copy of exactly n bytes, so that ASan sees a read past the end. */
  uint8_t *exact = malloc(n ? n : 1);
  if (exact)
    memcpy(exact, buf, n);
  free(buf);
  if (!exact)
    return -1;
  LLVMFuzzerTestOneInput(exact, n);
  free(exact);
  return 0;
}

int main(int argc, char **argv) {
  int files = 0, bad = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
      DIR *d = opendir(argv[i]);
      struct dirent *e;
      while (d && (e = readdir(d))) {
        char p[4096];
        snprintf(p, sizeof(p), "%s/%s", argv[i], e->d_name);
        if (e->d_name[0] != '.' && stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
          bad |= run_file(p) != 0;
          files++;
        }
      }
      if (d)
        closedir(d);
    } else {
      bad |= run_file(argv[i]) != 0;
      files++;
    }
  }
  printf("%s: %d inputs replayed\n", argv[0], files);
  return bad ? EXIT_FAILURE : EXIT_SUCCESS;
}
