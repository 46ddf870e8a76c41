#!/usr/bin/env bash
# blas.sh: our blocked GEMM against OpenBLAS's sgemm on one full-size layer's products for a
# 256-token step (tests/bench/blas_cmp.c), and whether each keeps a token's bits between a
# one-token and a many-token product. Skipped unless OpenBLAS's development files are
# installed (Debian: libopenblas-dev); the project itself does not use OpenBLAS.
# PHI3_BENCH_THREADS (default 2), PHI3_BENCH_REPEATS (default 3).
set -eu
INC=/usr/include/x86_64-linux-gnu/openblas-pthread
[ -e "$INC/cblas.h" ] || { echo "blas: OpenBLAS not installed (libopenblas-dev), skipped"; exit 0; }
B=build/bench-blas; mkdir -p "$B"
make -s build/libphi3.a
cc -O2 -std=c11 -D_GNU_SOURCE -pthread -I. -I"$INC" -o "$B/blas_cmp" tests/bench/blas_cmp.c build/libphi3.a \
  -lopenblas -ljansson -lmsgpackc -lm
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "OpenBLAS as it detects this CPU ($(OPENBLAS_VERBOSE=2 "$B/blas_cmp" 1 2 1 2>&1 | grep -m1 '^Core:' || echo 'core not reported')):"
"$B/blas_cmp" "${PHI3_BENCH_THREADS:-2}" 256 "${PHI3_BENCH_REPEATS:-3}"
# a Debian OpenBLAS (DYNAMIC_ARCH) may not know a newer CPU and fall back to AVX2 kernels:
# where the CPU has AVX-512, also its AVX-512 (SkylakeX) kernels
if grep -qw avx512f /proc/cpuinfo; then
  echo "OpenBLAS with OPENBLAS_CORETYPE=SkylakeX (its AVX-512 kernels):"
  OPENBLAS_CORETYPE=SkylakeX "$B/blas_cmp" "${PHI3_BENCH_THREADS:-2}" 256 "${PHI3_BENCH_REPEATS:-3}"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
