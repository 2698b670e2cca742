# The signing appliance. `make run` and `make test` are the two commands; see README.md.
#
# One static archive per folder (layer): base, jose, hsm, verifier, provisioning, api and
# appliance/{common,kproto,keeper,store,core,front}; every C file of the folder but a
# program's main goes into it, so a new module needs no Makefile edit. Each program lists
# the archives it may use, and nothing else is linked into it:
#   signd         the supervisor: no hsm/, no CivetWeb (appliance/supervisor/main.c)
#   signd-keeper  the only appliance program linked with hsm/ (appliance/keeper/main.c;
#                 signd-provision, the offline tool, links it too)
#   signd-front   HTTPS: no hsm/, no keeper/, no -ldl (appliance/front/main.c)
#   signdctl, signd-verify   no keeper/, kproto/ or store/ code
# Sections are collected (--gc-sections), so an archive member brings only the functions
# a program reaches. `make layers` (mk/layers.sh, in CI) checks all of it on the binaries
# and on the include graph. $(BUILD)/testbin holds the three appliance programs again with
# -DSIGND_TEST_HOOKS (the SIGND_FAULT crash points), for the black-box tests only.

CC      ?= cc
BUILD   := build
CIVET   := build/civetweb
# Empty: provisioning/run.sh picks ./data, or /var/lib/signd when run as root from a clone
# in a directory the appliance's accounts cannot enter (README.md).
DATA_DIR ?=
PORT    ?= 8443
# The PKCS#11 module of make run, make deps (its extra packages: mk/packages-HSM.txt) and the
# benches: softhsm2 (embedded, the default), opencryptoki or tpm2 (provisioning/hsm/HSM.sh).
HSM     ?= softhsm2
# make test-modules: the modules the core black-box set runs on, one after another.
TEST_MODULES ?= softhsm2 opencryptoki tpm2

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
           -ffunction-sections -fdata-sections -I. -I$(CIVET) -I/usr/include/p11-kit-1 -I/usr/include/postgresql
LDFLAGS += -pie -Wl,-z,relro,-z,now -Wl,--gc-sections
LDLIBS_BASE := -ljansson -lsqlite3 -lpq -lcurl -lssl -lcrypto -lz -lpthread
# hsm/ (the keeper, the provisioning tool, the tests) loads modules and parses RFC 7512 URIs.
LDLIBS  := $(LDLIBS_BASE) -ldl -lp11-kit

# The folders (layers), each one archive $(BUILD)/lib/lib<name>.a of its .c files but the
# programs' mains.
MAINS   := appliance/supervisor/main.c appliance/keeper/main.c appliance/front/main.c \
           provisioning/provision.c verifier/signd-verify.c
LAYER_DIRS := base jose hsm verifier provisioning api appliance/common appliance/kproto \
              appliance/keeper appliance/store appliance/core appliance/front
