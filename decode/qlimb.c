/* qlimb.c: Q4_K, Q5_K and Q6_K decode products with the activations as three signed
 * bytes each (qlimb.h). */
#include "decode/qlimb.h"
#include "decode/simd.h"
#include "embed/quant.h"
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One prepared block of 256 activations. a[l] holds limb l of the 256 values in the
 * order the kernel of the weight type takes its q: natural for Q6_K (a 64-byte group z
 * is weights 64z..64z+63); for Q4_K and Q5_K a 64-byte group holds the two sub-blocks
 * of 32 whose nibbles share 32 bytes of qs, so slots 0..7 (32 bytes each) are sub-blocks
 * 0, 2, 1, 3, 4, 6, 5, 7. s[j] = 2^(k_j - 14) for sub-block j of 32 (natural index);
 * bs16[m] is the float sum of the 16 values m (a fixed tree), bs[j] = bs16[2j] +
 * bs16[2j+1]. */
typedef struct qlimb_blk {
    int8_t a[3][QK_K];
    float s[8], bs[8], bs16[16];
} qlimb_blk;

_Static_assert(sizeof(qlimb_blk) % 64 == 0, "prepared blocks stay 64-byte aligned");

static const int slot_k45[8] = {0, 2, 1, 3, 4, 6, 5, 7};   /* sub-block -> slot (and back) */
static const int slot_id[8] = {0, 1, 2, 3, 4, 5, 6, 7};

static const int *slots(st_dtype d) { return d == ST_Q6_K ? slot_id : slot_k45; }

size_t qlimb_xbytes(int n) { return (size_t)(n / QK_K) * sizeof(qlimb_blk); }
int qlimb_supported(st_dtype d) { return d == ST_Q4_K || d == ST_Q5_K || d == ST_Q6_K; }

static int forced = -1;
void qlimb_force(int on) { forced = on; }

static int cpu_ok(void)
{
    static int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("avx2") && !getenv("PHI3_NO_AVX") && !getenv("PHI3_NO_AVX512");
    }
    return ok;
}

int qlimb_enabled(void)
{
    const char *e = getenv("PHI3_QUANT_LIMBS");
    int want = forced >= 0 ? forced : e && !strcmp(e, "1");
    return want && cpu_ok();
}

/* ---- preparing the activations ---- */

/* the sum of 16 floats as a fixed tree. Always inlined, so it is compiled with its
 * caller's target: AVX-512 code that calls a function compiled as legacy SSE, with the
 * upper halves of the vector registers dirty, ran at less than half speed on Intel
 * (measured: the kernel below at 9.4 against 22.6 Gweights/s when its last sums called an
 * out-of-line sum16) */
static inline __attribute__((always_inline)) float sum16(const float *p)
{
    float a = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    float b = ((p[8] + p[9]) + (p[10] + p[11])) + ((p[12] + p[13]) + (p[14] + p[15]));
    return a + b;
}

/* the exponent k of a sub-block whose largest magnitude is mx (> 0, finite): the
 * smallest with mx 2^-k <= 127 among k = e - 7, e - 6 (mx = f 2^e, f in [0.5, 1)). From
 * the bits (no libm call: the vector path calls this between AVX-512 instructions). */
static inline __attribute__((always_inline)) int sub_exp(float mx)
{
    uint32_t u;
    memcpy(&u, &mx, sizeof u);
    uint32_t E = u >> 23 & 0xff, mant = u & 0x7fffff;
    if (E) return (int)E - 126 - (mant > 0x7E0000u ? 6 : 7);   /* f = 1/2 + mant 2^-24 */
    int p = 31 - __builtin_clz(mant);                           /* subnormal: f = mant 2^-(p+1) */
    return p - 148 - ((uint64_t)mant * 128 > (uint64_t)127 << (p + 1) ? 6 : 7);
}

