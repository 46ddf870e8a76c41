# phi3: one flat Makefile. Objects under $(O)/, header dependencies tracked (-MMD -MP),
# warnings as errors. The CUDA backend is compiled when nvcc is found (CUDA=0 forces it
# off, CUDA=1 requires it); GENCODE overrides the GPU targets.
#
# Conventions (so a new file needs no edit here):
#   */phi3-*.c           a tool's main -> $(BINDIR)/phi3-*
#   tok/ embed/ decode/ sample/ shared/ *.c   the library every tool links
#   kernels/*.cu decode/*.cu                  the CUDA backend plug-in (CUDA on)
#   tests/unit/*_test.c  C unit tests (TAP), tests/fuzz/*_fuzz.c libFuzzer targets

O      ?= build
BINDIR ?= bin
PREFIX ?= /usr/local
CC     ?= cc
NVCC   ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

ifeq ($(CUDA),)
  CUDA := $(if $(NVCC),1,0)
endif
ifeq ($(CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but nvcc was not found (set NVCC=/path/to/nvcc))
  endif
endif

GENCODE ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80

WARN    = -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wstrict-prototypes
CFLAGS ?= -O2 -g
override CFLAGS += -std=c11 -D_GNU_SOURCE -pthread $(WARN) -I. -MMD -MP
NVFLAGS ?= -O3 -lineinfo
override NVFLAGS += -std=c++17 $(GENCODE) -I. -MMD -MP -Xcompiler -Wall,-Werror,-Wno-unused-parameter \
           --expt-relaxed-constexpr -Werror all-warnings
# msgpack-c and jansson linked statically: the GPU machine lacks libmsgpackc.so.2.
LIBS    = -Wl,-Bstatic -lmsgpackc -ljansson -Wl,-Bdynamic -lm -lpthread -lrt
LDFLAGS ?=
override LDFLAGS += -pthread -Wl,--as-needed

LIBDIRS  = shared tok embed decode sample
ALL_C    = $(wildcard $(addsuffix /*.c,$(LIBDIRS)))
TOOL_C   = $(filter %.c,$(foreach d,$(LIBDIRS),$(wildcard $(d)/phi3-*.c)))
LIB_C    = $(filter-out $(TOOL_C),$(ALL_C))
# The CUDA backend is a plug-in, $(BINDIR)/phi3-cuda.so, that phi3-run dlopens on first
# use (decode/cuda_loader.c): the tools never link the CUDA libraries themselves.
CU_SRC   =
CUDA_SO  =
ifeq ($(CUDA),1)
  CU_SRC  = $(wildcard kernels/*.cu decode/*.cu)
  CUDA_SO = $(BINDIR)/phi3-cuda.so
  override NVFLAGS += -Xcompiler -fPIC
  CUDA_LIBS = -L$(CUDA_HOME)/lib64 -lcublas -lcudart_static -ldl -lrt -lpthread -lstdc++ \
              -Wl,-rpath,$(CUDA_HOME)/lib64
endif
LIBS    += -ldl

LIB_O    = $(LIB_C:%.c=$(O)/%.o)
CU_O     = $(CU_SRC:%.cu=$(O)/%.cu.o)
TOOLS    = $(foreach f,$(TOOL_C),$(BINDIR)/$(basename $(notdir $(f))))
TEST_C   = $(wildcard tests/unit/*_test.c)
TESTS    = $(TEST_C:tests/unit/%.c=$(O)/tests/%)
FUZZ_C   = $(wildcard tests/fuzz/*_fuzz.c)
BENCH_C  = $(wildcard tests/bench/*_bench.c)
BENCHES  = $(BENCH_C:tests/bench/%.c=$(O)/bench/%)
LIBA     = $(O)/libphi3.a

.PHONY: all test check bench fuzz sanitize install deps clean unit
# Keep the tools' main objects (make would delete them as intermediates and relink every time).
.SECONDARY:
all: $(TOOLS) $(CUDA_SO) $(TESTS)

$(CUDA_SO): $(CU_O)
	@mkdir -p $(@D)
	$(CC) -shared $^ $(CUDA_LIBS) -o $@

$(LIBA): $(LIB_O)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(O)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

$(O)/%.cu.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BINDIR)/phi3-%: $(O)/tok/phi3-%.o $(LIBA)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@
$(BINDIR)/phi3-%: $(O)/embed/phi3-%.o $(LIBA)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@
# phi3-run exports its symbols (-rdynamic) for the CUDA plug-in to resolve against.
$(BINDIR)/phi3-%: $(O)/decode/phi3-%.o $(LIBA)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -rdynamic $^ $(LIBS) -o $@
$(BINDIR)/phi3-%: $(O)/sample/phi3-%.o $(LIBA)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@
$(BINDIR)/phi3-%: $(O)/shared/phi3-%.o $(LIBA)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@

$(O)/tests/%: $(O)/tests/unit/%.o $(LIBA)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@

# The README's test command. tests/run.sh runs the C unit tests and every BATS file and
# ends with "N passed, N failed".
test check: all
	PHI3_BIN=$(abspath $(BINDIR)) PHI3_TESTBIN=$(abspath $(O)/tests) tests/run.sh

# ASan + UBSan build of everything (CPU only), then the whole suite against it (-O2:
# 40-session ran in 102 s instead of 121 s at -O1; PHI3_SANITIZE=1 lets the time-bounded
# random differential tests run shorter, their full length being the plain suite's).
sanitize:
	PHI3_SANITIZE=1 $(MAKE) CUDA=0 O=build/san BINDIR=build/san/bin \
	  CFLAGS="-O2 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
	  LDFLAGS="-fsanitize=address,undefined" test

# Benchmarks: tests/bench/*.sh (BENCH=name for one); tests/bench/*_bench.c are built first.
bench: all $(BENCHES)
	PHI3_BIN=$(abspath $(BINDIR)) PHI3_BENCHBIN=$(abspath $(O)/bench) tests/bench/run.sh

$(O)/bench/%: $(O)/tests/bench/%.o $(LIBA)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@

# libFuzzer targets (clang), each run briefly: FUZZ_SECONDS each, FUZZ_JOBS at a time
# (tests/fuzz/run.sh). The library is compiled once with the sanitizers and fuzzer
# coverage (fuzzer-no-link), then each target is linked against it.
FUZZ_SECONDS ?= 20
FUZZ_CFLAGS = -g -O1 -std=c11 -D_GNU_SOURCE -pthread -I. -fsanitize=address,undefined
FUZZ_LIB_O  = $(LIB_C:%.c=$(O)/fuzz/lib/%.o)
FUZZ_LIBA   = $(O)/fuzz/libphi3-fuzz.a
# decode/gemm.c without UBSan here: clang's UBSan on its unrolled tiles took 4 of the
# fuzz step's 5 minutes to compile (34 s without), and the fuzzers drive the parsers;
# make sanitize (gcc) keeps UBSan on it for the whole suite.
FUZZ_NO_UBSAN = decode/gemm.c
$(O)/fuzz/lib/%.o: %.c
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) $(if $(filter $<,$(FUZZ_NO_UBSAN)),-fno-sanitize=undefined) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
$(FUZZ_LIBA): $(FUZZ_LIB_O)
	rm -f $@ && ar rcs $@ $^
FUZZ_BINS = $(FUZZ_C:tests/fuzz/%.c=$(O)/fuzz/%)
FUZZ_JOBS ?= 2
$(O)/fuzz/%_fuzz: tests/fuzz/%_fuzz.c $(FUZZ_LIBA)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_LIBA) -o $@ $(LIBS)
# the targets built (in parallel under -j), then run FUZZ_JOBS at a time
fuzz: $(FUZZ_BINS)
	tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_JOBS) $(FUZZ_BINS)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(TOOLS) bin/phi3 $(DESTDIR)$(PREFIX)/bin/
	$(if $(CUDA_SO),install -d $(DESTDIR)$(PREFIX)/lib/phi3 && install -m 755 $(CUDA_SO) $(DESTDIR)$(PREFIX)/lib/phi3/)
	man/build.sh $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/bin
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 644 completion/phi3.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/phi3
	for t in $(notdir $(TOOLS)); do ln -sf phi3 $(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$t; done

# Every Debian package the project needs (build, tests, examples).
DEB_PKGS = build-essential libmsgpack-dev libjansson-dev bats clang python3 python3-msgpack strace \
           libclang-rt-14-dev parallel tmux help2man groff-base shellcheck
deps:
	apt-get update && apt-get install -y --no-install-recommends $(DEB_PKGS)

clean:
	rm -rf build $(TOOLS) $(BINDIR)/phi3-cuda.so

-include $(shell find $(O) -name '*.d' 2>/dev/null)
