/* simd.h: small AVX2 helpers shared by the CPU kernels (decode/gemm.c, decode/cpu.c). */
#ifndef PHI3_SIMD_H
#define PHI3_SIMD_H
#include <immintrin.h>

/* r[i] lane j -> r[j] lane i: the 8x8 transpose of eight ymm rows (unpack, shuffle, then
 * the 128-bit halves exchanged) */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void transpose8x8_ps(__m256 r[8])
{
    __m256 u0 = _mm256_unpacklo_ps(r[0], r[1]), u1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 u2 = _mm256_unpacklo_ps(r[2], r[3]), u3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 u4 = _mm256_unpacklo_ps(r[4], r[5]), u5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 u6 = _mm256_unpacklo_ps(r[6], r[7]), u7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xee);
    __m256 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xee);
    __m256 v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xee);
    __m256 v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xee);
    /* lanes 0-3 from the low halves, 4-7 from the high */
    r[0] = _mm256_permute2f128_ps(v0, v4, 0x20), r[1] = _mm256_permute2f128_ps(v1, v5, 0x20);
    r[2] = _mm256_permute2f128_ps(v2, v6, 0x20), r[3] = _mm256_permute2f128_ps(v3, v7, 0x20);
    r[4] = _mm256_permute2f128_ps(v0, v4, 0x31), r[5] = _mm256_permute2f128_ps(v1, v5, 0x31);
    r[6] = _mm256_permute2f128_ps(v2, v6, 0x31), r[7] = _mm256_permute2f128_ps(v3, v7, 0x31);
}

#endif
