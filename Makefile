# edp - event-driven patterns on RabbitMQ.
#
#   make              libedp.a, libedp.so and the programs in bin/
#   make check        unit tests, then integration tests on a private broker
#   make check SAN=1  the same, built with ASan and UBSan (objects in build/san)
#   make demo         the event forwarding demo on a private broker
#   make bench        benchmarks, written to docs/BENCHMARKS.md, with
#                     their plots (CSV, and SVG when gnuplot is installed)
#                     in docs/img
#   make bench BENCH=cost  one benchmark alone (bench/edp-bench-cost.c): it
#                     rewrites only its own section of docs/BENCHMARKS.md
#   make bench-soak   the client cost benchmark's memory run, 10 minutes
#   make plots        redraws the plots from the CSV files in docs/img
#                     (needs gnuplot: apt-get install gnuplot-nox)
#   make faults       the whole fault matrix, written to docs/faults.md
#   make check TLS=1, make faults TLS=1
#                     the same on TLS nodes (client certificates required):
#                     every node the suites start is a TLS node
#   make fuzz         every libFuzzer target in tests/fuzz/ for FUZZ_SECONDS
#                     each (clang, ASan+UBSan); make check replays their
#                     corpora without clang
#   make compose-check  the compose stack for real: every profile of
#                     docker-compose.yml on Docker, else podman (as root)
#   make fresh-check  the README's quick start in a bare Debian 12
#                     container (same engine)
#   make deps         installs missing Debian packages (as root)
#   make install      PREFIX=/usr/local DESTDIR=

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCDIR ?= $(PREFIX)/include/edp
BINDIR ?= $(PREFIX)/bin
CC ?= cc
CFLAGS ?= -O2 -g
VERSION := 0.1.0
SOMAJOR := 0

PKGS := librabbitmq jansson openssl
# The programs alone serve HTTP (--metrics); the library does not link it.
CMD_PKGS := libmicrohttpd
DEB_PKGS := gcc g++ make pkg-config rabbitmq-server librabbitmq-dev libssl-dev \
            libjansson-dev libmicrohttpd-dev prometheus check valgrind procps binutils \
            docker-compose python3-yaml python3-pika amqp-tools \
            librabbitmq-client-java openjdk-17-jdk-headless

ifeq ($(SAN),1)
OUT := build/san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined
else
OUT := build
SANFLAGS :=
endif
BIN := $(if $(filter 1,$(SAN)),$(OUT)/bin,bin)
# TLS=1: tests/broker.sh makes every node it starts a TLS node.
export EDP_TLS := $(if $(filter 1,$(TLS)),1,0)

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) $(CMD_PKGS) 2>/dev/null)
# Only its header: cmd/metrics_http.c loads libmicrohttpd (and GnuTLS with
# it) with dlopen when --metrics asks for it, so that a program without
# --metrics does not carry them (2.5 MiB of RSS).
CMD_LIBS = -ldl
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS = $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

ALL_CFLAGS = -std=c11 -Wall -Wextra -Werror -D_POSIX_C_SOURCE=200809L \
             -Ilib -Ipatterns -Icmd $(PKG_CFLAGS) $(SANFLAGS) $(CFLAGS) -MMD -MP
LDLIBS_ALL = $(PKG_LIBS) -lpthread -lm

