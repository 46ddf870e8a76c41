#!/usr/bin/env python3
"""kernel_model.py: a CPU model of the opt-in kernels' lane arithmetic (kernels/fa2_prefill.cu,
kernels/fast_decode.cu), run where no GPU is, against naive float64 references (attention,
the matrix-vector product with its norm and epilogues).

It is NOT the CUDA code: it transcribes each kernel's per-lane index formulas (ldmatrix
addresses, fragment registers, shuffles, masks, the online softmax) statement by statement
and executes them for every lane, with ldmatrix and mma.sync m16n8k16 emulated from their
PTX ISA definitions (fragment layouts of .f16 A/B and .f32 C/D). What it catches: a wrong
fragment layout, address, mask or merge; what it cannot: a transcription that differs from
the .cu, races, timing. The GPU check (tests/gpu/check.sh) is the real test.

usage: kernel_model.py [--quick]    exit 1 on a mismatch"""
import math, random, struct, sys

INF = float("inf")


def f16(x):
    """round to fp16 (saturating like kv_cvt_nan for finite x)"""
    x = max(-65504.0, min(65504.0, x))
    return struct.unpack("<e", struct.pack("<e", x))[0]


# ---- PTX fragment layouts (m16n8k16, .f16 A/B, .f32 C/D); g = lane >> 2, t = lane & 3 ----

