# lorad — build, test, bench, run.
#   make            build everything this machine can (CUDA backend when nvcc exists)
#   make test       install missing packages, build, run every test (last line: N passed, N failed)
#   make run        the demo: build, make a model, start lorad with a CPU worker, submit a job
#   make stop       stop the lorad that `make run` started
#   make install    lorad, lora-worker, lora to $(PREFIX)/bin, web/ and migrations/ to
#                   $(PREFIX)/share/lorad (PREFIX=/usr/local, DESTDIR for staging)
#   make bench      benchmarks that print ratios against peers measured in the same run
#   make bench-gpu  the GPU benchmark (tokens/s, MFU, ratio to PyTorch); skips without a GPU
#   make gpu-check  on a GPU: test_cuda, compute-sanitizer, bench-gpu, figures for bench/RESULTS.md
#   make fuzz       every fuzz target for a bounded time (clang libFuzzer)
#   make soak       users, kills and a filling disk for SOAK_SECONDS (default 300); a table of what held
#   make fresh-check  make run in a fresh minimal Debian (debootstrap + chroot; root, 15-25 min)
#   make asan       the unit tests under ASan/UBSan
#
# Module sources are picked up by wildcard: a new module is a new .c/.h pair
# in its folder, no Makefile edit. Programs have their main() in <dir>/main.c.
#
# -j is forced below, so prerequisites of one target run in parallel. A target
# that needs packages installed before anything compiles (run, bench, test,
# fuzz) therefore does not list deps beside all: its recipe runs
# $(MAKE) deps, then $(MAKE) all, one after the other
# (tests/integration/test_make_order.sh checks this).