LIB_SRC := $(wildcard lib/*.c) $(wildcard patterns/*.c)
LIB_HDR := $(wildcard lib/*.h) $(wildcard patterns/*.h)
CMD_COMMON := cmd/cli.c
CMD_OBJ := $(OUT)/obj/cmd/cli.o $(OUT)/obj/cmd/metrics_http.o
PROGS := $(patsubst cmd/edp-%.c,$(BIN)/edp-%,$(wildcard cmd/edp-*.c))
UNIT_SRC := $(wildcard tests/unit_*.c)
INTEG_SRC := $(wildcard tests/integ_*.c)
TEST_COMMON := tests/testlib.c tests/faultproxy.c tests/t_nodes.c tests/t_trades.c
TEST_OBJ := $(patsubst %.c,$(OUT)/obj/%.o,$(TEST_COMMON))
UNIT_BINS := $(patsubst tests/%.c,$(OUT)/tests/%,$(UNIT_SRC))
INTEG_BINS := $(patsubst tests/%.c,$(OUT)/tests/%,$(INTEG_SRC))

# Fuzz targets: tests/fuzz/fuzz_<name>.c defines LLVMFuzzerTestOneInput
# only; its corpus is tests/fuzz/<name>/, its dictionary tests/fuzz/<name>.dict.
# make check links each with tests/fuzz/replay.c (normal CC) and replays
# the corpus; make fuzz builds them with clang's libFuzzer in build/fuzz.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
REPLAY_BINS := $(patsubst tests/fuzz/%.c,$(OUT)/tests/%,$(FUZZ_SRC))
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SEED ?=
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
            -fno-omit-frame-pointer
FUZZ_CFLAGS = -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -Ilib \
              -Ipatterns -Icmd $(PKG_CFLAGS) -g -O1 $(FUZZ_SAN) -MMD -MP
FUZZ_DEB_PKGS := clang libclang-rt-14-dev
FUZZ_OBJ := $(patsubst %.c,build/fuzz/obj/%.o,$(LIB_SRC) $(CMD_COMMON))

BENCH_BINS := $(patsubst bench/%.c,$(OUT)/bench/%,$(wildcard bench/edp-bench-*.c))
BENCH_RAW := $(OUT)/bench/rawc-baseline

LIB_OBJ := $(patsubst %.c,$(OUT)/obj/%.o,$(LIB_SRC))
STATIC := $(OUT)/libedp.a
SHARED := $(OUT)/libedp.so.$(VERSION)

all: $(STATIC) $(SHARED) $(PROGS) $(OUT)/edp.pc

$(OUT)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -c $< -o $@

$(STATIC): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

# The shared library exports only the public edp_ names.
$(SHARED): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libedp.so.$(SOMAJOR) $(SANFLAGS) -o $@ $^ $(LDLIBS_ALL)
	ln -sf libedp.so.$(VERSION) $(OUT)/libedp.so.$(SOMAJOR)
	ln -sf libedp.so.$(VERSION) $(OUT)/libedp.so

$(BIN)/edp-%: $(OUT)/obj/cmd/edp-%.o $(CMD_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $^ $(CMD_LIBS) $(LDLIBS_ALL)

$(OUT)/bench/edp-bench-%: $(OUT)/obj/bench/edp-bench-%.o $(CMD_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $^ $(CMD_LIBS) $(LDLIBS_ALL)

# The HA bench drives the programs as the tests do (tests/testlib.c) and
# builds its cluster with tests/t_nodes.c.
$(OUT)/bench/edp-bench-ha: $(OUT)/obj/bench/edp-bench-ha.o $(OUT)/obj/cmd/cli.o \
                           $(TEST_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS_ALL)

# The raw rabbitmq-c baseline of the client cost benchmark: librabbitmq
# only, no libedp.
$(OUT)/bench/rawc-baseline: bench/rawc-baseline.c
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Ilib -Ipatterns -Icmd,$(ALL_CFLAGS)) -o $@ $< $(PKG_LIBS)

$(OUT)/tests/unit_%: $(OUT)/obj/tests/unit_%.o $(TEST_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS_ALL)

$(OUT)/tests/integ_%: $(OUT)/obj/tests/integ_%.o $(TEST_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS_ALL)

$(OUT)/tests/fuzz_%: $(OUT)/obj/tests/fuzz/fuzz_%.o $(OUT)/obj/tests/fuzz/replay.o \
                     $(OUT)/obj/cmd/cli.o $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -o $@ $^ $(LDLIBS_ALL)

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

build/fuzz/fuzz_%: build/fuzz/obj/tests/fuzz/fuzz_%.o $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(LDLIBS_ALL)

$(OUT)/obj/tests/%.o: tests/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -Itests -c $< -o $@

# Regenerated on every run: PREFIX may differ from the last build's.
$(OUT)/edp.pc: FORCE
	@mkdir -p $(dir $@)
	@printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(INCDIR)' '' \
	  'Name: edp' 'Description: event-driven messaging patterns on RabbitMQ' \
	  'Version: $(VERSION)' 'Requires.private: $(PKGS)' \
	  'Libs: -L$${libdir} -ledp' 'Libs.private: -lpthread -lm' \
	  'Cflags: -I$${includedir}' > $@

tests: $(UNIT_BINS) $(INTEG_BINS) $(PROGS) $(BENCH_BINS) $(BENCH_RAW) $(REPLAY_BINS)

# Unit tests need no broker; integration suites run against a private node
# that tests/run-integration.sh starts and always stops.
check: deps all tests
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done
	@set -e; for t in $(REPLAY_BINS); do n=$${t##*/fuzz_}; \
	  echo "== $$t tests/fuzz/$$n"; $$t tests/fuzz/$$n; done
	@if command -v valgrind >/dev/null && [ "$(SAN)" != 1 ]; then \
	  for t in $(UNIT_BINS); do echo "== valgrind $$t"; \
	    CK_FORK=no valgrind -q --error-exitcode=1 --leak-check=full \
	      --errors-for-leak-kinds=definite,indirect $$t >/dev/null || exit 1; \
	  done; \
	  for t in $(REPLAY_BINS); do n=$${t##*/fuzz_}; echo "== valgrind $$t"; \
	    valgrind -q --error-exitcode=1 --leak-check=full \
	      --errors-for-leak-kinds=definite,indirect $$t tests/fuzz/$$n >/dev/null || exit 1; \
	  done; fi
	EDP_BIN=$(BIN) EDP_SANFLAGS='$(SANFLAGS)' tests/run-integration.sh $(INTEG_BINS) $(wildcard tests/integ_*.sh)

# Each bench program prints one markdown section; bench.sh runs them all
# against one private node (multi-broker and the HA bench start their own)
# and writes
# docs/BENCHMARKS.md.
# The whole fault matrix, slow faults included (consumer_timeout alone
# takes a minute: the broker checks it once a minute), written to
# docs/faults.md. make check runs the representative tier of the same
# suite.
FAULT_SUITES := $(OUT)/tests/integ_faults $(OUT)/tests/integ_watch \
                $(OUT)/tests/integ_multi_broker $(OUT)/tests/integ_forwarding \
                $(OUT)/tests/integ_supervisor $(OUT)/tests/integ_ambulance \
                $(OUT)/tests/integ_faults_patterns $(OUT)/tests/integ_thread_delegate
faults: deps all tests
	rm -f $(OUT)/faults.rows
	EDP_BIN=$(BIN) EDP_FAULTS_FULL=1 EDP_FAULTS_REPORT=$(CURDIR)/$(OUT)/faults.rows \
	  tests/run-integration.sh $(FAULT_SUITES)
	tests/faults-report.sh $(OUT)/faults.rows > docs/faults$(if $(filter 1,$(TLS)),-tls).md

# Every target for FUZZ_SECONDS on a copy of its corpus; fails on a crash.
# FUZZ_SEED=N makes the run repeatable (CI's); unset, each run explores anew.
fuzz: deps fuzz-deps $(FUZZ_BINS)
	FUZZ_SEED=$(FUZZ_SEED) tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BINS)

