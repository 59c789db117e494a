/*
 * edp-trade-sender - publishes trades for the thread delegate pattern:
 * persistent messages to a topic exchange with the routing key
 * trade.eq.<account> (or, with --shards, to a consistent-hash exchange
 * that spreads accounts over shard queues), with pipelined publisher
 * confirms. Without options it sends the talk's ten trades.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"

static cli app;

static void usage(void) {
  printf(
      "usage: edp-trade-sender [options]\n"
      "Publishes trades 'ACCOUNT,SIDE,SYMBOL,N SHARES' with routing key\n"
      "trade.eq.ACCOUNT; without --count, the talk's ten trades.\n"
      "  -e, --exchange NAME    topic exchange (default edp.trades)\n"
      "  -q, --queue NAME       queue bound to it (default edp.trades)\n"
      "  -a, --accounts N       accounts to generate (default 10)\n"
      "  -n, --count M          trades in all, spread evenly over the\n"
      "                         accounts in random order\n"
      "  -r, --rate R           trades per second (default 0: no limit)\n"
      "      --shards K         publish to the consistent-hash exchange\n"
      "                         EXCHANGE.hash, sharding accounts over the\n"
      "                         queues QUEUE.1 .. QUEUE.K\n"
      "      --seed S           random seed (default: time and pid)\n"
      "      --id-prefix P      message_id is P-ACCOUNT-SEQ\n"
      "JSON events: {\"event\":\"sent\",\"account\",\"seq\",\"message_id\"}\n"
      "once the broker confirmed the trade (seq counts per account "
      "from 1).\n" CLI_QUEUE_HELP CLI_TRACE_HELP CLI_METRICS_HELP
          CLI_COMMON_HELP);
}

typedef struct trade {
  char account[32];
  const char *side, *symbol;
  long seq;
} trade;

/* The trades of the talk's sender.sh, in its order. */
static const struct {
  const char *account, *side, *symbol;
} talk[] = {{"B-123", "SELL", "AAPL"}, {"Q-665", "SELL", "ATT"},
            {"B-123", "BUY", "IBM"},   {"Q-665", "SELL", "XPH"},
            {"Q-665", "BUY", "GLD"},   {"T-329", "SELL", "GOOG"},
            {"D-945", "SELL", "FB"},   {"D-945", "SELL", "AAPL"},
            {"T-329", "BUY", "AAPL"},  {"D-945", "BUY", "AMZN"}};

static const char *symbols[] = {"AAPL", "IBM", "GOOG", "ATT",  "XPH",
                                "GLD",  "FB",  "AMZN", "MSFT", "ORCL"};

typedef struct run {
  edp_conn *conn;
  const char *exchange;
  char prefix[64];
  unsigned seed;
  long window;
  uint64_t refused;
  metrics_sent sent; /* single-writer: the main thread */
  edp_recovery rec;  /* reconnects and republished messages */
} run;

static void on_confirm(void *ud, const edp_confirm *cf) {
  run *r = ud;
  if (cf->status != EDP_CONFIRM_ACK) {
    r->refused++;
    fprintf(stderr, "edp-trade-sender: trade %s %s\n",
            cf->message_id ? cf->message_id : "?",
            cf->status == EDP_CONFIRM_NACK ? "refused by the broker"
                                           : "returned: no queue bound");
    return;
  }
  if (!app.json)
    return;
  const char *account = "";
  int64_t seq = 0;
  for (size_t i = 0; i < cf->msg->n_headers; i++) {
    const edp_header *h = &cf->msg->headers[i];
    if (!strcmp(h->key, "account") && h->str)
      account = h->str;
    else if (!strcmp(h->key, "seq") && !h->str)
      seq = h->num;
  }
  json_t *o =
      json_pack("{s:s,s:s,s:I,s:s?}", "event", "sent", "account", account,
                "seq", (json_int_t)seq, "message_id", cf->message_id);
  edp_trace t;
  if (!cli_msg_trace(&app, cf->msg, &t))
    cli_json_trace(o, &t, cf->msg->exchange);
  cli_emit(o);
}

static void die_rc(run *r, int rc, const char *what) {
  if (rc == EDP_ESTOPPED || cli_stopped())
    cli_die(&app, CLI_INTERRUPTED, "interrupted; %zu trade(s) unconfirmed",
            edp_conn_unconfirmed(r->conn));
  cli_die_err(&app, r->conn, rc, what);
}

/* Reconnects and publishes again what the lost channel left unconfirmed
 * (a trade may then arrive twice, never zero times). */
