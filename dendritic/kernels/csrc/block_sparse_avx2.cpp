// AVX2 + FMA fp32 block-sparse attention forward: the AVX-512 kernel (block_sparse_avx512.cpp) with 8-wide vectors,
// for the many x86-64 CPUs without AVX-512 (where the portable path would fall back to SSE2).  Blocks under 8 tokens
// go by groups of 8 / block_size query blocks (run_group_task, below), as the AVX-512 path groups blocks under 16.
//
// Every function here carries DENDRITIC_AVX2 (a per-function target attribute), so this TU is built with the same
// flags as the rest of the extension and the binary still loads on older CPUs; the dispatcher in
// block_sparse_cpu.cpp calls in only after __builtin_cpu_supports("avx2") and ("fma").  Only intrinsics and plain
// C are used (no STL), and everything but the entry points declared in block_sparse_cpu.h has internal linkage.
//
// Layout of one query chunk (M = 8*MV query rows), all tiles L1-sized:
//   Qt[d][M]   query chunk, transposed and pre-multiplied by the softmax scale
//   S[KC][M]   score / probability tile, KEY-major: row j is one vector per 8 query rows, so the running max,
//              exp and row sums are plain vector ops with no horizontal reduction
//   Ot[d][M]   un-normalised output, transposed; rescaled by alpha = exp(m_old - m_new) per chunk
//   m[M], l[M] running max and running sum (online softmax)
// K and V are read in place from the input tensors (no gather); a key tile of KJ rows clamps its row pointers to
// the chunk and masks the surplus rows to -inf.
#include "block_sparse_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define DENDRITIC_AVX2 __attribute__((target("avx2,fma"), always_inline)) inline

namespace dendritic {
namespace {

constexpr int KC = 32;  // keys per score tile
// AVX2 has 16 vector registers (AVX-512: 32): the register tiles are smaller than the AVX-512 kernel's so that the
// accumulators, the query / probability vectors and the broadcast fit without spilling (KJ·MV + MV + 1 <= 16 and
// DD·MV + MV + 1 <= 16 for MV <= 2 query vectors of 8 rows).
constexpr int KJ = 6;   // keys per Q.K^T register tile
constexpr int DD = 6;   // head dims per P.V register tile

// e^x for x <= 88; exactly 0 for x < -87.3 (below FLT_MIN, and for -inf / NaN from masked entries).
// Cody-Waite range reduction x = k ln2 + r (|r| <= ln2/2), degree-7 Taylor series of e^r (relative error < 6e-9),
// then 2^k built in the exponent bits (k lies in [-126, 128) for the live inputs).
DENDRITIC_AVX2 __m256 exp_ps(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ);
  const __m256 xs = _mm256_blendv_ps(_mm256_set1_ps(-87.3f), x, live);  // keep k in range for the dead lanes
  const __m256 kf = _mm256_round_ps(_mm256_mul_ps(xs, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(0.693359375f), xs);  // ln2 split into an exact high part ...
  r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(-2.12194440e-4f), r);       // ... and the rest
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(kf), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}

// S[0:KJ rows] = Qt^T K for KJ keys starting at key j0 of the chunk; masks keys >= kc and padded keys; folds the
// tile max into mt.
template <int MV>
DENDRITIC_AVX2 void qk_tile(const float* __restrict Qt, const float* __restrict Kc, int64_t d, int j0, int kc,
                              const uint8_t* valid, float* __restrict S, __m256* mt) {
  constexpr int M = 8 * MV;
  const float* kp[KJ];
  for (int u = 0; u < KJ; ++u) kp[u] = Kc + (int64_t)(j0 + u < kc ? j0 + u : kc - 1) * d;
  __m256 acc[KJ][MV];
  for (int u = 0; u < KJ; ++u)
    for (int w = 0; w < MV; ++w) acc[u][w] = _mm256_setzero_ps();
  for (int64_t e = 0; e < d; ++e) {
    __m256 qv[MV];
    for (int w = 0; w < MV; ++w) qv[w] = _mm256_load_ps(Qt + e * M + 8 * w);
    for (int u = 0; u < KJ; ++u) {
      const __m256 kb = _mm256_set1_ps(kp[u][e]);
      for (int w = 0; w < MV; ++w) acc[u][w] = _mm256_fmadd_ps(kb, qv[w], acc[u][w]);
    }
  }
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff());
  for (int u = 0; u < KJ; ++u) {
    const int j = j0 + u;
    const bool dead = j >= kc || (valid != nullptr && !valid[j]);
    for (int w = 0; w < MV; ++w) {
      const __m256 s = dead ? ninf : acc[u][w];
      mt[w] = _mm256_max_ps(mt[w], s);
      _mm256_store_ps(S + (int64_t)j * M + 8 * w, s);
    }
  }
}

