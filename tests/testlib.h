/*
 * testlib.h - helpers for the Check suites: the private broker the harness
 * started (tests/run-integration.sh exports EDP_URL and EDP_BROKER_DIR),
 * unique names, and child processes (our programs) whose stdout lines are
 * read with a timeout, so a test waits for events instead of sleeping.
 */
#ifndef EDP_TESTLIB_H
#define EDP_TESTLIB_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

/* URL of the harness's broker; aborts the test if unset. */
const char *t_url(void);

/* Writes base with query ("?name=value...") appended to out: as '&...'
 * when base has a query already (a TLS node's URL names its CA file).
 * Returns out. */
char *t_url_query(const char *base, const char *query, char *out, size_t len);

/* Writes t_url() logged in as user:pass to out, with its scheme, host and
 * query kept (a TLS node's URL names its files). Returns out. */
char *t_url_as(const char *user, const char *pass, char *out, size_t len);

/* The broker's dir for tests/broker.sh (restart, kill, close-conns). */
const char *t_broker_dir(void);

/* Runs tests/broker.sh CMD $EDP_BROKER_DIR [ARG]; returns its exit code.
 * If out is not NULL, its first output line is copied there. */
int t_broker(const char *cmd, const char *arg, char *out, size_t out_len);

/* Runs rabbitmqctl ARGS (a shell word list, quoted as needed) on the
 * harness's node, output discarded; returns its exit code. */
int t_ctl(const char *args);

/* Path of a program in $EDP_BIN (default "bin"): static buffer per call
 * slot, valid until 16 more calls. */
const char *t_bin(const char *prog);

/* A name unique to this run: base.PID.N; static storage per call slot as
 * t_bin. */
const char *t_unique(const char *base);

typedef struct t_proc {
  pid_t pid;
  int out_fd;      /* child's stdout */
  int in_fd;       /* child's stdin, with t_spawn_stdin; else -1 */
  char buf[65536]; /* unread bytes */
  size_t len;
  int eof;
  int status; /* exit code after t_wait, 128+signal if killed */
} t_proc;

/* Starts argv[0] with argv (NULL-terminated), stdout piped to p, stderr to
 * the test's stderr, stdin from /dev/null unless stdin_data is given (then
 * written to a pipe and closed). Returns 0 or -1. */
int t_spawn(t_proc *p, char *const argv[], const char *stdin_data);

/* As t_spawn, but the child's stdin stays open for t_write until
 * t_close_stdin or t_wait. */
int t_spawn_stdin(t_proc *p, char *const argv[]);

/* Writes text to the child's stdin; returns 0 or -1. */
int t_write(t_proc *p, const char *text);
void t_close_stdin(t_proc *p);

/* Next stdout line (without newline) into line, waiting up to timeout_ms.
 * Returns 1 for a line, 0 on EOF, -1 on timeout. */
int t_readline(t_proc *p, char *line, size_t cap, int timeout_ms);

/* Waits up to timeout_ms for the child to exit; SIGKILLs it if it does
 * not. Returns its exit code (128+signal if killed by one), or -1 if we
 * had to kill it. Closes its stdout. */
int t_wait(t_proc *p, int timeout_ms);

/* Sends sig to the child. */
void t_signal(t_proc *p, int sig);

/* Reads every stdout line until EOF (timeout_ms in all), calling fn on
 * each line parsed as JSON (non-JSON lines are skipped); then t_wait. */
int t_collect(t_proc *p, int timeout_ms, void (*fn)(void *ud, json_t *ev),
              void *ud);

/* A TCP fault proxy (tests/faultproxy.h) started in front of the
 * harness's broker; url (len bytes) receives the broker URL through it,
 * with query (e.g. "?heartbeat=2", may be NULL) appended. Stop it with
 * fp_stop(). Aborts the test on failure. */
struct fp_proxy;
struct fp_proxy *t_proxy(const char *query, char *url, size_t len);

/* Appends one row of the fault matrix (docs/faults.md, written by
 * `make faults`) to the file named by EDP_FAULTS_REPORT, if set: which
 * pattern met which fault at which moment, the accounted outcome, and the
 * time the recovery (or detection) took. */
void t_fault_row(const char *pattern, const char *fault, const char *moment,
                 const char *outcome, long long ms);

/* Milliseconds on the monotonic clock. */
long long t_now_ms(void);

#endif
