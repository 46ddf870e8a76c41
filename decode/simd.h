/* simd.h: small AVX2 and AVX-512 helpers shared by the CPU kernels (decode/gemm.c,
 * decode/cpu.c, decode/qdot.c, decode/qlimb.c). */
#ifndef PHI3_SIMD_H
#define PHI3_SIMD_H
#include <immintrin.h>
#include <stdint.h>

/* a loop the kernels want unrolled (GCC takes one count; 8 covers every loop they mark) */
#define UNROLL(N) _Pragma("GCC unroll 8")

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

#define K45_SIMD __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"), always_inline)) static inline

/* A row pair's K-quant scales (Q4_K, Q5_K blocks at a and b) in the pair layout: S = d*sc
 * and M = -(dmin*m) of the 8 sub-blocks of A in lanes 0-7, of B in lanes 8-15 (the same
 * float operations as qdot.c's k45_scales). The first 16 bytes of a block (d, dmin, 12 scale
 * bytes) are spread so that lane j holds (low byte, next byte): sc: (s[j], 0) for j < 4,
 * (s[j+4], s[j-4]) for j >= 4; m: (s[j+4], 0), (s[j+4], s[j]); then
 * value = (v >> sh & lo) | (v >> 10 & 0x30) with sh = 4 for m of j >= 4 (else 0), lo =
 * 0x3f for j < 4 (else 0xf) and the 0x30 term for j >= 4 only. */
K45_SIMD void k45_pair_scales(const uint8_t *a, const uint8_t *b, __m512 *S, __m512 *M)
{
#define K45_CTL(x0, x1, x2, x3) _mm512_set_epi32(x3, x2, x1, x0, x3, x2, x1, x0, x3, x2, x1, x0, x3, x2, x1, x0)
#define K45_LANES(lo4, hi4) _mm512_set_epi32(hi4, hi4, hi4, hi4, lo4, lo4, lo4, lo4, hi4, hi4, hi4, hi4, lo4, lo4, lo4, lo4)
    __m512i v = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)a)), 0xFF00,
                                            _mm_loadu_si128((const __m128i *)b));
    /* 128-bit lane 0 and 2 serve j = 0..3, lanes 1 and 3 j = 4..7: the controls differ per lane */
    const __m512i csc = _mm512_set_epi32((int)0x8080070f, (int)0x8080060e, (int)0x8080050d, (int)0x8080040c,
                                         (int)0x80808007, (int)0x80808006, (int)0x80808005, (int)0x80808004,
                                         (int)0x8080070f, (int)0x8080060e, (int)0x8080050d, (int)0x8080040c,
                                         (int)0x80808007, (int)0x80808006, (int)0x80808005, (int)0x80808004);
    const __m512i cm = _mm512_set_epi32((int)0x80800b0f, (int)0x80800a0e, (int)0x8080090d, (int)0x8080080c,
                                        (int)0x8080800b, (int)0x8080800a, (int)0x80808009, (int)0x80808008,
                                        (int)0x80800b0f, (int)0x80800a0e, (int)0x8080090d, (int)0x8080080c,
                                        (int)0x8080800b, (int)0x8080800a, (int)0x80808009, (int)0x80808008);
    const __m512i lo = K45_LANES(0x3f, 0xf), hi = K45_LANES(0, 0x30), sh = K45_LANES(0, 4);
    __m512i vs = _mm512_shuffle_epi8(v, csc), vm = _mm512_shuffle_epi8(v, cm);
    __m512i sc = _mm512_ternarylogic_epi32(_mm512_srli_epi32(vs, 10), hi, _mm512_and_si512(vs, lo), 0xEA);
    __m512i m = _mm512_ternarylogic_epi32(_mm512_srli_epi32(vm, 10), hi, _mm512_and_si512(_mm512_srlv_epi32(vm, sh), lo), 0xEA);
    /* d (bytes 0-1) and dmin (bytes 2-3) of each row as halves in every lane of its row */
    __m512i dd = _mm512_shuffle_epi8(v, K45_CTL(0x03020100, 0x03020100, 0x03020100, 0x03020100));
    __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd)), dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dd, 16)));
    *S = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
    *M = _mm512_xor_ps(_mm512_mul_ps(dmin, _mm512_cvtepi32_ps(m)), _mm512_set1_ps(-0.0f));
#undef K45_CTL
#undef K45_LANES
}

#endif