fuzz-deps:
	@$(MAKE) -s deps DEB_PKGS="$(FUZZ_DEB_PKGS)"

bench: deps all $(BENCH_BINS) $(BENCH_RAW)
	EDP_BIN=$(BIN) EDP_TLS=both EDP_BROKER_MAX_MESSAGE=16777216 \
	  EDP_BENCH_ONLY=$(if $(BENCH),1) tests/with-broker.sh tests/bench.sh \
	  $(if $(BENCH),$(filter %-$(BENCH),$(BENCH_BINS)),$(BENCH_BINS))

# The memory run of the client cost benchmark alone, for 10 minutes (make
# bench runs a 60 s one); prints its table on stdout.
bench-soak: deps all $(BENCH_BINS) $(BENCH_RAW)
	EDP_BIN=$(BIN) EDP_BENCH_SOAK_ONLY=1 EDP_BENCH_SOAK_S=600 \
	  tests/with-broker.sh $(OUT)/bench/edp-bench-cost

# gnuplot is not in DEB_PKGS: a missing gnuplot only skips the pictures.
plots:
	tests/plots.sh docs/img

demo: deps all
	EDP_BIN=$(BIN) tests/with-broker.sh cmd/demo.sh $(PATTERN)

# Container state (podman's store, the images) lives in EDP_CONTAINER_DIR
# (/var/tmp/edp-containers); `tests/container-engine.sh clean` deletes it.
compose-check:
	tests/compose-check.sh

fresh-check:
	tests/fresh-check.sh

# Not root: name what is missing and the command that installs it, and
# stop before anything runs (apt-get would fail halfway).
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" != 0 ]; then \
	  echo "make deps: missing Debian packages:$$missing" >&2; \
	  echo "  installing them needs root: run make as root, or first:" >&2; \
	  echo "  sudo apt-get install --no-install-recommends$$missing" >&2; exit 77; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends $$missing; fi

install: all
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR) $(DESTDIR)$(BINDIR)
	install -m 644 $(LIB_HDR) $(DESTDIR)$(INCDIR)
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)
	ln -sf libedp.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libedp.so.$(SOMAJOR)
	ln -sf libedp.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libedp.so
	install -m 644 $(OUT)/edp.pc $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 755 $(PROGS) $(DESTDIR)$(BINDIR)

# The program reference is generated from --help (and checked by a test).
docs: all
	tests/gen-program-docs.sh $(BIN) > docs/programs.md

format:
	clang-format -i lib/*.[ch] patterns/*.[ch] cmd/*.[ch] tests/*.[ch] tests/fuzz/*.c bench/*.c

clean:
	rm -rf build bin

.PHONY: all check tests bench bench-soak plots faults fuzz fuzz-deps demo compose-check \
        fresh-check deps install docs format clean FORCE
FORCE:
.SECONDARY:

-include $(shell find build -name '*.d' 2>/dev/null)