BUILD   ?= build
PREFIX  ?= /usr/local
DESTDIR ?=
# -j for every make a person types. The $(MAKE)s in the recipes below pass
# LR_SUBMAKE=1 and share their parent's job slots instead (forcing -j again
# there makes each say "-jN forced in makefile: resetting jobserver mode").
ifeq ($(LR_SUBMAKE),)
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
endif
CC      ?= cc
NVCC    ?= $(firstword $(wildcard /usr/local/cuda/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
OPT     ?= -O2
SAN     ?=

BLAS_INC := $(firstword $(wildcard /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas /usr/include/aarch64-linux-gnu/openblas-pthread))
CPPFLAGS += -I. -D_GNU_SOURCE $(if $(BLAS_INC),-I$(BLAS_INC))
CFLAGS   += -std=c11 $(OPT) -g -Wall -Wextra -pthread -fno-strict-aliasing -fopenmp
LDFLAGS  += -fopenmp
ifneq ($(SAN),)
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
endif
LDLIBS   += -lopenblas -lpcre2-8 -lutf8proc -ljansson -lyaml -lmicrohttpd -lsqlite3 -luv -lcurl -lgnutls -lm -lpthread

# OpenMPI (mk/deps.sh installs it) runs one job as several lora-worker ranks
# (worker/dist.c); a build without it trains as one process only.
MPICC    := $(shell command -v mpicc 2>/dev/null)
ifneq ($(MPICC),)
CPPFLAGS += -DLR_HAVE_MPI $(shell $(MPICC) --showme:compile)
LDLIBS   += $(shell $(MPICC) --showme:link)
endif

ifneq ($(NVCC),)
CUDA_HOME  := $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_SRC   := $(wildcard kernels/cuda/*.cu)
CPPFLAGS   += -DLR_HAVE_CUDA -I$(CUDA_HOME)/include
NVCCFLAGS  ?= -O3 -std=c++17 -I. -DLR_HAVE_CUDA --compiler-options -Wall,-Wextra \
              -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
              --expt-relaxed-constexpr -Xcudafe --display_error_number
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
# NCCL sums the gradients of ranks on GPUs; MPI starts the ranks and carries its id
ifneq ($(and $(MPICC),$(wildcard $(CUDA_HOME)/include/nccl.h)),)
CPPFLAGS   += -DLR_HAVE_NCCL
CUDA_LIBS  += -lnccl
endif
else
CUDA_SRC   :=
CUDA_LIBS  :=
endif

# Objects depend on the flags they were built with: a build folder first
# built without nvcc or MPI (or with SAN) is rebuilt when they change,
# instead of linking objects of two configurations.
CONFIG_STAMP := $(BUILD)/.config
CONFIG_LINE  := $(CC) $(CPPFLAGS) $(CFLAGS) | $(NVCC) $(NVCCFLAGS) | $(LDLIBS) $(CUDA_LIBS)
ifneq ($(CONFIG_LINE),$(shell cat $(CONFIG_STAMP) 2>/dev/null))
$(shell mkdir -p $(BUILD) && printf '%s\n' '$(CONFIG_LINE)' > $(CONFIG_STAMP))
endif

COMMON_SRC := $(wildcard common/*.c proto/*.c formats/*.c)
KERNEL_SRC := $(wildcard kernels/*.c kernels/cpu/*.c kernels/cuda/*.c)
WORKER_SRC := $(filter-out worker/main.c,$(wildcard worker/*.c))
DAEMON_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
CLIENT_SRC := $(filter-out client/main.c,$(wildcard client/*.c))
TEST_SRC   := $(wildcard tests/unit/test_*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
COMMON_OBJ := $(call obj,$(COMMON_SRC))
WORKER_OBJ := $(call obj,$(WORKER_SRC) $(KERNEL_SRC)) $(patsubst %.cu,$(BUILD)/obj/%.o,$(CUDA_SRC))
DAEMON_OBJ := $(call obj,$(DAEMON_SRC))
CLIENT_OBJ := $(call obj,$(CLIENT_SRC))
ALL_LIB_OBJ := $(COMMON_OBJ) $(WORKER_OBJ) $(DAEMON_OBJ) $(CLIENT_OBJ)
TEST_BIN   := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRC))

BINS := $(BUILD)/lora-worker $(if $(wildcard daemon/main.c),$(BUILD)/lorad) $(if $(wildcard client/main.c),$(BUILD)/lora)

.PHONY: all deps test unit asan bench bench-gpu gpu-check run stop install fuzz soak fresh-check clean web
all: $(BINS) $(TEST_BIN) web
ifeq ($(NVCC),)
	@echo "note: nvcc not found: built the CPU backend only"
endif

deps:
	@bash mk/deps.sh

$(BUILD)/obj/%.o: %.c $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.cu $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/liblorad.a: $(ALL_LIB_OBJ)
	@rm -f $@
	@echo "ar $@ ($(words $^) objects)"
	@ar rcs $@ $^

$(BUILD)/lora-worker: $(call obj,worker/main.c) $(BUILD)/liblorad.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LIBS)
$(BUILD)/lorad: $(call obj,daemon/main.c) $(BUILD)/liblorad.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LIBS)
$(BUILD)/lora: $(call obj,client/main.c) $(BUILD)/liblorad.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LIBS)

$(BUILD)/tests/%: $(call obj,tests/unit/%.c) $(call obj,tests/unit/harness.c) $(BUILD)/liblorad.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LIBS)

# The dashboard's third-party files (uPlot) come from npm at build time.
web:
	@if [ -f web/package.json ]; then bash mk/web.sh; fi

test:
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 deps
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 all
	@LR_BUILD=$(BUILD) bash tests/run.sh

unit: all
	@LR_BUILD=$(BUILD) bash tests/run.sh unit

asan:
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 BUILD=build-asan SAN=1 OPT=-O1 NVCC= $(patsubst $(BUILD)/%,build-asan/%,$(TEST_BIN)) build-asan/lora-worker
	@LR_BUILD=build-asan bash tests/run.sh unit

bench:
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 deps
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 all
	@LR_BUILD=$(BUILD) bash bench/run.sh

bench-gpu: all
	@LR_BUILD=$(BUILD) bash bench/run_gpu.sh

gpu-check: all
	@LR_BUILD=$(BUILD) bash bench/gpu_check.sh $(PHASES)

run:
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 deps
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 all
	@LR_BUILD=$(BUILD) bash mk/run.sh

stop:
	@bash mk/stop.sh

# lorad looks for web/ and migrations/ in <exe>/../share/lorad (daemon/config.c).
install: $(BINS) web
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/lorad/migrations
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 migrations/*.sql $(DESTDIR)$(PREFIX)/share/lorad/migrations/
	install -d $(addprefix $(DESTDIR)$(PREFIX)/share/lorad/web/,js css vendor)
	install -m 644 web/index.html $(DESTDIR)$(PREFIX)/share/lorad/web/
	install -m 644 web/js/*.js $(DESTDIR)$(PREFIX)/share/lorad/web/js/
	install -m 644 web/css/*.css $(DESTDIR)$(PREFIX)/share/lorad/web/css/
	install -m 644 web/vendor/* $(DESTDIR)$(PREFIX)/share/lorad/web/vendor/

fuzz:
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 deps
	@bash tests/fuzz/run.sh

# make run on a minimal Debian made with debootstrap (root, 15-25 minutes).
fresh-check:
	@bash mk/fresh_check.sh

# The long soak (SOAK_SECONDS, default 300); make test runs a 40 s version.
soak:
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 deps
	@$(MAKE) --no-print-directory LR_SUBMAKE=1 all
	@LR_BUILD=$(BUILD) SOAK_SECONDS=$${SOAK_SECONDS:-300} /usr/bin/python3 tests/integration/test_soak.py

clean:
	rm -rf build build-asan build-fuzz

# Test programs' objects are intermediate files of the chain test_x.c -> .o ->
# test_x; without this make deletes them at the end of every build (a long
# "rm build/obj/..." line) and recompiles them next time.
.SECONDARY: $(call obj,$(TEST_SRC) tests/unit/harness.c)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