def a_to_matrix(regs):
    """regs[lane] = 4 pairs -> A[16][16]: reg0 (g, 2t..), reg1 (g+8, 2t..), reg2 (g, 2t+8..),
    reg3 (g+8, 2t+8..)"""
    A = [[None] * 16 for _ in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for r, (row, col) in enumerate(((g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8))):
            A[row][col], A[row][col + 1] = regs[lane][r]
    return A


def b_to_matrix(b0, b1):
    """b0[lane], b1[lane] pairs -> B[16][8] (k x n): b0 = (k 2t, 2t+1; n g), b1 = k + 8"""
    B = [[None] * 8 for _ in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        B[2 * t][g], B[2 * t + 1][g] = b0[lane]
        B[2 * t + 8][g], B[2 * t + 9][g] = b1[lane]
    return B


def mma(c, a_regs, b0, b1):
    """c[lane] = 4 floats: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1); returns the new c"""
    A, B = a_to_matrix(a_regs), b_to_matrix(b0, b1)
    out = []
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        v = []
        for row, col in ((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)):
            v.append(c[lane][len(v)] + sum(A[row][k] * B[k][col] for k in range(16)))
        out.append(v)
    return out


def ldmatrix_x4(smem, addr, trans=False):
    """addr[lane] = (row, col) of the 8 halves lane supplies (lanes 8m..8m+7: matrix m's rows).
    Returns regs[m][lane] = pair: non-trans M_m[g][2t], M_m[g][2t+1]; trans M_m[2t][g], M_m[2t+1][g]."""
    out = []
    for m in range(4):
        M = [[smem[addr[8 * m + r][0]][addr[8 * m + r][1] + c] for c in range(8)] for r in range(8)]
        regs = []
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            regs.append((M[2 * t][g], M[2 * t + 1][g]) if trans else (M[g][2 * t], M[g][2 * t + 1]))
        out.append(regs)
    return out


def quad_xor(vals, op):
    """value after x = op(x, shfl_xor(x, 1)); x = op(x, shfl_xor(x, 2))"""
    v = [op(vals[l], vals[l ^ 1]) for l in range(32)]
    return [op(v[l], v[l ^ 2]) for l in range(32)]


# ---- fa2_kernel<D>, one block (4 warps), transcribed ----

def fa2_block(D, q, K, V, n, pos0, window, mblock):
    """q[row][d] for rows of the chunk (fp16 values), K/V[key][d]; returns {row: out[d]}"""
    BM = BN = 64
    m0 = mblock * BM
    q_first = pos0 + m0
    kv_end = pos0 + min(m0 + BM, n)
    kv_begin = max(0, q_first - window + 1) if window > 0 else 0
    ntiles = (kv_end - kv_begin + BN - 1) // BN
    KT, NT = D // 16, D // 8
    sQ = [[(q[m0 + r][c] if m0 + r < n else 0.0) for c in range(D)] for r in range(BM)]
    scale_log2 = 1.4426950408889634 / math.sqrt(D)
    result = {}
    for warp in range(4):
        o = [[[0.0] * 4 for _ in range(32)] for _ in range(NT)]
        m_r = [[-INF, -INF] for _ in range(32)]
        l_r = [[0.0, 0.0] for _ in range(32)]
        qr = [[pos0 + m0 + warp * 16 + (l >> 2), pos0 + m0 + warp * 16 + (l >> 2) + 8] for l in range(32)]
        qf = []
        for kk in range(KT):
            addr = [(warp * 16 + ((l >> 3) & 1) * 8 + (l & 7), kk * 16 + (l >> 4) * 8) for l in range(32)]
            regs = ldmatrix_x4(sQ, addr)
            qf.append([[regs[0][l], regs[1][l], regs[2][l], regs[3][l]] for l in range(32)])
        for it in range(ntiles):
            k0 = kv_begin + it * BN
            cK = [[(K[k0 + r][c] if k0 + r < kv_end else 0.0) for c in range(D)] for r in range(BN)]
            cV = [[(V[k0 + r][c] if k0 + r < kv_end else 0.0) for c in range(D)] for r in range(BN)]
            s = [[[0.0] * 4 for _ in range(32)] for _ in range(8)]
            for kk in range(KT):
                for jp in range(4):
                    addr = [(16 * jp + (l >> 4) * 8 + (l & 7), kk * 16 + ((l >> 3) & 1) * 8) for l in range(32)]
                    b = ldmatrix_x4(cK, addr)
                    s[2 * jp] = mma(s[2 * jp], qf[kk], b[0], b[1])
                    s[2 * jp + 1] = mma(s[2 * jp + 1], qf[kk], b[2], b[3])
            mx = [[-INF, -INF] for _ in range(32)]
            for l in range(32):
                t4 = l & 3
                for j in range(8):
                    for e in range(4):
                        kp, r = k0 + 8 * j + 2 * t4 + (e & 1), e >> 1
                        ok = kp < kv_end and kp <= qr[l][r] and (window <= 0 or kp > qr[l][r] - window)
                        s[j][l][e] = s[j][l][e] * scale_log2 if ok else -INF
                        mx[l][r] = max(mx[l][r], s[j][l][e])
            mu = [[0.0, 0.0] for _ in range(32)]
            alpha = [[0.0, 0.0] for _ in range(32)]
            for r in range(2):
                red = quad_xor([mx[l][r] for l in range(32)], max)
                for l in range(32):
                    m_new = max(m_r[l][r], red[l])
                    mu[l][r] = 0.0 if m_new == -INF else m_new
                    alpha[l][r] = 2.0 ** (m_r[l][r] - mu[l][r]) if m_r[l][r] != -INF else 0.0
                    m_r[l][r] = m_new
            for l in range(32):
                sm = [0.0, 0.0]
                for j in range(8):
                    for e in range(4):
                        v = s[j][l][e]
                        s[j][l][e] = 0.0 if v == -INF else 2.0 ** (v - mu[l][e >> 1])
                        sm[e >> 1] += s[j][l][e]
                for r in range(2):
                    l_r[l][r] = l_r[l][r] * alpha[l][r] + sm[r]
                for d in range(NT):
                    o[d][l] = [o[d][l][0] * alpha[l][0], o[d][l][1] * alpha[l][0],
                               o[d][l][2] * alpha[l][1], o[d][l][3] * alpha[l][1]]
            for kk in range(4):
                a = [[(f16(s[2 * kk][l][0]), f16(s[2 * kk][l][1])), (f16(s[2 * kk][l][2]), f16(s[2 * kk][l][3])),
                      (f16(s[2 * kk + 1][l][0]), f16(s[2 * kk + 1][l][1])),
                      (f16(s[2 * kk + 1][l][2]), f16(s[2 * kk + 1][l][3]))] for l in range(32)]
                for dp in range(NT // 2):
                    addr = [(16 * kk + ((l >> 3) & 1) * 8 + (l & 7), 8 * (2 * dp + (l >> 4))) for l in range(32)]
                    b = ldmatrix_x4(cV, addr, trans=True)
                    o[2 * dp] = mma(o[2 * dp], a, b[0], b[1])
                    o[2 * dp + 1] = mma(o[2 * dp + 1], a, b[2], b[3])
        for r in range(2):
            red = quad_xor([l_r[l][r] for l in range(32)], lambda x, y: x + y)
            for l in range(32):
                row = m0 + warp * 16 + (l >> 2) + 8 * r
                if row >= n:
                    continue
                inv = 1.0 / red[l] if red[l] > 0 else 0.0
                out = result.setdefault(row, [None] * D)
                for d in range(NT):
                    col = 8 * d + 2 * (l & 3)
                    out[col] = o[d][l][2 * r] * inv
                    out[col + 1] = o[d][l][2 * r + 1] * inv
    return result


def naive(q, K, V, pos, window, D):
    first = max(0, pos - window + 1) if window > 0 else 0
    sc = [sum(q[d] * K[j][d] for d in range(D)) / math.sqrt(D) for j in range(first, pos + 1)]
    m = max(sc)
    p = [math.exp(x - m) for x in sc]
    L = sum(p)
    return [sum(p[i] * V[first + i][d] for i in range(len(p))) / L for d in range(D)]


def rel(a, b):
    num = sum((x - y) ** 2 for x, y in zip(a, b))
    den = sum(y * y for y in b)
    return math.sqrt(num / den) if den else math.sqrt(num)


def check_fa2(D, n, pos0, window, seed):
    g = random.Random(seed)
    total = pos0 + n
    K = [[f16(g.gauss(0, 1)) for _ in range(D)] for _ in range(total)]
    V = [[f16(g.gauss(0, 1)) for _ in range(D)] for _ in range(total)]
    q = [[f16(g.gauss(0, 1)) for _ in range(D)] for _ in range(n)]
    worst = 0.0
    rows_seen = 0
    for mb in range((n + 63) // 64):
        res = fa2_block(D, q, K, V, n, pos0, window, mb)
        for row, got in res.items():
            assert None not in got, "output column not written: row %d" % row
            worst = max(worst, rel(got, naive(q[row], K, V, pos0 + row, window, D)))
            rows_seen += 1
    assert rows_seen == n, (rows_seen, n)
    return worst


# ---- attn_fast_kernel<D> (split-KV decode) + attn_fast_merge, transcribed ----

def decode_attn(D, q, K, V, qpos, window, nsplit):
    THREADS, WARPS, KW, KB = 128, 4, 8, 32
    T = D // 32
    scale = 1.0 / math.sqrt(D)
    first = max(0, qpos - window + 1) if window > 0 else 0
    length = qpos + 1 - first
    chunk = (length + nsplit - 1) // nsplit
    chunk = (chunk + KB - 1) // KB * KB
    parts = []
    for split in range(nsplit):
        k0 = first + split * chunk
        k1 = min(k0 + chunk, qpos + 1)
        s_m, s_l, s_acc = [], [], []
        for warp in range(WARPS):
            qr = [[[q[(( l & 3) + 4 * t) * 8 + e] * scale for e in range(8)] for t in range(T)] for l in range(32)]
            acc = [[[0.0] * 8 for _ in range(T)] for _ in range(32)]
            m = [-INF] * 32
            lsum = [0.0] * 32
            jb = k0 + warp * KW
            while jb < k1:
                dots = []
                for l in range(32):
                    j = jb + (l >> 2)
                    ok = j < k1
                    row = j if ok else k0
                    d = 0.0
                    for t in range(T):
                        for e in range(8):
                            d += qr[l][t][e] * K[row][((l & 3) + 4 * t) * 8 + e]
                    dots.append((d, ok, row))
                d1 = [dots[l][0] + dots[l ^ 1][0] for l in range(32)]
                d2 = [d1[l] + d1[l ^ 2] for l in range(32)]
                for l in range(32):
                    sc = d2[l] if dots[l][1] else -INF
                    m_new = max(m[l], sc)
                    corr = 1.0 if m_new == -INF else (0.0 if m[l] == -INF else math.exp(m[l] - m_new))
                    p = 0.0 if sc == -INF else math.exp(sc - m_new)
                    lsum[l] = lsum[l] * corr + p
                    row = dots[l][2]
                    for t in range(T):
                        for e in range(8):
                            acc[l][t][e] = p * V[row][((l & 3) + 4 * t) * 8 + e] + acc[l][t][e] * corr
                    m[l] = m_new
                jb += KB
            M = list(m)
            for off in (4, 8, 16):
                M = [max(M[l], M[l ^ off]) for l in range(32)]
            f = [0.0 if m[l] == -INF else math.exp(m[l] - M[l]) for l in range(32)]
            lw = [lsum[l] * f[l] for l in range(32)]
            for off in (4, 8, 16):
                lw = [lw[l] + lw[l ^ off] for l in range(32)]
            accw = [[[acc[l][t][e] * f[l] for e in range(8)] for t in range(T)] for l in range(32)]
            for off in (4, 8, 16):
                accw = [[[accw[l][t][e] + accw[l ^ off][t][e] for e in range(8)] for t in range(T)]
                        for l in range(32)]
            s_m.append(M[0])
            s_l.append(lw[0])
            row_acc = [None] * D
            for l in range(32):
                if (l >> 2) == 0:
                    for t in range(T):
                        for e in range(8):
                            row_acc[((l & 3) + 4 * t) * 8 + e] = accw[l][t][e]
            assert None not in row_acc
            s_acc.append(row_acc)
        MB = max(s_m)
        fw = [0.0 if s_m[w] == -INF else math.exp(s_m[w] - MB) for w in range(WARPS)]
        L = sum(s_l[w] * fw[w] for w in range(WARPS))
        parts.append((MB, L, [sum(s_acc[w][d] * fw[w] for w in range(WARPS)) for d in range(D)]))
    M = max(p[0] for p in parts)
    L = sum(p[1] * math.exp(p[0] - M) for p in parts if p[0] != -INF)
    return [sum(p[2][d] * math.exp(p[0] - M) for p in parts if p[0] != -INF) / L for d in range(D)]


def check_decode(D, qpos, window, nsplit, seed):
    g = random.Random(seed)
    K = [[f16(g.gauss(0, 1)) for _ in range(D)] for _ in range(qpos + 1)]
    V = [[f16(g.gauss(0, 1)) for _ in range(D)] for _ in range(qpos + 1)]
    q = [g.gauss(0, 1) for _ in range(D)]
    return rel(decode_attn(D, q, K, V, qpos, window, nsplit), naive(q, K, V, qpos, window, D))


# ---- gemv_kernel<EPI> (fast_decode.cu), transcribed: bf16 bit unpacking, row pairs, epilogues ----

def u32_float(u):
    return struct.unpack("<f", struct.pack("<I", u & 0xffffffff))[0]


def bf16_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16          # truncation is fine here


def dot8(u, a, b):
    """u: 4 uint32 words of 8 bf16 (element 0 in the low half of u[0]); a, b: 4 floats each"""
    return (u32_float(u[0] << 16) * a[0] + u32_float(u[0] & 0xffff0000) * a[1] +
            u32_float(u[1] << 16) * a[2] + u32_float(u[1] & 0xffff0000) * a[3] +
            u32_float(u[2] << 16) * b[0] + u32_float(u[2] & 0xffff0000) * b[1] +
            u32_float(u[3] << 16) * b[2] + u32_float(u[3] & 0xffff0000) * b[3])


def gemv_model(Wb, N, K, x, nw, eps, epi, y):
    """Wb[r][k]: bf16 bit patterns; y is updated as the kernel would (STORE/ADD/SWIGLU)"""
    sx = list(x)
    if nw is not None:
        r = 1.0 / math.sqrt(sum(v * v for v in x) / K + eps)
        sx = [nw[i] * (sx[i] * r) for i in range(K)]
    NL = N // 2 if epi == "swiglu" else (N + 1) // 2
    for lr in range(NL):
        r0, r1 = (lr, lr + N // 2) if epi == "swiglu" else (2 * lr, min(2 * lr + 1, N - 1))
        lanes0, lanes1 = [0.0] * 32, [0.0] * 32
        for lane in range(32):
            for j in range(lane, K // 8, 32):
                w0 = [Wb[r0][8 * j + 2 * k] | Wb[r0][8 * j + 2 * k + 1] << 16 for k in range(4)]
                w1 = [Wb[r1][8 * j + 2 * k] | Wb[r1][8 * j + 2 * k + 1] << 16 for k in range(4)]
                xa, xb = sx[8 * j:8 * j + 4], sx[8 * j + 4:8 * j + 8]
                lanes0[lane] += dot8(w0, xa, xb)
                lanes1[lane] += dot8(w1, xa, xb)
        for off in (16, 8, 4, 2, 1):
            lanes0 = [lanes0[l] + lanes0[l ^ off] for l in range(32)]
            lanes1 = [lanes1[l] + lanes1[l ^ off] for l in range(32)]
        a0, a1 = lanes0[0], lanes1[0]
        if epi == "swiglu":
            y[lr] = a1 * (a0 / (1.0 + math.exp(-a0)))
        elif epi == "add":
            y[r0] += a0
            if r1 != r0:
                y[r1] += a1
        else:
            y[r0] = a0
            if r1 != r0:
                y[r1] = a1


def check_gemv(N, K, epi, use_norm, seed):
    g = random.Random(seed)
    Wf = [[g.gauss(0, 0.05) for _ in range(K)] for _ in range(N)]
    Wb = [[bf16_bits(v) for v in row] for row in Wf]
    W = [[u32_float(b << 16) for b in row] for row in Wb]        # the bf16 values themselves
    x = [g.gauss(0, 1) for _ in range(K)]
    nw = [1.0 + 0.1 * g.gauss(0, 1) for _ in range(K)] if use_norm else None
    y0 = [g.gauss(0, 1) for _ in range(N)]
    got = list(y0)
    gemv_model(Wb, N, K, x, nw, 1e-5, epi, got)
    inp = x
    if use_norm:
        r = 1.0 / math.sqrt(sum(v * v for v in x) / K + 1e-5)
        inp = [nw[i] * x[i] * r for i in range(K)]
    dots = [sum(W[i][k] * inp[k] for k in range(K)) for i in range(N)]
    if epi == "swiglu":
        want = list(y0)
        for j in range(N // 2):
            gg, u = dots[j], dots[N // 2 + j]
            want[j] = u * gg / (1.0 + math.exp(-gg))
    elif epi == "add":
        want = [y0[i] + dots[i] for i in range(N)]
    else:
        want = dots
    return rel(got, want)


def main():
    quick = "--quick" in sys.argv
    bad = 0
    cases = [(32, 70, 0, 0), (64, 64, 0, 0), (96, 40, 30, 0), (32, 100, 5, 16), (64, 65, 130, 50)]
    if not quick:
        cases += [(96, 130, 0, 0), (128, 64, 64, 0), (96, 64, 200, 100)]
    for D, n, pos0, window in cases:
        w = check_fa2(D, n, pos0, window, seed=D * 1000 + n)
        ok = w < 2e-3                       # fp16 P against float64
        bad += not ok
        print("%s fa2 D=%d n=%d pos0=%d window=%d: max rel %.2e" % ("PASS" if ok else "FAIL", D, n, pos0, window, w))
    dcases = [(32, 0, 0, 17), (64, 40, 0, 17), (96, 300, 0, 17), (128, 77, 0, 3), (96, 500, 64, 17),
              (32, 1000, 0, 1)]
    for D, qpos, window, nsplit in dcases:
        w = check_decode(D, qpos, window, nsplit, seed=D + qpos)
        ok = w < 1e-9                       # float32-exact algorithm in float64 here
        bad += not ok
        print("%s decode D=%d pos=%d window=%d nsplit=%d: rel %.2e" % ("PASS" if ok else "FAIL", D, qpos, window, nsplit, w))
    for N, K, epi, norm in ((37, 264, "store", True), (24, 256, "add", False), (20, 520, "swiglu", True),
                            (9, 8, "store", False)):
        w = check_gemv(N, K, epi, norm, seed=N * K)
        ok = w < 1e-12
        bad += not ok
        print("%s gemv N=%d K=%d %s%s: rel %.2e" % ("PASS" if ok else "FAIL", N, K, epi, " +norm" if norm else "", w))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