/* 2^e as a float (0 below the subnormals) */
static inline __attribute__((always_inline)) float pow2f(int e)
{
    uint32_t u = e >= -126 ? (uint32_t)(e + 127) << 23 : e >= -149 ? 1u << (e + 149) : 0;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* the sums and scale of sub-block j of 32 from its largest magnitude mx and the sums s0,
 * s1 of its halves; k is the exponent its limbs are taken at (the caller writes them) */
static inline __attribute__((always_inline)) void sub_meta(qlimb_blk *B, int j, float mx, float s0, float s1, int *k)
{
    B->bs16[2 * j] = s0;
    B->bs16[2 * j + 1] = s1;
    B->bs[j] = s0 + s1;
    if (!(mx <= FLT_MAX)) {             /* inf or NaN among the activations: so is the result */
        B->s[j] = NAN;
        *k = 0;
    } else if (mx == 0) {
        B->s[j] = 0;
        *k = 0;
    } else {
        *k = sub_exp(mx);
        B->s[j] = pow2f(*k - 14);
    }
}

static void prep_scalar(const float *x, qlimb_blk *B, const int *slot)
{
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float mx = 0;
        int bad = 0, k;
        for (int i = 0; i < 32; i++) {
            float v = fabsf(xs[i]);
            if (v != v) bad = 1;
            if (v > mx) mx = v;
        }
        sub_meta(B, j, bad ? NAN : mx, sum16(xs), sum16(xs + 16), &k);
        int zero = !(B->s[j] > 0);
        for (int i = 0; i < 32; i++) {
            float r = zero ? 0.0f : ldexpf(xs[i], -k);
            for (int l = 0; l < 3; l++) {
                float a = nearbyintf(r);
                B->a[l][32 * slot[j] + i] = (int8_t)(int)a;
                r = (r - a) * 128.0f;
            }
        }
    }
}

#define Z512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define Z512I Z512 __attribute__((always_inline)) static inline

Z512I float f16_to_f32z(uint16_t h) { return _cvtsh_ss(h); }

Z512 static void prep_avx512(const float *x, qlimb_blk *B, const int *slot)
{
    const __m512 absm = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        __m512 x0 = _mm512_loadu_ps(xs), x1 = _mm512_loadu_ps(xs + 16);
        __m512 m = _mm512_max_ps(_mm512_and_ps(x0, absm), _mm512_and_ps(x1, absm));
        __mmask16 nan = _mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(x1, x1, _CMP_UNORD_Q);
        int k;
        sub_meta(B, j, nan ? NAN : _mm512_reduce_max_ps(m), sum16(xs), sum16(xs + 16), &k);
        if (!(B->s[j] > 0)) {
            for (int l = 0; l < 3; l++) _mm256_storeu_si256((__m256i *)(B->a[l] + 32 * slot[j]), _mm256_setzero_si256());
            continue;
        }
        const __m512 sc = _mm512_set1_ps((float)-k), c128 = _mm512_set1_ps(128.0f);
        __m512 r0 = _mm512_scalef_ps(x0, sc), r1 = _mm512_scalef_ps(x1, sc);
        for (int l = 0; l < 3; l++) {
            __m512 a0 = _mm512_roundscale_ps(r0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m512 a1 = _mm512_roundscale_ps(r1, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            int8_t *dst = B->a[l] + 32 * slot[j];
            _mm_storeu_si128((__m128i *)dst, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(a0)));
            _mm_storeu_si128((__m128i *)(dst + 16), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(a1)));
            r0 = _mm512_mul_ps(_mm512_sub_ps(r0, a0), c128);
            r1 = _mm512_mul_ps(_mm512_sub_ps(r1, a1), c128);
        }
    }
}

void qlimb_prep(st_dtype d, const float *x, int n, void *xp)
{
    qlimb_blk *B = xp;
    const int *slot = slots(d);
    int avx = cpu_ok() && forced != 2;
    for (int b = 0; b < n / QK_K; b++) {
        if (avx) prep_avx512(x + (size_t)b * QK_K, B + b, slot);
        else prep_scalar(x + (size_t)b * QK_K, B + b, slot);
    }
}

/* ---- the product ---- */

static void scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* q of weight i (0..255) of a K-quant block b */
static int block_q(st_dtype d, const uint8_t *b, int i)
{
    if (d == ST_Q6_K) {         /* ql[128], qh[64], scales[16], d */
        int n = i / 128, g = i % 128 / 32, l = i % 32;
        const uint8_t *ql = b + 64 * n, *qh = b + 128 + 32 * n;
        int lo = g & 1 ? ql[l + 32] : ql[l], hi = qh[l] >> 2 * g & 3;
        return (g < 2 ? lo & 0xF : lo >> 4) | hi << 4;
    }
    int j = i / 32, l = i % 32, c = j / 2;
    const uint8_t *qs = b + (d == ST_Q5_K ? 48 : 16) + 32 * c;
    int q = j & 1 ? qs[l] >> 4 : qs[l] & 0xF;
    if (d == ST_Q5_K) q |= (b[16 + l] >> j & 1) << 4;
    return q;
}