// Ot[e0:e0+T] = Ot[e0:e0+T] * alpha + V[:, e0:e0+T]^T P   (P = S after exp), for one query chunk.
template <int MV, int T>
DENDRITIC_AVX2 void pv_tile(const float* __restrict S, const float* __restrict Vc, int64_t d, int64_t e0, int kc,
                              const __m256* alpha, float* __restrict Ot) {
  constexpr int M = 8 * MV;
  __m256 acc[T][MV];
  for (int t = 0; t < T; ++t)
    for (int w = 0; w < MV; ++w) acc[t][w] = _mm256_mul_ps(_mm256_load_ps(Ot + (e0 + t) * M + 8 * w), alpha[w]);
  for (int j = 0; j < kc; ++j) {
    __m256 pv[MV];
    for (int w = 0; w < MV; ++w) pv[w] = _mm256_load_ps(S + (int64_t)j * M + 8 * w);
    const float* vr = Vc + (int64_t)j * d + e0;
    for (int t = 0; t < T; ++t) {
      const __m256 vb = _mm256_set1_ps(vr[t]);
      for (int w = 0; w < MV; ++w) acc[t][w] = _mm256_fmadd_ps(vb, pv[w], acc[t][w]);
    }
  }
  for (int t = 0; t < T; ++t)
    for (int w = 0; w < MV; ++w) _mm256_store_ps(Ot + (e0 + t) * M + 8 * w, acc[t][w]);
}

// One chunk of kc <= KC keys (rows Kc/Vc, in place): scores, online-softmax update, P.V.
template <int MV>
DENDRITIC_AVX2 void key_chunk(const float* Qt, const float* Kc, const float* Vc, int64_t d, int kc,
                                const uint8_t* valid, float* S, float* Ot, __m256* m, __m256* l) {
  constexpr int M = 8 * MV;
  __m256 mt[MV];
  for (int w = 0; w < MV; ++w) mt[w] = _mm256_set1_ps(-__builtin_inff());
  for (int j0 = 0; j0 < kc; j0 += KJ) qk_tile<MV>(Qt, Kc, d, j0, kc, valid, S, mt);

  __m256 mu[MV], alpha[MV], rs[MV];
  for (int w = 0; w < MV; ++w) {
    const __m256 mn = _mm256_max_ps(m[w], mt[w]);
    // A row that has seen no live key yet keeps m = -inf; subtract 0 instead so nothing becomes NaN.
    const __m256 dead = _mm256_cmp_ps(mn, _mm256_set1_ps(-__builtin_inff()), _CMP_EQ_OQ);
    mu[w] = _mm256_blendv_ps(mn, _mm256_setzero_ps(), dead);
    alpha[w] = exp_ps(_mm256_sub_ps(m[w], mu[w]));
    m[w] = mn;
    rs[w] = _mm256_setzero_ps();
  }
  for (int j = 0; j < kc; ++j) {
    for (int w = 0; w < MV; ++w) {
      float* sp = S + (int64_t)j * M + 8 * w;
      const __m256 p = exp_ps(_mm256_sub_ps(_mm256_load_ps(sp), mu[w]));
      rs[w] = _mm256_add_ps(rs[w], p);
      _mm256_store_ps(sp, p);
    }
  }
  for (int w = 0; w < MV; ++w) l[w] = _mm256_fmadd_ps(l[w], alpha[w], rs[w]);

  int64_t e0 = 0;
  for (; e0 + DD <= d; e0 += DD) pv_tile<MV, DD>(S, Vc, d, e0, kc, alpha, Ot);
  for (; e0 < d; ++e0) pv_tile<MV, 1>(S, Vc, d, e0, kc, alpha, Ot);
}

