/*
 * testlib.c - see testlib.h. Child processes are read through poll() with
 * deadlines: a test that waits for an event fails after its bound instead
 * of hanging, and never sleeps for a guessed time.
 */
#define _DEFAULT_SOURCE
#include "testlib.h"

#include "edp_url.h"
#include "edp_util.h"
#include "faultproxy.h"
#include <check.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

long long t_now_ms(void) { return edp_now_ms(); }

static const char *need_env(const char *name) {
  const char *v = getenv(name);
  if (!v || !v[0]) {
    fprintf(stderr,
            "%s is not set: run integration suites through "
            "tests/run-integration.sh (make check)\n",
            name);
    abort();
  }
  return v;
}

const char *t_url(void) { return need_env("EDP_URL"); }

char *t_url_as(const char *user, const char *pass, char *out, size_t len) {
  const char *base = t_url(), *auth = strstr(base, "://");
  ck_assert_ptr_nonnull(auth);
  auth += 3;
  /* The credentials end at the authority's last '@'. */
  const char *host = auth;
  for (const char *p = auth; *p && !strchr("/?#", *p); p++)
    if (*p == '@')
      host = p + 1;
  snprintf(out, len, "%.*s%s:%s@%s", (int)(auth - base), base, user, pass,
           host);
  return out;
}

char *t_url_query(const char *base, const char *query, char *out, size_t len) {
  if (query && query[0] == '?' && strchr(base, '?'))
    snprintf(out, len, "%s&%s", base, query + 1);
  else
    snprintf(out, len, "%s%s", base, query ? query : "");
  return out;
}
const char *t_broker_dir(void) { return need_env("EDP_BROKER_DIR"); }

static char *slot(void) {
  static char bufs[16][512];
  static int next;
  return bufs[next++ % 16];
}

const char *t_bin(const char *prog) {
  const char *dir = getenv("EDP_BIN");
  char *b = slot();
  snprintf(b, 512, "%s/%s", dir && dir[0] ? dir : "bin", prog);
  return b;
}

const char *t_unique(const char *base) {
  static int n;
  char *b = slot();
  snprintf(b, 512, "%s.%d.%d", base, (int)getpid(), ++n);
  return b;
}