double qlimb_ref(st_dtype d, const void *row, const void *xp, int n)
{
    const uint8_t *b = row;
    const qlimb_blk *B = xp;
    const int *slot = slots(d);
    size_t bb = quant_row_bytes(d, QK_K);
    double acc = 0;
    for (int k = 0; k < n / QK_K; k++, b += bb, B++) {
        for (int m = 0; m < 16; m++) {          /* sub-blocks of 16 */
            int j = m / 2;
            long long t = 0;
            for (int i = 16 * m; i < 16 * m + 16; i++) {
                int o = 32 * slot[j] + i % 32;
                t += (long long)block_q(d, b, i) * (B->a[0][o] * 16384 + B->a[1][o] * 128 + B->a[2][o]);
            }
            if (d == ST_Q6_K) {
                float S = f16_to_f32((uint16_t)(b[208] | b[209] << 8)) * (float)(int8_t)b[192 + m];
                acc += (double)S * B->s[j] * (double)t - 32.0 * S * B->bs16[m];
            } else {
                int sc, mn;
                scale_min(b + 4, j, &sc, &mn);
                float S = f16_to_f32((uint16_t)(b[0] | b[1] << 8)) * (float)sc;
                float M = f16_to_f32((uint16_t)(b[2] | b[3] << 8)) * (float)mn;
                acc += (double)S * B->s[j] * (double)t - (double)M * B->bs16[m];
            }
        }
    }
    return acc;
}

/* the three limbs of one 64-weight group against its q (unsigned bytes): t = ((q.a1 << 7)
 * + q.a2 << 7) + q.a3 per dword lane (4 weights) */
Z512I __m512i limbs3(__m512i q, __m512i A0, __m512i A1, __m512i A2)
{
    __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, A0);
    t = _mm512_dpbusd_epi32(_mm512_slli_epi32(t, 7), q, A1);
    return _mm512_dpbusd_epi32(_mm512_slli_epi32(t, 7), q, A2);
}

/* Q5_K's fifth bits for group z of half h: bit 2c of qh[l] for the low nibbles of qs[32c + l]
 * (2c+1 for the high ones), c = 2h (bytes 0-31 of the group) and 2h+1 (bytes 32-63),
 * moved to bit 4 by 16-bit shifts (left or right per case; no bit crosses into the next
 * byte's bit 4) */
Z512I __m512i k5_bits(__m512i qh2, int h, int hi)
{
    const __m512i m = _mm512_set1_epi8(0x10);
    const int s0 = 4 * h - 4 + hi, s1 = 4 * h - 2 + hi;     /* right shifts; negative: left */
    __m512i c = _mm512_inserti64x4(_mm512_set1_epi16((short)(s0 < 0 ? -s0 : s0)), _mm256_set1_epi16((short)(s1 < 0 ? -s1 : s1)), 1);
    return _mm512_and_si512(s0 < 0 ? _mm512_sllv_epi16(qh2, c) : _mm512_srlv_epi16(qh2, c), m);
}

/* Q4_K and Q5_K (q5), QLIMB_ROWS rows (a short tail repeats its last row; only nrows
 * results are written). Per block: the row pairs' scales times the activations' 2^(k-14)
 * in one register per pair, the mins into a float accumulator; per 64 weights of a row
 * one load (the nibbles of two groups), the three limbs (limbs3), one convert and one FMA
 * with the lanes' scales (a permute of the pair register). */
