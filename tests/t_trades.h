/*
 * t_trades.h - the thread delegate's programs driven and checked by the
 * suites: trades sent with edp-trade-sender, dispatchers' --json events
 * collected, and the per-account order guarantees asserted.
 */
#ifndef EDP_T_TRADES_H
#define EDP_T_TRADES_H

#include <jansson.h>

#include "testlib.h"

#define MAXA 1000
#define MAXE 60000

enum { E_PROCESSED, E_DEAD, E_REQUEUED, E_MAP };

typedef struct ev {
  int acct, seq, worker, attempts, redelivered, type, in_flight;
  long long start, end, settled;
} ev;

typedef struct col {
  ev *e;
  int n;
  int standby, active, takeover; /* role events (single active consumer) */
  long long active_us;
  int summary, contexts, in_flight;
  long long s_processed, s_dead, s_redelivered, s_reconnects;
} col;

/* Accounts are generated as "<letter>-<100 + index>". */
/* The broker the programs are pointed at (--url; NULL: $EDP_URL) and
 * the --queue-type they give (NULL: none). */
extern const char *t_trades_url;
extern const char *t_trades_queue_type;

void col_init(col *c);

/* A dispatcher's or sender's --json event into c (a Check assertion fails
 * on an event that can't be read). */
void collect_ev(void *ud, json_t *j);

/* Sends count trades over accounts (sharded over shards queues unless
 * NULL) and waits for their confirms; each account's count goes to
 * per_acct[MAXA]. */
void send_trades(const char *ex, const char *q, int accounts, int count,
                 const char *shards, int *per_acct);

/* Starts edp-trade-dispatcher --json on ex/q with extra arguments. */
void spawn_dispatcher(t_proc *p, const char *ex, const char *q,
                      const char *extra[]);

/* Per account: settled seqs form exactly 1..per_acct[a] in order. */
void assert_in_order_once(const col *c, const int *per_acct);

/* After c1's dispatcher was SIGKILLed, c2's (a restart or a standby)
 * settled the rest: see t_trades.c. Returns the repeats. */
int assert_taken_over(const col *c1, const col *c2, const int *per_acct,
                      int accounts, int count, int max_repeats);

/* Reads p's lines into c until it holds n events and, if role, a role
 * event (standby or active) came; up to 60 s. */
void read_until(t_proc *p, col *c, int n, int role);

#endif