layer_name = $(notdir $(1))
layer_lib  = $(BUILD)/lib/lib$(call layer_name,$(1)).a
layer_obj  = $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out $(MAINS),$(wildcard $(1)/*.c)))
LIB_SRC := $(filter-out $(MAINS),$(foreach d,$(LAYER_DIRS),$(wildcard $(d)/*.c)))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
L        = $(BUILD)/lib/lib$(1).a
# Every archive, for the unit tests, the fuzz replays, the bench and the provisioning tool
# (grouped: the layers still have edges both ways that `make layers` lists as exceptions).
ALL_LIBS := $(foreach d,$(LAYER_DIRS),$(call layer_lib,$(d)))
group    = -Wl,--start-group $(1) -Wl,--end-group
CIVETLIB := $(CIVET)/libcivetweb.a

# What each program may link (make layers checks the result).
SUPERVISOR_LIBS := $(call L,store) $(call L,kproto) $(call L,common) \
                   $(call L,jose) $(call L,base)
KEEPER_LIBS     := $(call L,keeper) $(call L,hsm) $(call L,core) $(call L,store) \
                   $(call L,kproto) $(call L,common) $(call L,jose) $(call L,base)
FRONT_LIBS      := $(call L,front) $(call L,api) $(call L,core) $(call L,store) \
                   $(call L,kproto) $(call L,common) $(call L,jose) $(call L,base)
VERIFY_LIBS     := $(call L,verifier) $(call L,jose) $(call L,base)
# signdctl: of core/ only the pure audit-chain verifier (auditverify.o), for audit verify.
CTL_LIBS        := $(call L,jose) $(call L,base)
PROV_LIBS       := $(call L,provisioning) $(call L,keeper) $(call L,hsm) $(call L,core) \
                   $(call L,store) $(call L,kproto) $(call L,common) $(call L,jose) \
                   $(call L,base)

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
                -fsanitize=fuzzer-no-link -D_GNU_SOURCE -I. -I$(CIVET) -I/usr/include/p11-kit-1 -I/usr/include/postgresql

PROGS := $(BUILD)/bin/signd-provision $(BUILD)/bin/hello-https $(BUILD)/bin/bench-hsm \
         $(BUILD)/bin/signd-verify $(BUILD)/bin/bench-propagation $(BUILD)/bin/signdctl
APPLIANCE := signd signd-keeper signd-front
PROGS += $(APPLIANCE:%=$(BUILD)/bin/%) $(APPLIANCE:%=$(BUILD)/testbin/%)

.PHONY: all deps run cluster test test-modules test-unit test-blackbox test-asan bench bench-hsm clean format docs fuzz hostile valgrind soak soak-cluster layers
.DEFAULT_GOAL := all
# Keep every object file: tests and programs share them.
.SECONDARY:

all: $(CIVETLIB) $(PROGS) $(UNIT_BIN) $(FUZZ_REPLAY)

deps:
	@HSM="$(HSM)" mk/deps.sh

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

define layer_rule
$(call layer_lib,$(1)): $(call layer_obj,$(1))
	@mkdir -p $$(dir $$@)
	@rm -f $$@
	ar rcs $$@ $$^
endef
$(foreach d,$(LAYER_DIRS),$(eval $(call layer_rule,$(d))))

# The web console (appliance/front/console/, docs/console.md): its files become one C
# source of byte arrays (mk/console.sh), compiled into the front's archive; the front
# serves /console/ from that table alone (appliance/front/console.h).
CONSOLE_FILES := $(wildcard appliance/front/console/*)
CONSOLE_GEN   := $(BUILD)/gen/console_assets.c
$(CONSOLE_GEN): appliance/front/console $(CONSOLE_FILES) mk/console.sh
	@mkdir -p $(dir $@)
	mk/console.sh appliance/front/console $@
$(call layer_lib,appliance/front): $(CONSOLE_GEN:%.c=$(BUILD)/obj/%.o)

# The test build: the same objects but these two, compiled with the crash points.
TEST_HOOK_SRC := appliance/core/keys.c appliance/supervisor/main.c
$(BUILD)/obj-test/%.o: %.c $(CIVET)/civetweb.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DSIGND_TEST_HOOKS -MMD -MP -c $< -o $@
$(BUILD)/lib-test/libcore.a: $(filter-out $(BUILD)/obj/appliance/core/keys.o,$(call layer_obj,appliance/core)) \
                             $(BUILD)/obj-test/appliance/core/keys.o
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/bin/signd: $(BUILD)/obj/appliance/supervisor/main.o $(SUPERVISOR_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(call group,$(SUPERVISOR_LIBS)) $(LDLIBS_BASE) -o $@

$(BUILD)/bin/signd-keeper: $(BUILD)/obj/appliance/keeper/main.o $(KEEPER_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(call group,$(KEEPER_LIBS)) $(LDLIBS) -o $@

$(BUILD)/bin/signd-front: $(BUILD)/obj/appliance/front/main.o $(FRONT_LIBS) $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(call group,$(FRONT_LIBS)) $(CIVETLIB) $(LDLIBS_BASE) -o $@

$(BUILD)/testbin/signd: $(BUILD)/obj-test/appliance/supervisor/main.o $(SUPERVISOR_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(call group,$(SUPERVISOR_LIBS)) $(LDLIBS_BASE) -o $@

# The production keeper itself (it has no crash point); renamed into place, so that a
# running copy is never written over.
$(BUILD)/testbin/signd-keeper: $(BUILD)/bin/signd-keeper
	@mkdir -p $(dir $@)
	cp $< $@.tmp && mv -f $@.tmp $@

$(BUILD)/testbin/signd-front: $(BUILD)/obj/appliance/front/main.o \
                              $(subst $(call L,core),$(BUILD)/lib-test/libcore.a,$(FRONT_LIBS)) \
                              $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(call group,$(filter %.a,$(wordlist 2,99,$^))) $(LDLIBS_BASE) -o $@

$(BUILD)/bin/signd-provision: $(BUILD)/obj/provisioning/provision.o $(PROV_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(call group,$(PROV_LIBS)) $(LDLIBS) -o $@

$(BUILD)/bin/hello-https: $(BUILD)/obj/tests/hello/hello_https.o $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bin/bench-hsm: $(BUILD)/obj/tests/bench/bench_hsm.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(call group,$(ALL_LIBS)) $(LDLIBS) -o $@

$(BUILD)/bin/signd-verify: $(BUILD)/obj/verifier/signd-verify.o $(VERIFY_LIBS) $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(call group,$(VERIFY_LIBS)) $(CIVETLIB) $(LDLIBS_BASE) -o $@

# signdctl, the operator CLI: cli/ is its own folder, linked into no archive.
$(BUILD)/bin/signdctl: $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard cli/*.c)) \
                       $(BUILD)/obj/appliance/core/auditverify.o $(CTL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(filter %.o,$^) $(call group,$(CTL_LIBS)) $(LDLIBS_BASE) -o $@

$(BUILD)/bin/bench-propagation: $(BUILD)/obj/tests/bench/bench_propagation.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(call group,$(ALL_LIBS)) $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(UNIT_HELP:%.c=$(BUILD)/obj/%.o) $(ALL_LIBS) \
                  $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(filter %.o,$^) $(call group,$(ALL_LIBS)) $(CIVETLIB) -lcmocka $(LDLIBS) -o $@

# test_cli drives signdctl through ctl_main: every object of cli/ but main.c's.
CLI_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out cli/main.c,$(wildcard cli/*.c)))
$(BUILD)/tests/test_cli: $(BUILD)/obj/tests/unit/test_cli.o $(UNIT_HELP:%.c=$(BUILD)/obj/%.o) \
                         $(CLI_OBJ) $(ALL_LIBS) $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(filter %.o,$^) $(call group,$(ALL_LIBS)) $(CIVETLIB) -lcmocka $(LDLIBS) -o $@

run: deps
	@$(MAKE) --no-print-directory all
	@DATA_DIR="$(DATA_DIR)" PORT="$(PORT)" HSM="$(HSM)" provisioning/run.sh

# NODES nodes on one PostgreSQL and one token behind HAProxy on PORT, the nodes on
# PORT+1...PORT+NODES, all kept in DATA_DIR (default ./cluster; provisioning/cluster.sh,
# docs/cluster.md). Ctrl-C stops everything.
NODES ?= 3
cluster: deps
	@$(MAKE) --no-print-directory all
	@DATA_DIR="$(DATA_DIR)" PORT="$(PORT)" NODES="$(NODES)" provisioning/cluster.sh

test: deps
	@$(MAKE) --no-print-directory all
	@tests/run.sh

# The whole suite against binaries built with AddressSanitizer and UBSan; any report fails.
test-asan: deps
	@$(MAKE) --no-print-directory SANITIZE=1 all
	@SIGND_BUILD=build/asan tests/run.sh

$(BUILD)/tests/test_fuzz_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(BUILD)/obj/tests/fuzz/replay.o \
                            $(ALL_LIBS) $(CIVETLIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(filter %.o,$^) $(call group,$(ALL_LIBS)) $(CIVETLIB) $(LDLIBS) -o $@

# Every target for FUZZ_SECONDS in turn (make fuzz FUZZ_SECONDS=10 in CI); fails on any
# finding, whose input is kept under build/fuzz/findings/.
fuzz: deps
	@$(MAKE) --no-print-directory $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz_%)
	@tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BUILD) $(FUZZ_NAMES)

$(FUZZ_BUILD)/obj/%.o: %.c $(CIVET)/civetweb.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/libsignd.a: $(LIB_SRC:%.c=$(FUZZ_BUILD)/obj/%.o) $(FUZZ_BUILD)/obj/console_assets.o
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/obj/console_assets.o: $(CONSOLE_GEN) $(CIVET)/civetweb.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_BUILD)/libsignd.a $(CIVETLIB)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) $< $(call group,$(FUZZ_BUILD)/libsignd.a $(CIVETLIB)) \
	    $(LDLIBS) -o $@

# The core black-box set on each of TEST_MODULES (tests/modules/, docs/modules.md): each
# module's daemons and token are started by the tests and stopped after; one file after
# another, as a module's daemon is one per machine.
test-modules:
	@HSM="$(TEST_MODULES)" mk/deps.sh
	@$(MAKE) --no-print-directory all
	@TEST_MODULES="$(TEST_MODULES)" tests/modules/run.sh

test-unit: all
	@tests/run.sh unit

test-blackbox: all
	@tests/run.sh blackbox

# The layers: what each program links (from the binaries) and which folder includes which
# (from the sources). One line per violation; fails on any.
layers: all
	@BUILD=$(BUILD) mk/layers.sh

bench-hsm: deps
	@$(MAKE) --no-print-directory all
	@HSM="$(HSM)" SIGND_BUILD=$(BUILD) tests/bench/bench-hsm.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@HSM="$(HSM)" SIGND_BUILD=$(BUILD) tests/bench/bench.sh

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
# SOAK_CLUSTER=1: the cluster variant (soak-cluster below) instead.
SOAK_ROUNDS ?= 200
soak: deps
	@$(MAKE) --no-print-directory all
ifeq ($(SOAK_CLUSTER),1)
	@SIGND_BUILD=$(BUILD) SOAK_ROUNDS=$(SOAK_ROUNDS) /usr/bin/python3 tests/soak/soak_cluster.py
else
	@SIGND_BUILD=$(BUILD) SOAK_ROUNDS=$(SOAK_ROUNDS) /usr/bin/python3 tests/soak/soak.py
endif

# Crash consistency of cluster mode (issue 20): three nodes on one PostgreSQL server and
# one token behind HAProxy, SOAK_ROUNDS rounds (default 50 here) of concurrent clients
# through the load balancer and a SIGKILL of a random node or of PostgreSQL's postmaster
# (started again), the invariants checked after every recovery (tests/soak/soak_cluster.py).
soak-cluster: deps
	@$(MAKE) --no-print-directory all
	@SIGND_BUILD=$(BUILD) SOAK_ROUNDS=$(if $(filter command line,$(origin SOAK_ROUNDS)),$(SOAK_ROUNDS),50) \
	  /usr/bin/python3 tests/soak/soak_cluster.py

# docs/configuration.md is the configuration the provisioning tool writes, verbatim.
docs: all
	@tmp=$$(mktemp -d) && $(BUILD)/bin/signd-provision config $$tmp >/dev/null && \
	  { sed -n '1,/^```$$/p' docs/configuration.md; cat $$tmp/appliance.conf; echo '```'; } \
	    >docs/configuration.md.new && mv docs/configuration.md.new docs/configuration.md && \
	  rm -rf $$tmp

# The web console's screenshots in docs/console.md: its browser tests (headless Chromium,
# tests/blackbox/test_console_browser.py) write each view they drive to docs/console/*.png.
.PHONY: console-screenshots
console-screenshots: deps
	@$(MAKE) --no-print-directory all
	@mkdir -p docs/console && tmp=$$(mktemp -d) && \
	  SIGND_BUILD=$(BUILD) SIGND_SCREENSHOT_DIR=$(CURDIR)/docs/console /usr/bin/python3 -m pytest -q -s \
	    -p no:cacheprovider --basetemp=$$tmp tests/blackbox/test_console_browser.py; \
	  rc=$$?; rm -rf $$tmp; exit $$rc

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD)/obj $(BUILD)/obj-test $(BUILD)/bin $(BUILD)/testbin $(BUILD)/tests \
	       $(BUILD)/lib $(BUILD)/lib-test $(BUILD)/gen

-include $(LIB_OBJ:.o=.d) $(wildcard $(BUILD)/obj/*/*.d $(BUILD)/obj/*/*/*.d $(BUILD)/obj/*/*/*/*.d)
-include $(wildcard $(BUILD)/obj-test/*/*.d $(BUILD)/obj-test/*/*/*.d)
-include $(wildcard $(FUZZ_BUILD)/obj/*/*.d $(FUZZ_BUILD)/obj/*/*/*.d $(FUZZ_BUILD)/obj/*/*/*/*.d)