Z512I void rows_k45(const void *row, size_t rb, int nrows, const void *xp, int n, float *out, int q5)
{
    const size_t bb = q5 ? Q5_K_BYTES : Q4_K_BYTES;
    const int qoff = q5 ? 48 : 16;
    const uint8_t *base[QLIMB_ROWS];
    UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++) base[r] = (const uint8_t *)row + (size_t)(r < nrows ? r : nrows - 1) * rb;
    const qlimb_blk *B = xp;
    const __m512i m4 = _mm512_set1_epi8(0xF);
    /* lanes 0-7 / 8-15 of group z take the scale of slots 2z, 2z+1: sub-blocks 0,2 | 1,3 | 4,6 | 5,7;
     * row b of a pair reads lanes 8-15 of the pair register */
    const __m512i ia[4] = {_mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0),
                           _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
                           _mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4),
                           _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 5, 5, 5, 5, 5, 5, 5, 5)};
    const __m512i eight = _mm512_set1_epi32(8);
    __m512 facc[QLIMB_ROWS], macc[QLIMB_ROWS / 2];
    UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++) facc[r] = _mm512_setzero_ps();
    UNROLL(8) for (int r = 0; r < QLIMB_ROWS / 2; r++) macc[r] = _mm512_setzero_ps();
    for (int k = 0; k < n / QK_K; k++, B++) {
        size_t off = (size_t)k * bb;
        UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++)
            UNROLL(8) for (int o = 0; o < (int)bb; o += 64) _mm_prefetch((const char *)(base[r] + QLIMB_ROWS * rb + off + o), _MM_HINT_T0);
        __m512 xs = _mm512_broadcast_f32x8(_mm256_loadu_ps(B->s)), xb = _mm512_broadcast_f32x8(_mm256_loadu_ps(B->bs));
        __m512 SV[QLIMB_ROWS / 2];
        UNROLL(8) for (int r = 0; r < QLIMB_ROWS / 2; r++) {
            __m512 S, M;                        /* M = -(dmin m) */
            k45_pair_scales(base[2 * r] + off, base[2 * r + 1] + off, &S, &M);
            SV[r] = _mm512_mul_ps(S, xs);
            macc[r] = _mm512_fmadd_ps(M, xb, macc[r]);
        }
        UNROLL(8) for (int h = 0; h < 2; h++) {
            __m512i q[QLIMB_ROWS], qh[QLIMB_ROWS];
            UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++) {
                q[r] = _mm512_loadu_si512(base[r] + off + qoff + 64 * h);
                if (q5) qh[r] = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(base[r] + off + 16)));
            }
            UNROLL(8) for (int z = 2 * h; z < 2 * h + 2; z++) {
                __m512i A0 = _mm512_loadu_si512(B->a[0] + 64 * z), A1 = _mm512_loadu_si512(B->a[1] + 64 * z);
                __m512i A2 = _mm512_loadu_si512(B->a[2] + 64 * z);
                __m512i ib = _mm512_add_epi32(ia[z], eight);
                UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++) {
                    __m512i nz = z & 1 ? _mm512_and_si512(_mm512_srli_epi16(q[r], 4), m4) : _mm512_and_si512(q[r], m4);
                    if (q5) nz = _mm512_or_si512(nz, k5_bits(qh[r], h, z & 1));
                    __m512i t = limbs3(nz, A0, A1, A2);
                    __m512 sv = _mm512_permutexvar_ps(r & 1 ? ib : ia[z], SV[r / 2]);
                    facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sv, facc[r]);
                }
            }
        }
    }
    for (int r = 0; r < nrows; r++) {
        float f[16], m[16];
        _mm512_storeu_ps(f, facc[r]);
        _mm512_storeu_ps(m, macc[r / 2]);
        const float *mh = m + 8 * (r & 1);
        float fs = sum16(f), ms = ((mh[0] + mh[1]) + (mh[2] + mh[3])) + ((mh[4] + mh[5]) + (mh[6] + mh[7]));
        out[r] = fs + ms;
    }
}

Z512 static void rows_q4_k(const void *row, size_t rb, int nrows, const void *xp, int n, float *out)
{
    rows_k45(row, rb, nrows, xp, n, out, 0);
}

Z512 static void rows_q5_k(const void *row, size_t rb, int nrows, const void *xp, int n, float *out)
{
    rows_k45(row, rb, nrows, xp, n, out, 1);
}

/* Q6_K: ql[128], qh[64], int8 scales[16], d. Half n of a block (128 weights) is 64 bytes
 * of ql and 32 of qh: group 2n takes the low nibbles (weights 128n + 0..63) and qh bits
 * 0-1 (bytes 0-31 of the group) or 2-3 (bytes 32-63); group 2n+1 the high nibbles
 * (weights 128n + 64..127) and bits 4-5 or 6-7. Lane L of group z (4 weights) belongs to
 * the sub-block of 16 number 4z + L/4, natural order. The -32 of every q goes into the
 * mins: - 32 d sc bs16 per sub-block. */