static void recover(run *r) {
  int rc = edp_conn_recover(r->conn, &r->rec);
  if (rc)
    die_rc(r, rc, "reconnect failed");
}

static void wait_confirms(run *r, size_t max) {
  int rc = edp_conn_wait_confirms_recover(r->conn, max, 30000, &r->rec);
  if (rc)
    die_rc(r, rc, "waiting for confirms failed");
}

static void send_trade(run *r, const trade *t) {
  char body[128], rk[64], id[128];
  int shares = 1 + (int)(rand_r(&r->seed) % 4000);
  int n = snprintf(body, sizeof(body), "%s,%s,%s,%d SHARES", t->account,
                   t->side, t->symbol, shares);
  snprintf(rk, sizeof(rk), "trade.eq.%s", t->account);
  snprintf(id, sizeof(id), "%s-%s-%ld", r->prefix, t->account, t->seq);
  edp_trace tr;
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_header h[3] = {{"account", t->account, 0},
                     {"seq", NULL, t->seq},
                     {EDP_TRACE_HDR_PARENT, "", 0}};
  int traced = cli_trace_next(&app, &tr);
  if (traced)
    h[2].str = edp_trace_format(&tr, tp, sizeof(tp));
  edp_msg m;
  edp_msg_init(&m);
  m.exchange = r->exchange;
  m.routing_key = rk;
  m.body = body;
  m.body_len = (size_t)n;
  m.persistent = 1;
  m.mandatory = 1; /* no queue bound: we hear about it */
  m.message_id = id;
  m.content_type = "text/plain";
  m.timestamp = (int64_t)time(NULL);
  m.headers = h;
  m.n_headers = traced ? 3 : 2;
  cli_say(&app, "sending: (%ld) %s\n", t->seq, body);
  int rc =
      edp_conn_publish_window(r->conn, &m, (size_t)r->window, 30000, &r->rec);
  if (rc)
    die_rc(r, rc, "publish failed");
  edp_count_add(&r->sent.n, 1);
  cli_progress(&app, r->sent.n, edp_conn_unconfirmed(r->conn), 0);
}

