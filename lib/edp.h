/*
 * edp.h - the whole public API of libedp: the core (errors, URLs,
 * connections) and the pattern modules.
 */
#ifndef EDP_H
#define EDP_H

#define EDP_VERSION "0.1.0"

#include "edp_conn.h"
#include "edp_conn_group.h"
#include "edp_error.h"
#include "edp_file.h"
#include "edp_handoff.h"
#include "edp_idset.h"
#include "edp_metrics.h"
#include "edp_trace.h"
#include "edp_url.h"
#include "edp_util.h"
#include "edp_worker.h"

#include "edp_ambulance.h"
#include "edp_forwarding.h"
#include "edp_multi_broker.h"
#include "edp_supervisor.h"
#include "edp_thread_delegate.h"
#include "edp_watch.h"

#endif