int t_ctl(const char *args) {
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "tests/broker.sh ctl '%s' %s >/dev/null 2>&1",
           t_broker_dir(), args);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int t_broker(const char *cmd, const char *arg, char *out, size_t out_len) {
  char command[1024];
  snprintf(command, sizeof(command), "tests/broker.sh %s '%s' %s%s%s", cmd,
           t_broker_dir(), arg ? "'" : "", arg ? arg : "", arg ? "'" : "");
  FILE *f = popen(command, "r");
  if (!f)
    return -1;
  char line[512] = "";
  if (!fgets(line, sizeof(line), f))
    line[0] = '\0';
  char drain[512];
  while (fgets(drain, sizeof(drain), f))
    ;
  int st = pclose(f);
  line[strcspn(line, "\n")] = '\0';
  if (out && out_len)
    snprintf(out, out_len, "%s", line);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int spawn(t_proc *p, char *const argv[], const char *stdin_data,
                 int keep_stdin) {
  memset(p, 0, sizeof(*p));
  p->in_fd = -1;
  if (keep_stdin)
    stdin_data = "";
  int out[2], in[2] = {-1, -1};
  if (pipe(out))
    return -1;
  if (stdin_data && pipe(in))
    return -1;
  /* A child that died must fail the test's t_write, not kill the test. */
  signal(SIGPIPE, SIG_IGN);
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    dup2(out[1], 1);
    close(out[0]);
    close(out[1]);
    if (stdin_data) {
      dup2(in[0], 0);
      close(in[0]);
      close(in[1]);
    } else {
      int null = open("/dev/null", O_RDONLY);
      dup2(null, 0);
      close(null);
    }
    execv(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(out[1]);
  if (keep_stdin) {
    close(in[0]);
    p->in_fd = in[1];
  } else if (stdin_data) {
    close(in[0]);
    size_t len = strlen(stdin_data), off = 0;
    while (off < len) {
      ssize_t n = write(in[1], stdin_data + off, len - off);
      if (n <= 0)
        break;
      off += (size_t)n;
    }
    close(in[1]);
  }
  p->pid = pid;
  p->out_fd = out[0];
  return 0;
}

int t_spawn(t_proc *p, char *const argv[], const char *stdin_data) {
  return spawn(p, argv, stdin_data, 0);
}

int t_spawn_stdin(t_proc *p, char *const argv[]) {
  return spawn(p, argv, NULL, 1);
}

int t_write(t_proc *p, const char *text) {
  size_t len = strlen(text), off = 0;
  while (off < len) {
    ssize_t n = write(p->in_fd, text + off, len - off);
    if (n <= 0)
      return -1;
    off += (size_t)n;
  }
  return 0;
}

void t_close_stdin(t_proc *p) {
  if (p->in_fd >= 0)
    close(p->in_fd);
  p->in_fd = -1;
}

int t_readline(t_proc *p, char *line, size_t cap, int timeout_ms) {
  long long deadline = t_now_ms() + timeout_ms;
  for (;;) {
    char *nl = memchr(p->buf, '\n', p->len);
    if (nl || (p->eof && p->len)) {
      size_t n = nl ? (size_t)(nl - p->buf) : p->len;
      size_t c = n < cap - 1 ? n : cap - 1;
      memcpy(line, p->buf, c);
      line[c] = '\0';
      size_t used = nl ? n + 1 : n;
      memmove(p->buf, p->buf + used, p->len - used);
      p->len -= used;
      return 1;
    }
    if (p->eof)
      return 0;
    if (p->len == sizeof(p->buf)) { /* an over-long line: hand it out cut */
      p->buf[p->len - 1] = '\n';
      continue;
    }
    long long left = deadline - t_now_ms();
    if (left <= 0)
      return -1;
    struct pollfd pfd = {p->out_fd, POLLIN, 0};
    int r = poll(&pfd, 1, (int)left);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      continue;
    ssize_t n = read(p->out_fd, p->buf + p->len, sizeof(p->buf) - p->len);
    if (n <= 0)
      p->eof = 1;
    else
      p->len += (size_t)n;
  }
}

void t_signal(t_proc *p, int sig) {
  if (p->pid > 0)
    kill(p->pid, sig);
}

int t_wait(t_proc *p, int timeout_ms) {
  t_close_stdin(p);
  if (p->pid <= 0)
    return p->status;
  /* A pidfd becomes readable when the child exits: wait on it with a
   * deadline instead of polling waitpid. */
  int pfd = pidfd_open(p->pid, 0);
  int st = 0, killed = 0;
  if (pfd >= 0) {
    struct pollfd w = {pfd, POLLIN, 0};
    if (poll(&w, 1, timeout_ms) <= 0) {
      kill(p->pid, SIGKILL);
      killed = 1;
    }
    close(pfd);
  }
  while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR)
    ;
  if (p->out_fd >= 0)
    close(p->out_fd);
  p->out_fd = -1;
  p->pid = 0;
  if (killed)
    return p->status = -1;
  p->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return p->status;
}

int t_collect(t_proc *p, int timeout_ms, void (*fn)(void *ud, json_t *ev),
              void *ud) {
  long long deadline = t_now_ms() + timeout_ms;
  static char line[65536];
  for (;;) {
    long long left = deadline - t_now_ms();
    int r = t_readline(p, line, sizeof(line), left > 0 ? (int)left : 0);
    if (r <= 0)
      break;
    json_t *ev = json_loads(line, 0, NULL);
    if (ev) {
      fn(ud, ev);
      json_decref(ev);
    }
  }
  long long left = deadline - t_now_ms();
  return t_wait(p, left > 1000 ? (int)left : 1000);
}

void t_fault_row(const char *pattern, const char *fault, const char *moment,
                 const char *outcome, long long ms) {
  const char *path = getenv("EDP_FAULTS_REPORT");
  if (!path || !*path)
    return;
  FILE *f = fopen(path, "a");
  if (!f)
    return;
  fprintf(f, "%s|%s|%s|%s|%lld\n", pattern, fault, moment, outcome, ms);
  fclose(f);
}

struct fp_proxy *t_proxy(const char *query, char *url, size_t len) {
  edp_url u;
  char why[200];
  ck_assert_int_eq(edp_url_parse(t_url(), &u, why, sizeof(why)), 0);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", u.port, &p), 0);
  char base[512];
  ck_assert_int_eq(fp_url(p, t_url(), base, sizeof(base)), 0);
  t_url_query(base, query, url, len);
  return p;
}
