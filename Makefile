# The signing appliance. `make run` and `make test` are the two commands; see README.md.
#
# Every C file under hsm/, jose/, appliance/ (but main.c), api/, provisioning/ (but
# provision.c) and verifier/ (but the CLI's signd-verify.c) goes into one static
# library; each program and each unit test links it. A new module needs no Makefile edit.
# cli/ (signdctl, the operator CLI) is a program of its own, outside the library.

CC      ?= cc
BUILD   := build
CIVET   := build/civetweb
# Empty: provisioning/run.sh picks ./data, or /var/lib/signd when run as root from a clone
# in a directory the appliance's accounts cannot enter (README.md).
DATA_DIR ?=
PORT    ?= 8443

HARDEN  := -O2 -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
# SANITIZE=1 builds into build/asan with AddressSanitizer and UBSan (make test-asan).
ifeq ($(SANITIZE),1)
BUILD   := build/asan
HARDEN  := -O1 -g -fPIE -fsanitize=address,undefined -fno-omit-frame-pointer \
           -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
CFLAGS  ?=
CFLAGS  += -std=c11 -Wall -Wextra -Werror $(HARDEN) -g -D_GNU_SOURCE \
           -I. -I$(CIVET) -I/usr/include/p11-kit-1
LDFLAGS += -pie -Wl,-z,relro,-z,now
LDLIBS  := -ljansson -lsqlite3 -lcurl -lssl -lcrypto -lz -lpthread -ldl -lp11-kit