template <int MV>
__attribute__((target("avx2,fma"))) void run_task(const BlockSparseParams& p, int64_t task, float* scratch) {
  constexpr int M = 8 * MV;
  const int64_t d = p.d, n = p.n, bs = p.block_size, nb = p.nb;
  const int64_t bh = task / nb, qb = task % nb, b = bh / p.H;
  const float* Qh = static_cast<const float*>(p.q) + bh * n * d;
  const float* Kh = static_cast<const float*>(p.k) + bh * n * d;
  const float* Vh = static_cast<const float*>(p.v) + bh * n * d;
  float* Oh = static_cast<float*>(p.out) + bh * n * d;
  const int64_t nk = p.nblk[task];
  const int32_t* idx = p.idx + task * nb;
  const uint8_t* kvalid = p.key_valid ? p.key_valid + b * n : nullptr;
  const uint8_t* bfull = p.block_full ? p.block_full + b * nb : nullptr;

  float* Qt = scratch;       // d * M
  float* Ot = Qt + d * M;    // d * M
  float* S = Ot + d * M;     // KC * M
  const float c = (float)p.scale;  // natural-log units, like torch: a power-of-2 scale stays exact

  const int64_t q0 = qb * bs, qrows = (bs < n - q0) ? bs : n - q0;
  for (int64_t r0 = 0; r0 < qrows; r0 += M) {
    const int64_t rows = (M < qrows - r0) ? M : qrows - r0;
    const float* Qr = Qh + (q0 + r0) * d;
    for (int64_t e = 0; e < d; ++e)
      for (int64_t i = 0; i < M; ++i) Qt[e * M + i] = i < rows ? Qr[i * d + e] * c : 0.0f;
    for (int64_t x = 0; x < d * M; x += 8) _mm256_store_ps(Ot + x, _mm256_setzero_ps());
    __m256 m[MV], l[MV];
    for (int w = 0; w < MV; ++w) {
      m[w] = _mm256_set1_ps(-__builtin_inff());
      l[w] = _mm256_setzero_ps();
    }
    for (int64_t s = 0; s < nk; ++s) {
      const int64_t k0 = (int64_t)idx[s] * bs;
      const int64_t kcount = (bs < n - k0) ? bs : n - k0;
      const uint8_t* valid = (kvalid && !bfull[idx[s]]) ? kvalid + k0 : nullptr;
      for (int64_t c0 = 0; c0 < kcount; c0 += KC) {
        const int kc = (int)((KC < kcount - c0) ? KC : kcount - c0);
        key_chunk<MV>(Qt, Kh + (k0 + c0) * d, Vh + (k0 + c0) * d, d, kc, valid ? valid + c0 : nullptr, S, Ot, m, l);
      }
    }
    float inv[M];
    for (int w = 0; w < MV; ++w) {
      const __m256 live = _mm256_cmp_ps(l[w], _mm256_setzero_ps(), _CMP_GT_OQ);
      _mm256_storeu_ps(inv + 8 * w, _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), l[w]), live));
    }
    float* Or = Oh + (q0 + r0) * d;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t e = 0; e < d; ++e) Or[i * d + e] = Ot[e * M + i] * inv[i];
  }
}

// -- Small blocks (block_size < 8): one task per GROUP of 8 / block_size query blocks (one query row per lane) over
// the union of their kept key blocks, with a per-key lane mask — the AVX-512 file's run_group_task with 8 lanes (see
// the comment there: the same function as run_task; a block kept by one row of the group is read for all of them).
constexpr int GKJ = 8;  // keys per Q.K^T register tile (one query vector: 8 accumulators + 2 registers)
constexpr int GDD = 8;  // head dims per P.V register tile

// The lane mask (bit i = query row i of the group) as a vector of all-ones / all-zeros lanes.
DENDRITIC_AVX2 __m256 lane_mask(uint32_t bits) {
  const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i b = _mm256_and_si256(_mm256_set1_epi32((int)bits), lane_bit);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, lane_bit));
}

