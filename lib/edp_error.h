/*
 * edp_error.h - error codes of libedp.
 *
 * Every libedp function that can fail returns an int: 0 on success or one
 * of the negative EDP_E* codes below. The codes come from one X-macro
 * table, which also generates edp_strerror(), so a new code cannot be
 * added without its message.
 */
#ifndef EDP_ERROR_H
#define EDP_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, value, message) */
#define EDP_ERRNO_MAP(X)                                                       \
  X(INVAL, -1, "invalid argument")                                             \
  X(URL, -2, "malformed broker URL")                                           \
  X(NOMEM, -3, "out of memory")                                                \
  X(CONNECT, -4, "broker unreachable")                                         \
  X(AUTH, -5, "access refused: bad user name or password")                     \
  X(ACCESS, -6, "access refused")                                              \
  X(NOTFOUND, -7, "not found")                                                 \
  X(CLOSED, -8, "connection lost")                                             \
  X(TIMEOUT, -9, "timed out")                                                  \
  X(PRECONDITION, -10, "precondition failed")                                  \
  X(TOOBIG, -11, "message too large")                                          \
  X(PROTOCOL, -12, "AMQP protocol error")                                      \
  X(NACKED, -13, "message nacked by the broker")                               \
  X(RETURNED, -14, "message returned unroutable")                              \
  X(STALE, -15, "delivery belongs to a previous channel")                      \
  X(STOPPED, -16, "stopped")                                                   \
  X(IO, -17, "I/O error")                                                      \
  X(BADDATA, -18, "malformed data")                                            \
  X(CHANNEL, -19, "channel closed by the broker")                              \
  X(INTERNAL, -20, "internal error")                                           \
  X(TLS, -21, "TLS handshake or certificate verification failed")

enum edp_error {
#define EDP__ERR_ENUM(name, value, msg) EDP_E##name = value,
  EDP_ERRNO_MAP(EDP__ERR_ENUM)
#undef EDP__ERR_ENUM
};

/* Returns a static, human-readable message for an EDP_E* code (or
 * "success" for 0, "unknown error" for anything else). Never NULL. */
const char *edp_strerror(int err);

/* Returns the code's name without prefix, e.g. "TIMEOUT" for
 * EDP_ETIMEOUT, for logs and JSON. Never NULL. */
const char *edp_errname(int err);

#ifdef __cplusplus
}
#endif
#endif
