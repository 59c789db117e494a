/*
 * fuzz_broker.c - a hostile broker: the input is everything the server
 * side of an AMQP connection sends, from connection.start on, and libedp
 * must survive it without a crash, a leak or a hang: edp_conn_open, confirm
 * mode, a queue declare, a consumer, a publish, waiting for confirms and
 * receiving deliveries.
 *
 * In the spirit of rabbitmq-c's fuzz/fuzz_server.c: a thread accepts on a
 * loopback socket, reads the protocol header, writes the input and, a
 * moment later, shuts down its side: every call of the library ends
 * within that moment, whatever it waits for. Each input joins its thread and
 * closes its socket before returning; the listening socket lives for the whole
 * run.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "edp_conn.h"
#include "edp_util.h"

#define LINGER_MS 20

/* A broker may announce a body of any size up to 2^64 in a content header,
 * and rabbitmq-c's amqp_read_message() mallocs that size before the body
 * arrives (a bound would need libedp's own content reader: see
 * docs/fuzzing.md). Under ASan, whose shadow memory makes such a malloc
 * cost real memory, bodies over 512 MiB (RabbitMQ's ceiling for
 * max_message_size: no real broker sends more) fail as a host with less
 * memory would fail them: malloc returns NULL, rabbitmq-c reports
 * AMQP_STATUS_NO_MEMORY and libedp a lost connection. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
  return "allocator_may_return_null=1:max_allocation_size_mb=512";
}

struct server {
  int lfd;
  const uint8_t *data;
  size_t size;
};

/* Waits up to ms for fd to become readable. */
static int readable(int fd, int ms) {
  struct pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, ms) == 1;
}

static void *serve(void *arg) {
  struct server *s = arg;
  if (!readable(s->lfd, 2000))
    return NULL;
  int fd = accept(s->lfd, NULL, NULL);
  if (fd < 0)
    return NULL;
  char buf[4096];
  size_t got = 0;
  while (got < 8 && readable(fd, 2000)) { /* "AMQP\0\0\x09\x01" */
    ssize_t n = recv(fd, buf, 8 - got, 0);
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  for (size_t off = 0; got == 8 && off < s->size;) {
    ssize_t n = send(fd, s->data + off, s->size - off, MSG_NOSIGNAL);
    if (n <= 0)
      break;
    off += (size_t)n;
  }
  /* Read what the client says until it closes, so that it never meets a
   * reset while it still writes. The end of file comes LINGER_MS after
   * the input: a library that read it all and waits for more is woken at
   * once, and one that still works on it (deliveries not yet taken) is
   * not cut short, as it would be by an end of file right behind them. */
  int64_t until = edp_now_ms() + LINGER_MS;
  int eof_sent = 0;
  for (;;) {
    int64_t left = until - edp_now_ms();
    if (!eof_sent && left <= 0) {
      shutdown(fd, SHUT_WR);
      eof_sent = 1;
    }
    if (!readable(fd, eof_sent ? 2000 : (int)left))
      if (eof_sent)
        break;
    if (readable(fd, 0) && recv(fd, buf, sizeof(buf), 0) <= 0)
      break;
  }
  close(fd);
  return NULL;
}

static int listener(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  socklen_t len = sizeof(a);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 4) ||
      getsockname(fd, (struct sockaddr *)&a, &len)) {
    perror("fuzz_broker: listener");
    abort();
  }
  *port = ntohs(a.sin_port);
  return fd;
}

/* FUZZ_BROKER_DEBUG=1 prints what each step returned (for corpus work). */
static int step(const char *what, int rc) {
  static int debug = -1;
  if (debug < 0)
    debug = getenv("FUZZ_BROKER_DEBUG") != NULL;
  if (debug)
    fprintf(stderr, "  %s: %s\n", what, rc ? edp_errname(rc) : "ok");
  return rc;
}

/* Reads every field of a confirm, as a pattern's callback would. */
static void on_confirm(void *ud, const edp_confirm *cf) {
  size_t *n = ud;
  *n += cf->seq + (size_t)cf->status + (cf->message_id ? 1 : 0) +
        (cf->reply_text ? strlen(cf->reply_text) : 0) +
        (cf->msg ? cf->msg->body_len : 0);
}

/* The client side: what a pattern does with a connection. */
static void client(const char *url) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  o.connect_timeout_ms = 2000;
  o.rpc_timeout_ms = 2000;
  o.blocked_timeout_ms = 200;
  o.reconnect_max_ms = 0;
  edp_conn *c = NULL;
  char why[300];
  if (step("open", edp_conn_open(&o, &c, why, sizeof(why))))
    return;
  char name[256], tag[256];
  size_t confirmed = 0;
  edp_conn_on_confirm(c, on_confirm, &confirmed);
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  step("confirm_select", edp_conn_confirm_select(c));
  step("declare",
       edp_conn_queue_declare(c, "q", &qo, name, sizeof(name), NULL, NULL));
  step("consume", edp_conn_consume(c, "q", NULL, tag, sizeof(tag)));
  edp_msg m;
  edp_msg_init(&m);
  edp_header h[2] = {{"k", "v", 0}, {"n", NULL, -7}};
  m.routing_key = "q";
  m.body = "hello";
  m.body_len = 5;
  m.message_id = "id-1";
  m.headers = h;
  m.n_headers = 2;
  m.mandatory = 1;
  step("publish", edp_conn_publish(c, &m, NULL));
  step("wait_confirms", edp_conn_wait_confirms(c, 0, 200));
  /* Deliveries read before the end of file are still handed out. */
  for (int i = 0; i < 16; i++) {
    edp_delivery d = {0};
    int rc = step("receive", edp_conn_receive(c, &d, 50));
    if (rc == 0) {
      edp_delivery_header_str(&d, "k");
      edp_conn_ack(c, d.epoch, d.tag, 0);
      edp_delivery_clear(&d);
    } else if (rc == EDP_ETIMEOUT || rc == EDP_ECLOSED) {
      break;
    }
  }
  edp_conn_destroy(&c);
}

/* Open sockets and eventfds of this process, to prove none leaks across
 * inputs. Pipes are not counted: libFuzzer starts llvm-symbolizer behind
 * two pipes the first time it prints a newly covered function. */
static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  while (d && (e = readdir(d))) {
    char path[300], target[64] = "";
    snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
    ssize_t len = readlink(path, target, sizeof(target) - 1);
    if (len > 0 &&
        (!strncmp(target, "socket:", 7) || !strncmp(target, "anon_inode:", 11)))
      n++;
  }
  if (d)
    closedir(d);
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int lfd = -1, port;
  if (size > 65536)
    return 0;
  if (lfd < 0)
    lfd = listener(&port);
  struct server s = {lfd, data, size};
  pthread_t t;
  if (pthread_create(&t, NULL, serve, &s))
    return 0;
  char url[128];
  snprintf(url, sizeof(url),
           "amqp://guest:guest@127.0.0.1:%d?heartbeat=0&connection_timeout="
           "2000",
           port);
  client(url);
  pthread_join(t, NULL);
  static int fds = -1;
  int now = count_fds();
  if (fds < 0)
    fds = now;
  if (now != fds) {
    fprintf(stderr, "fuzz_broker: %d sockets and eventfds open, %d before\n",
            now, fds);
    abort();
  }
  return 0;
}
