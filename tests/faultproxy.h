/*
 * faultproxy.h - a TCP proxy that tests run in their own process, between a
 * client and a broker (or any TCP server), to inject network faults on
 * demand: latency, a stalled (half-open) path, a connection cut mid-frame
 * after a byte budget, a reset (RST) of every connection, and refused
 * connections. Everything runs on one proxy thread; the calls below are
 * thread-safe and return once the proxy thread has applied them, so a test
 * can act on the fault right after the call.
 *
 * Unless said otherwise, functions that return int return 0 on success
 * and -1 on failure (with errno set where a system call failed).
 */
#ifndef EDP_FAULTPROXY_H
#define EDP_FAULTPROXY_H

#include <stddef.h>
#include <stdint.h>

typedef struct fp_proxy fp_proxy;

/* A direction of traffic through the proxy. FP_BOTH is the union of the
 * two; where a function takes a direction it says what FP_BOTH means. */
typedef enum fp_dir {
  FP_C2S = 1, /* client -> server (the target, e.g. the broker) */
  FP_S2C = 2, /* server -> client */
  FP_BOTH = 3
} fp_dir;

/* Starts a proxy listening on 127.0.0.1 on an ephemeral port (see
 * fp_port) that forwards every accepted connection to target_host:
 * target_port. The target name is resolved once, here; each accepted
 * connection opens its own connection to the target, and if that fails
 * the client's connection is reset, as a client of a down broker would be
 * refused. The proxy starts in pass mode. On success *out is the new
 * proxy, to be freed with fp_stop. Returns 0, or -1 (bad argument, name
 * resolution, socket or thread failure; *out is then NULL). */
int fp_start(const char *target_host, int target_port, fp_proxy **out);

/* The TCP port the proxy listens on (on 127.0.0.1), or -1 for NULL. */
int fp_port(const fp_proxy *p);

/* Rewrites broker_url (amqp[s]://user:pass@host:port/vhost?query) so that it
 * points at the proxy: host and port become 127.0.0.1 and fp_port(p); the
 * scheme, credentials, vhost and query are kept byte for byte. The host is
 * replaced too because the proxy listens on loopback only. Writes a
 * NUL-terminated string to out. Returns 0, or -1 if the URL is neither
 * amqp:// nor amqps:// or out (len bytes) is too small (out is then the
 * empty string). */
int fp_url(const fp_proxy *p, const char *broker_url, char *out, size_t len);

/*
 * Fault modes. Each of fp_pass, fp_latency, fp_stall and fp_cut_after
 * replaces the previous mode and applies to the current connections and to
 * every connection accepted later, until the next change. Each returns
 * once the proxy thread has taken the new mode, so nothing is forwarded
 * under the old mode after the call returns. Each returns 0, or -1 on a
 * bad argument or if the proxy thread did not answer within 5 s.
 */

/* Normal forwarding. Data held back by an earlier mode (stall, latency)
 * is forwarded now, in order. */
int fp_pass(fp_proxy *p);

/* Delays every chunk read from either side by ms milliseconds before it is
 * forwarded, so a request/reply round trip takes at least 2 * ms. A chunk
 * keeps the delay it was read under, and chunks keep their order: one
 * read later, under a shorter delay or none, waits behind it. */
int fp_latency(fp_proxy *p, int ms);

/* Stops forwarding in both directions without closing anything: the proxy
 * neither reads nor writes its sockets, so to the client the path looks
 * like a dead network (a half-open connection). The kernel buffers fill
 * and the client's writes eventually block; reads time out; an EOF or a
 * close by either peer is not passed on either. fp_pass resumes, and
 * nothing that was sent is lost. New connections are still
 * accepted (the kernel completes the TCP handshake anyway) but get no
 * data through. */
int fp_stall(fp_proxy *p);

/* On each connection, forwards n_bytes more bytes in direction dir
 * (counted from this call for current connections, from the accept for
 * later ones; with FP_BOTH the two directions share one budget), then
 * closes both of its sockets, so the stream ends mid-frame. The close is
 * a plain close after discarding unread input, so each peer receives
 * exactly the bytes forwarded and then EOF (a kernel may still answer
 * later data with RST), like the sockets of a crashed process. With
 * n_bytes 0 every connection is cut at once. */
int fp_cut_after(fp_proxy *p, size_t n_bytes, fp_dir dir);

/* As fp_cut_after for the current connections only; connections accepted
 * later pass untouched, so a client's reconnect gets through. */
int fp_cut_once(fp_proxy *p, size_t n_bytes, fp_dir dir);

/* Resets every current connection on both sides with a TCP RST
 * (SO_LINGER {1, 0}, then close): the client's next recv or send fails
 * with ECONNRESET (or EPIPE). "Current" means accepted by the proxy: a
 * client's connect() returns before that, so wait with
 * fp_wait_connections first. A one-shot action, not a mode: the current
 * mode stays, and later connections are forwarded. Returns 0 once the
 * connections are reset, or -1 as the modes above. */
int fp_reset(fp_proxy *p);

/* With on non-zero, every new connection is accepted and at once reset
 * (RST), so the client sees its connect succeed and then a reset, like a
 * port that nothing serves behind a load balancer; it still counts in
 * fp_connections. With on 0 new connections are forwarded again. Current
 * connections are not touched. Independent of the fault mode. Returns 0
 * or -1 as the modes above. */
int fp_refuse(fp_proxy *p, int on);

/* Counters, read under the proxy's lock; 0 for NULL. */

/* Connections accepted so far, refused ones included. */
uint64_t fp_connections(fp_proxy *p);

/* Connections the proxy holds open now, from the accept until it closes
 * both sockets (both peers closed, a cut, a reset, or the target refused
 * the connection). */
uint64_t fp_active(fp_proxy *p);

/* Bytes forwarded (written to the other side) in direction dir so far;
 * FP_BOTH gives the sum of both directions. The count is updated with
 * each write, so once a peer has received bytes they are counted. */
uint64_t fp_bytes(fp_proxy *p, fp_dir dir);

/* Waits until at least n connections were accepted in all (fp_connections
 * >= n), at most timeout_ms milliseconds. Returns 0, or -1 on timeout. */
int fp_wait_connections(fp_proxy *p, uint64_t n, int timeout_ms);

/* Waits until exactly n connections are active (fp_active == n), at most
 * timeout_ms milliseconds: e.g. n = 0 to know that the proxy saw both
 * ends of every connection close. Returns 0, or -1 on timeout. */
int fp_wait_active(fp_proxy *p, uint64_t n, int timeout_ms);

/* Stops the proxy thread, closes the listening socket and every
 * connection (a plain close after discarding unread input, so peers see
 * EOF) and frees the proxy; sets *p to NULL. Accepts NULL and a NULL *p. */
void fp_stop(fp_proxy **p);

#endif