Z512 static void rows_q6_k(const void *row, size_t rb, int nrows, const void *xp, int n, float *out)
{
    const uint8_t *base[QLIMB_ROWS];
    UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++) base[r] = (const uint8_t *)row + (size_t)(r < nrows ? r : nrows - 1) * rb;
    const qlimb_blk *B = xp;
    const __m512i m4 = _mm512_set1_epi8(0xF), m30 = _mm512_set1_epi8(0x30);
    /* qh bits to bits 4-5: group 2n: bytes 0-31 << 4, bytes 32-63 << 2; group 2n+1: >> 0, >> 2 */
    const __m512i clo = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i chi = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i xsi = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    __m512 facc[QLIMB_ROWS], macc[QLIMB_ROWS];
    UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++) facc[r] = _mm512_setzero_ps(), macc[r] = _mm512_setzero_ps();
    for (int k = 0; k < n / QK_K; k++, B++) {
        size_t off = (size_t)k * Q6_K_BYTES;
        UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++)
            UNROLL(8) for (int o = 0; o < Q6_K_BYTES; o += 64) _mm_prefetch((const char *)(base[r] + QLIMB_ROWS * rb + off + o), _MM_HINT_T0);
        /* the activations' 2^(k-14) per sub-block of 16 (that of its 32), and the sums of 16 */
        __m512 xs = _mm512_permutexvar_ps(xsi, _mm512_castps256_ps512(_mm256_loadu_ps(B->s)));
        __m512 xb = _mm512_loadu_ps(B->bs16);
        __m512 SV[QLIMB_ROWS];
        UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++) {
            const uint8_t *b = base[r] + off;
            __m512 d = _mm512_set1_ps(f16_to_f32z((uint16_t)(b[208] | b[209] << 8)));
            __m512 S = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 192)))));
            SV[r] = _mm512_mul_ps(S, xs);
            macc[r] = _mm512_fmadd_ps(S, xb, macc[r]);
        }
        UNROLL(8) for (int h = 0; h < 2; h++) {
            __m512i ql[QLIMB_ROWS], qh[QLIMB_ROWS];
            UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++) {
                ql[r] = _mm512_loadu_si512(base[r] + off + 64 * h);
                qh[r] = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(base[r] + off + 128 + 32 * h)));
            }
            UNROLL(8) for (int g = 0; g < 2; g++) {
                int z = 2 * h + g;
                __m512i A0 = _mm512_loadu_si512(B->a[0] + 64 * z), A1 = _mm512_loadu_si512(B->a[1] + 64 * z);
                __m512i A2 = _mm512_loadu_si512(B->a[2] + 64 * z);
                __m512i iz = _mm512_add_epi32(_mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 2),
                                              _mm512_set1_epi32(4 * z));
                UNROLL(8) for (int r = 0; r < QLIMB_ROWS; r++) {
                    __m512i lo = g ? _mm512_srli_epi16(ql[r], 4) : ql[r];
                    __m512i hb = g ? _mm512_srlv_epi16(qh[r], chi) : _mm512_sllv_epi16(qh[r], clo);
                    /* (lo & 0x0F) | (hb & 0x30) */
                    __m512i q = _mm512_ternarylogic_epi32(_mm512_and_si512(lo, m4), hb, m30, 0xF8);
                    __m512i t = limbs3(q, A0, A1, A2);
                    facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(iz, SV[r]), facc[r]);
                }
            }
        }
    }
    for (int r = 0; r < nrows; r++) {
        float f[16], m[16];
        _mm512_storeu_ps(f, facc[r]);
        _mm512_storeu_ps(m, macc[r]);
        out[r] = sum16(f) - 32.0f * sum16(m);
    }
}

void qlimb_rows(st_dtype d, const void *row, size_t row_bytes, int nrows, const void *xp, int n, float *out)
{
    if (d == ST_Q6_K) rows_q6_k(row, row_bytes, nrows, xp, n, out);
    else if (d == ST_Q5_K) rows_q5_k(row, row_bytes, nrows, xp, n, out);
    else rows_q4_k(row, row_bytes, nrows, xp, n, out);
}