DENDRITIC_AVX2 void qk_gathered(const float* __restrict Qt, const float* const* kr, const uint32_t* kmask, int64_t d,
                                int kc, float* __restrict S, __m256* mt) {
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff());
  for (int j0 = 0; j0 < kc; j0 += GKJ) {
    const int u_end = (GKJ < kc - j0) ? GKJ : kc - j0;
    __m256 acc[GKJ];
    for (int u = 0; u < GKJ; ++u) acc[u] = _mm256_setzero_ps();
    for (int64_t e = 0; e < d; ++e) {
      const __m256 qv = _mm256_load_ps(Qt + e * 8);
      for (int u = 0; u < GKJ; ++u)  // rows past u_end repeat the chunk's last key (never stored)
        acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(kr[j0 + (u < u_end ? u : u_end - 1)][e]), qv, acc[u]);
    }
    for (int u = 0; u < u_end; ++u) {
      const __m256 sv = _mm256_blendv_ps(ninf, acc[u], lane_mask(kmask[j0 + u]));
      *mt = _mm256_max_ps(*mt, sv);
      _mm256_store_ps(S + (int64_t)(j0 + u) * 8, sv);
    }
  }
}

template <int T>
DENDRITIC_AVX2 void pv_gathered(const float* __restrict S, const float* const* vr, int64_t e0, int kc, __m256 alpha,
                                float* __restrict Ot) {
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_mul_ps(_mm256_load_ps(Ot + (e0 + t) * 8), alpha);
  for (int j = 0; j < kc; ++j) {
    const __m256 pj = _mm256_load_ps(S + (int64_t)j * 8);
    const float* v = vr[j] + e0;
    for (int t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(v[t]), pj, acc[t]);
  }
  for (int t = 0; t < T; ++t) _mm256_store_ps(Ot + (e0 + t) * 8, acc[t]);
}

DENDRITIC_AVX2 void gathered_chunk(const float* Qt, const float* const* kr, const float* const* vr,
                                   const uint32_t* kmask, int64_t d, int kc, float* S, float* Ot, __m256* m,
                                   __m256* l) {
  __m256 mt = _mm256_set1_ps(-__builtin_inff());
  qk_gathered(Qt, kr, kmask, d, kc, S, &mt);
  const __m256 mn = _mm256_max_ps(*m, mt);
  const __m256 dead = _mm256_cmp_ps(mn, _mm256_set1_ps(-__builtin_inff()), _CMP_EQ_OQ);
  const __m256 mu = _mm256_blendv_ps(mn, _mm256_setzero_ps(), dead);
  const __m256 alpha = exp_ps(_mm256_sub_ps(*m, mu));
  *m = mn;
  __m256 rs = _mm256_setzero_ps();
  for (int j = 0; j < kc; ++j) {
    float* sp = S + (int64_t)j * 8;
    const __m256 pj = exp_ps(_mm256_sub_ps(_mm256_load_ps(sp), mu));
    rs = _mm256_add_ps(rs, pj);
    _mm256_store_ps(sp, pj);
  }
  *l = _mm256_fmadd_ps(*l, alpha, rs);
  int64_t e0 = 0;
  for (; e0 + GDD <= d; e0 += GDD) pv_gathered<GDD>(S, vr, e0, kc, alpha, Ot);
  for (; e0 < d; ++e0) pv_gathered<1>(S, vr, e0, kc, alpha, Ot);
}