/* Paces to rate trades per second, servicing the connection meanwhile. */
static void pace(run *r, long rate, long i, int64_t start) {
  if (rate <= 0)
    return;
  int64_t due = start + (int64_t)i * 1000 / rate;
  for (;;) {
    int64_t left = due - edp_now_ms();
    if (left <= 0)
      return;
    int rc = edp_conn_wait(r->conn, -1, (int)left);
    if (rc == EDP_ECLOSED)
      recover(r);
    else if (rc < 0)
      die_rc(r, rc, "connection failed");
  }
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-trade-sender");
  static const struct option opts[] = {
      {"exchange", required_argument, NULL, 'e'},
      {"queue", required_argument, NULL, 'q'},
      {"accounts", required_argument, NULL, 'a'},
      {"count", required_argument, NULL, 'n'},
      {"rate", required_argument, NULL, 'r'},
      {"shards", required_argument, NULL, 'S'},
      {"seed", required_argument, NULL, 's'},
      {"id-prefix", required_argument, NULL, 'I'},
      CLI_QUEUE_LONGOPTS,
      CLI_TRACE_LONGOPT,
      CLI_METRICS_LONGOPT,
      CLI_COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *exchange = "edp.trades", *queue = "edp.trades";
  long accounts = 10, count = -1, rate = 0, shards = 0;
  long seed = (long)time(NULL) ^ (long)getpid();
  run r = {0};
  r.window = 1024;
  snprintf(r.prefix, sizeof(r.prefix), "t%lx%x", (long)time(NULL),
           (unsigned)getpid());
  int opt;
  edp_queue_kind kind = {0};
  while ((opt = getopt_long(argc, argv, "e:q:a:n:r:" CLI_COMMON_SHORTOPTS, opts,
                            NULL)) != -1) {
    if (cli_common_opt(&app, opt, optarg, usage))
      continue;
    if (cli_queue_opt(&app, opt, optarg, &kind))
      continue;
    switch (opt) {
    case 'e':
      exchange = optarg;
      break;
    case 'q':
      queue = optarg;
      break;
    case 'a':
      accounts = cli_int(&app, "accounts", optarg, 1, 1000000);
      break;
    case 'n':
      count = cli_int(&app, "count", optarg, 0, 100000000L);
      break;
    case 'r':
      rate = cli_int(&app, "rate", optarg, 0, 1000000);
      break;
    case 'S':
      shards = cli_int(&app, "shards", optarg, 1, 1000);
      break;
    case 's':
      seed = cli_int(&app, "seed", optarg, 0, 2147483647L);
      break;
    case 'I':
      if (!optarg[0] || strlen(optarg) >= sizeof(r.prefix))
        cli_die(&app, CLI_USAGE, "--id-prefix: 1 to %zu characters",
                sizeof(r.prefix) - 1);
      snprintf(r.prefix, sizeof(r.prefix), "%s", optarg);
      break;
    default:
      fprintf(stderr, "Try 'edp-trade-sender --help'.\n");
      return CLI_USAGE;
    }
  }
  cli_queue_done(&app, &kind);
  if (optind < argc)
    cli_die(&app, CLI_USAGE, "unexpected argument '%s'", argv[optind]);
  if (!exchange[0] || strlen(exchange) > 180 || !queue[0] ||
      strlen(queue) > 180)
    cli_die(&app, CLI_USAGE, "--exchange and --queue: 1 to 180 characters");
  r.seed = (unsigned)seed;

  r.conn = cli_connect(&app, "edp-trade-sender");
  char hash_exchange[200];
  snprintf(hash_exchange, sizeof(hash_exchange), "%s.hash", exchange);
  /* Declaring the queues here too means no trade is unroutable when the
   * sender starts before the dispatchers. */
  int rc = shards
               ? edp_td_declare_shards(r.conn, hash_exchange, queue,
                                       (int)shards, 0, &kind)
               : edp_td_declare(r.conn, exchange, queue, "trade.eq.*", &kind);
  if (rc)
    cli_die_err(&app, r.conn, rc, "cannot set up the exchange and queues");
  r.exchange = shards ? hash_exchange : exchange;
  if ((rc = edp_conn_confirm_select(r.conn)))
    cli_die_err(&app, r.conn, rc, "cannot enable confirms");
  edp_conn_on_confirm(r.conn, on_confirm, &r);
  edp_metrics_label(r.sent.labels, sizeof(r.sent.labels), "queue", queue);
  metrics_serve ms = {0};
  metrics_serve_start(&ms, &app, r.conn, 0, &r.sent, metrics_sent_collect);

  int64_t start = edp_now_ms();
  if (count < 0) {
    long seqs[4] = {0};
    const char *names[4] = {"B-123", "Q-665", "T-329", "D-945"};
    for (long i = 0; i < 10; i++) {
      trade t = {{0}, talk[i].side, talk[i].symbol, 0};
      snprintf(t.account, sizeof(t.account), "%s", talk[i].account);
      for (int k = 0; k < 4; k++)
        if (!strcmp(names[k], t.account))
          t.seq = ++seqs[k];
      pace(&r, rate, i, start);
      send_trade(&r, &t);
    }
  } else {
    /* A deck with each account count/accounts times, shuffled: every
     * account gets its share, in an unpredictable interleaving. */
    long *deck = malloc((size_t)(count ? count : 1) * sizeof(*deck));
    long *seqs = calloc((size_t)accounts, sizeof(*seqs));
    if (!deck || !seqs)
      cli_die(&app, CLI_SOFTWARE, "out of memory");
    for (long i = 0; i < count; i++)
      deck[i] = i % accounts;
    for (long i = count - 1; i > 0; i--) {
      long j = (long)(rand_r(&r.seed) % (unsigned)(i + 1));
      long tmp = deck[i];
      deck[i] = deck[j];
      deck[j] = tmp;
    }
    for (long i = 0; i < count; i++) {
      long a = deck[i];
      trade t = {{0},
                 rand_r(&r.seed) % 2 ? "BUY" : "SELL",
                 symbols[rand_r(&r.seed) % 10],
                 ++seqs[a]};
      snprintf(t.account, sizeof(t.account), "%c-%ld", 'A' + (int)(a % 26),
               100 + a);
      pace(&r, rate, i, start);
      if (cli_stopped())
        die_rc(&r, EDP_ESTOPPED, "");
      send_trade(&r, &t);
    }
    free(deck);
    free(seqs);
  }
  wait_confirms(&r, 0);
  cli_progress(&app, r.sent.n, edp_conn_unconfirmed(r.conn), 1);
  fprintf(stderr,
          "edp-trade-sender: %ld trade(s) confirmed, %llu refused, %llu "
          "republished after %llu reconnect(s)\n",
          count < 0 ? 10 : count, (unsigned long long)r.refused,
          (unsigned long long)r.rec.republished,
          (unsigned long long)r.rec.reconnects);
  metrics_serve_stop(&ms, &app);
  edp_conn_destroy(&r.conn);
  return r.refused ? CLI_DATAERR : CLI_OK;
}