LIB_SRC := $(wildcard base/*.c hsm/*.c jose/*.c api/*.c) \
           $(filter-out appliance/supervisor/main.c,$(wildcard appliance/*/*.c)) \
           $(filter-out provisioning/provision.c,$(wildcard provisioning/*.c)) \
           $(filter-out verifier/signd-verify.c,$(wildcard verifier/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LIB     := $(BUILD)/libsignd.a
CIVETLIB := $(CIVET)/libcivetweb.a

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
UNIT_HELP := $(filter-out $(UNIT_SRC),$(wildcard tests/unit/*.c))

# Fuzzing: every tests/fuzz/fuzz_<name>.c is a libFuzzer target. `make test` links each
# with tests/fuzz/replay.c into $(BUILD)/tests/test_fuzz_<name> (a unit test that replays
# its seed corpus and regression inputs); `make fuzz` builds them with clang and libFuzzer
# into build/fuzz/ and runs each for FUZZ_SECONDS (tests/fuzz/run.sh).
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_REPLAY  := $(FUZZ_NAMES:%=$(BUILD)/tests/test_fuzz_%)
FUZZ_BUILD   := build/fuzz
FUZZ_CC      := clang
FUZZ_SECONDS ?= 60
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -std=c11 -Wall -Wextra -Werror -g -O1 -fno-omit-frame-pointer $(FUZZ_SAN) \
                -fsanitize=fuzzer-no-link -D_GNU_SOURCE -I. -I$(CIVET) -I/usr/include/p11-kit-1

PROGS := $(BUILD)/bin/signd-provision $(BUILD)/bin/hello-https $(BUILD)/bin/bench-hsm \
         $(BUILD)/bin/signd-verify $(BUILD)/bin/bench-propagation $(BUILD)/bin/signdctl
ifneq ($(wildcard appliance/supervisor/main.c),)
PROGS += $(BUILD)/bin/signd
endif

.PHONY: all deps run test test-unit test-blackbox test-asan bench bench-hsm clean format docs fuzz hostile valgrind soak
.DEFAULT_GOAL := all
# Keep every object file: tests and programs share them.
.SECONDARY:

all: $(CIVETLIB) $(PROGS) $(UNIT_BIN) $(FUZZ_REPLAY)

deps:
	@mk/deps.sh

# CivetWeb is built by mk/civetweb.sh (called by deps); building without it fails with a hint.
# Its patches are prerequisites, so that changing one rebuilds it (the script checks its stamp);
# the header hangs off the library so that make -j runs the script once.
$(CIVETLIB): $(wildcard mk/civetweb/*.patch)
	@mk/civetweb.sh
$(CIVET)/civetweb.h: $(CIVETLIB)
	@mk/civetweb.sh

$(BUILD)/obj/%.o: %.c $(CIVET)/civetweb.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/bin/signd: $(BUILD)/obj/appliance/supervisor/main.o $(LIB) $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/signd-provision: $(BUILD)/obj/provisioning/provision.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/hello-https: $(BUILD)/obj/tests/hello/hello_https.o $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/bench-hsm: $(BUILD)/obj/tests/bench/bench_hsm.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/signd-verify: $(BUILD)/obj/verifier/signd-verify.o $(LIB) $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# signdctl, the operator CLI: cli/ is its own (not in the library; it links it for audit
# verification).
$(BUILD)/bin/signdctl: $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard cli/*.c)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/bench-propagation: $(BUILD)/obj/tests/bench/bench_propagation.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(UNIT_HELP:%.c=$(BUILD)/obj/%.o) $(LIB) $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lcmocka $(LDLIBS) -o $@

run: deps
	@$(MAKE) --no-print-directory all
	@DATA_DIR="$(DATA_DIR)" PORT="$(PORT)" provisioning/run.sh

test: deps
	@$(MAKE) --no-print-directory all
	@tests/run.sh

# The whole suite against binaries built with AddressSanitizer and UBSan; any report fails.
test-asan: deps
	@$(MAKE) --no-print-directory SANITIZE=1 all
	@SIGND_BUILD=build/asan tests/run.sh

$(BUILD)/tests/test_fuzz_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(BUILD)/obj/tests/fuzz/replay.o \
                            $(LIB) $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# Every target for FUZZ_SECONDS in turn (make fuzz FUZZ_SECONDS=10 in CI); fails on any
# finding, whose input is kept under build/fuzz/findings/.
fuzz: deps
	@$(MAKE) --no-print-directory $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz_%)
	@tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BUILD) $(FUZZ_NAMES)

$(FUZZ_BUILD)/obj/%.o: %.c $(CIVET)/civetweb.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/libsignd.a: $(LIB_SRC:%.c=$(FUZZ_BUILD)/obj/%.o)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_BUILD)/libsignd.a $(CIVETLIB)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) $^ $(LDLIBS) -o $@

test-unit: all
	@tests/run.sh unit

test-blackbox: all
	@tests/run.sh blackbox

bench-hsm: deps
	@$(MAKE) --no-print-directory all
	@tests/bench/bench-hsm.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@SIGND_BUILD=$(BUILD) tests/bench/bench.sh

# Hostile clients at full scale (1,000 keep-alive connections, 200 slowloris, floods) while
# well-behaved clients measure their latency; the table in docs/reliability.md.
hostile: deps
	@$(MAKE) --no-print-directory all
	@SIGND_BUILD=$(BUILD) /usr/bin/python3 tests/hostile/hostile.py --scale full

# A scripted session with every process under valgrind memcheck: any invalid read or write
# or any byte definitely lost fails it.
valgrind: deps
	@$(MAKE) --no-print-directory all
	@SIGND_BUILD=$(BUILD) /usr/bin/python3 tests/valgrind/session.py

# Crash consistency: SOAK_ROUNDS rounds of concurrent clients, a SIGKILL of the front, the
# keeper, the supervisor or all three at a random moment, and the invariants checked after
# every restart (tests/soak/soak.py; docs/reliability.md). SOAK_SEED=N replays a run.
SOAK_ROUNDS ?= 200
soak: deps
	@$(MAKE) --no-print-directory all
	@SIGND_BUILD=$(BUILD) SOAK_ROUNDS=$(SOAK_ROUNDS) /usr/bin/python3 tests/soak/soak.py

# docs/configuration.md is the configuration the provisioning tool writes, verbatim.
docs: all
	@tmp=$$(mktemp -d) && $(BUILD)/bin/signd-provision config $$tmp >/dev/null && \
	  { sed -n '1,/^```$$/p' docs/configuration.md; cat $$tmp/appliance.conf; echo '```'; } \
	    >docs/configuration.md.new && mv docs/configuration.md.new docs/configuration.md && \
	  rm -rf $$tmp

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD)/obj $(BUILD)/bin $(BUILD)/tests $(LIB)

-include $(LIB_OBJ:.o=.d) $(wildcard $(BUILD)/obj/*/*.d $(BUILD)/obj/*/*/*.d $(BUILD)/obj/*/*/*/*.d)
-include $(wildcard $(FUZZ_BUILD)/obj/*/*.d $(FUZZ_BUILD)/obj/*/*/*.d $(FUZZ_BUILD)/obj/*/*/*/*.d)