__attribute__((target("avx2,fma"))) void run_group_task(const BlockSparseParams& p, int64_t task, float* scratch) {
  const int64_t d = p.d, n = p.n, bs = p.block_size, nb = p.nb, G = 8 / bs, groups = (nb + G - 1) / G;
  const int64_t bh = task / groups, g = task % groups, b = bh / p.H;
  const float* Qh = static_cast<const float*>(p.q) + bh * n * d;
  const float* Kh = static_cast<const float*>(p.k) + bh * n * d;
  const float* Vh = static_cast<const float*>(p.v) + bh * n * d;
  float* Oh = static_cast<float*>(p.out) + bh * n * d;
  const uint8_t* kvalid = p.key_valid ? p.key_valid + b * n : nullptr;

  float* Qt = scratch;      // d * 8
  float* Ot = Qt + d * 8;   // d * 8
  float* S = Ot + d * 8;    // KC * 8
  uint32_t* lanes = reinterpret_cast<uint32_t*>(S + KC * 8);  // nb: lane mask of each key block, 0 = not kept

  const int64_t qb0 = g * G, qb1 = (qb0 + G < nb) ? qb0 + G : nb;
  const int64_t q0 = qb0 * bs, q1 = (qb1 * bs < n) ? qb1 * bs : n, rows = q1 - q0;
  int64_t lo = nb, hi = -1;
  for (int64_t qb = qb0; qb < qb1; ++qb) {
    const int64_t t = bh * nb + qb;
    const uint32_t bits = ((1u << bs) - 1u) << ((qb - qb0) * bs);
    const int32_t* idx = p.idx + t * nb;
    for (int64_t s = 0; s < p.nblk[t]; ++s) {
      const int32_t kb = idx[s];
      lanes[kb] |= bits;
      lo = kb < lo ? kb : lo, hi = kb > hi ? kb : hi;
    }
  }

  const float c = (float)p.scale;
  const float* Qr = Qh + q0 * d;
  for (int64_t e = 0; e < d; ++e)
    for (int64_t i = 0; i < 8; ++i) Qt[e * 8 + i] = i < rows ? Qr[i * d + e] * c : 0.0f;
  for (int64_t x = 0; x < d * 8; x += 8) _mm256_store_ps(Ot + x, _mm256_setzero_ps());
  __m256 m = _mm256_set1_ps(-__builtin_inff()), l = _mm256_setzero_ps();
  const float* kr[KC];
  const float* vr[KC];
  uint32_t km[KC];
  int kc = 0;
  for (int64_t kb = lo; kb <= hi; ++kb) {
    if (lanes[kb] == 0) continue;
    const int64_t k0 = kb * bs, k1 = (k0 + bs < n) ? k0 + bs : n;
    const uint32_t mask = lanes[kb];
    lanes[kb] = 0;  // leave the scratch zeroed for the next task
    for (int64_t t = k0; t < k1; ++t) {
      if (kvalid != nullptr && !kvalid[t]) continue;  // padded key: no lane sees it
      kr[kc] = Kh + t * d, vr[kc] = Vh + t * d, km[kc] = mask;
      if (++kc == KC) gathered_chunk(Qt, kr, vr, km, d, kc, S, Ot, &m, &l), kc = 0;
    }
  }
  if (kc > 0) gathered_chunk(Qt, kr, vr, km, d, kc, S, Ot, &m, &l);
  float inv[8];
  const __m256 live = _mm256_cmp_ps(l, _mm256_setzero_ps(), _CMP_GT_OQ);
  _mm256_storeu_ps(inv, _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), l), live));
  float* Or = Oh + q0 * d;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t e = 0; e < d; ++e) Or[i * d + e] = Ot[e * 8 + i] * inv[i];
}

}  // namespace

bool avx2_compiled() { return true; }

int64_t avx2_scratch_floats(const BlockSparseParams& p) {
  return (2 * p.d + KC) * 32 + 16 + p.nb;  // run_task<2>'s tiles, or run_group_task's and its nb lane masks
}

int64_t avx2_group_tasks(const BlockSparseParams& p) {
  const int64_t G = 8 / p.block_size;
  return p.B * p.H * ((p.nb + G - 1) / G);
}

void avx2_run_group_task(const BlockSparseParams& p, int64_t task, float* scratch) { run_group_task(p, task, scratch); }

void avx2_run_task(const BlockSparseParams& p, int64_t task, float* scratch) {
  if (p.block_size <= 8)
    run_task<1>(p, task, scratch);  // 8 query rows per chunk
  else
    run_task<2>(p, task, scratch);  // 16
}

}  // namespace dendritic

#else  // not x86-64: no AVX2 path

namespace dendritic {
bool avx2_compiled() { return false; }
int64_t avx2_scratch_floats(const BlockSparseParams&) { return 0; }
void avx2_run_task(const BlockSparseParams&, int64_t, float*) {}
int64_t avx2_group_tasks(const BlockSparseParams&) { return 0; }
void avx2_run_group_task(const BlockSparseParams&, int64_t, float*) {}
}  // namespace dendritic

#endif
