// AVX-512 fp32 block-sparse attention forward: one (batch, head, query block) task at a time — or, for blocks
// under 16 tokens, one (batch, head, group of 16 / block_size query blocks) task (run_group_task, below).
//
// Every function here carries DENDRITIC_AVX512 (a per-function target attribute), so this TU is built with the
// same flags as the rest of the extension and the binary still loads on CPUs without AVX-512; the dispatcher in
// block_sparse_cpu.cpp calls in only after __builtin_cpu_supports("avx512f").  Only intrinsics and plain C
// are used (no STL), and everything but the entry points declared in block_sparse_cpu.h has internal linkage.
//
// Layout of one query chunk (M = 16*MV query rows), all tiles L1-sized:
//   Qt[d][M]   query chunk, transposed and pre-multiplied by the softmax scale
//   S[KC][M]   score / probability tile, KEY-major: row j is one vector per 16 query rows, so the running max,
//              exp and row sums are plain vector ops with no horizontal reduction
//   Ot[d][M]   un-normalised output, transposed; rescaled by alpha = exp(m_old - m_new) per chunk
//   m[M], l[M] running max and running sum (online softmax)
// K and V are read in place from the input tensors (no gather); a key tile of KJ rows clamps its row pointers to
// the chunk and masks the surplus rows to -inf.
#include "block_sparse_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define DENDRITIC_AVX512 __attribute__((target("avx512f,avx2,fma"), always_inline)) inline

namespace dendritic {
namespace {

constexpr int KC = 32;  // keys per score tile
constexpr int KJ = 8;   // keys per Q.K^T register tile
constexpr int DD = 8;   // head dims per P.V register tile

// e^x for x <= 88; exactly 0 for x < -87.3 (below FLT_MIN, and for -inf / NaN from masked entries).
// Cody-Waite range reduction x = k ln2 + r (|r| <= ln2/2), degree-7 Taylor series of e^r (relative error < 6e-9),
// then 2^k by vscalefps.
DENDRITIC_AVX512 __m512 exp_ps(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
  const __m512 kf = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(0.693359375f), x);  // ln2 split into an exact high part ...
  r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(-2.12194440e-4f), r);      // ... and the rest
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, kf));
}

// S[0:KJ rows] = Qt^T K for KJ keys starting at key j0 of the chunk; masks keys >= kc and padded keys; folds the
// tile max into mt.
template <int MV>
DENDRITIC_AVX512 void qk_tile(const float* __restrict Qt, const float* __restrict Kc, int64_t d, int j0, int kc,
                              const uint8_t* valid, float* __restrict S, __m512* mt) {
  constexpr int M = 16 * MV;
  const float* kp[KJ];
  for (int u = 0; u < KJ; ++u) kp[u] = Kc + (int64_t)(j0 + u < kc ? j0 + u : kc - 1) * d;
  __m512 acc[KJ][MV];
  for (int u = 0; u < KJ; ++u)
    for (int w = 0; w < MV; ++w) acc[u][w] = _mm512_setzero_ps();
  for (int64_t e = 0; e < d; ++e) {
    __m512 qv[MV];
    for (int w = 0; w < MV; ++w) qv[w] = _mm512_load_ps(Qt + e * M + 16 * w);
    for (int u = 0; u < KJ; ++u) {
      const __m512 kb = _mm512_set1_ps(kp[u][e]);
      for (int w = 0; w < MV; ++w) acc[u][w] = _mm512_fmadd_ps(kb, qv[w], acc[u][w]);
    }
  }
  const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
  for (int u = 0; u < KJ; ++u) {
    const int j = j0 + u;
    const bool dead = j >= kc || (valid != nullptr && !valid[j]);
    for (int w = 0; w < MV; ++w) {
      const __m512 s = dead ? ninf : acc[u][w];
      mt[w] = _mm512_max_ps(mt[w], s);
      _mm512_store_ps(S + (int64_t)j * M + 16 * w, s);
    }
  }
}

// Ot[e0:e0+T] = Ot[e0:e0+T] * alpha + V[:, e0:e0+T]^T P   (P = S after exp), for one query chunk.
template <int MV, int T>
DENDRITIC_AVX512 void pv_tile(const float* __restrict S, const float* __restrict Vc, int64_t d, int64_t e0, int kc,
                              const __m512* alpha, float* __restrict Ot) {
  constexpr int M = 16 * MV;
  __m512 acc[T][MV];
  for (int t = 0; t < T; ++t)
    for (int w = 0; w < MV; ++w) acc[t][w] = _mm512_mul_ps(_mm512_load_ps(Ot + (e0 + t) * M + 16 * w), alpha[w]);
  for (int j = 0; j < kc; ++j) {
    __m512 pv[MV];
    for (int w = 0; w < MV; ++w) pv[w] = _mm512_load_ps(S + (int64_t)j * M + 16 * w);
    const float* vr = Vc + (int64_t)j * d + e0;
    for (int t = 0; t < T; ++t) {
      const __m512 vb = _mm512_set1_ps(vr[t]);
      for (int w = 0; w < MV; ++w) acc[t][w] = _mm512_fmadd_ps(vb, pv[w], acc[t][w]);
    }
  }
  for (int t = 0; t < T; ++t)
    for (int w = 0; w < MV; ++w) _mm512_store_ps(Ot + (e0 + t) * M + 16 * w, acc[t][w]);
}

// One chunk of kc <= KC keys (rows Kc/Vc, in place): scores, online-softmax update, P.V.
template <int MV>
DENDRITIC_AVX512 void key_chunk(const float* Qt, const float* Kc, const float* Vc, int64_t d, int kc,
                                const uint8_t* valid, float* S, float* Ot, __m512* m, __m512* l) {
  constexpr int M = 16 * MV;
  __m512 mt[MV];
  for (int w = 0; w < MV; ++w) mt[w] = _mm512_set1_ps(-__builtin_inff());
  for (int j0 = 0; j0 < kc; j0 += KJ) qk_tile<MV>(Qt, Kc, d, j0, kc, valid, S, mt);

  __m512 mu[MV], alpha[MV], rs[MV];
  for (int w = 0; w < MV; ++w) {
    const __m512 mn = _mm512_max_ps(m[w], mt[w]);
    // A row that has seen no live key yet keeps m = -inf; subtract 0 instead so nothing becomes NaN.
    const __mmask16 dead = _mm512_cmp_ps_mask(mn, _mm512_set1_ps(-__builtin_inff()), _CMP_EQ_OQ);
    mu[w] = _mm512_mask_mov_ps(mn, dead, _mm512_setzero_ps());
    alpha[w] = exp_ps(_mm512_sub_ps(m[w], mu[w]));
    m[w] = mn;
    rs[w] = _mm512_setzero_ps();
  }
  for (int j = 0; j < kc; ++j) {
    for (int w = 0; w < MV; ++w) {
      float* sp = S + (int64_t)j * M + 16 * w;
      const __m512 p = exp_ps(_mm512_sub_ps(_mm512_load_ps(sp), mu[w]));
      rs[w] = _mm512_add_ps(rs[w], p);
      _mm512_store_ps(sp, p);
    }
  }
  for (int w = 0; w < MV; ++w) l[w] = _mm512_fmadd_ps(l[w], alpha[w], rs[w]);

  int64_t e0 = 0;
  for (; e0 + DD <= d; e0 += DD) pv_tile<MV, DD>(S, Vc, d, e0, kc, alpha, Ot);
  for (; e0 < d; ++e0) pv_tile<MV, 1>(S, Vc, d, e0, kc, alpha, Ot);
}

template <int MV>
__attribute__((target("avx512f,avx2,fma"))) void run_task(const BlockSparseParams& p, int64_t task, float* scratch) {
  constexpr int M = 16 * MV;
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
    for (int64_t x = 0; x < d * M; x += 16) _mm512_store_ps(Ot + x, _mm512_setzero_ps());
    __m512 m[MV], l[MV];
    for (int w = 0; w < MV; ++w) {
      m[w] = _mm512_set1_ps(-__builtin_inff());
      l[w] = _mm512_setzero_ps();
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
      const __mmask16 live = _mm512_cmp_ps_mask(l[w], _mm512_setzero_ps(), _CMP_GT_OQ);
      _mm512_storeu_ps(inv + 16 * w, _mm512_maskz_div_ps(live, _mm512_set1_ps(1.0f), l[w]));
    }
    float* Or = Oh + (q0 + r0) * d;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t e = 0; e < d; ++e) Or[i * d + e] = Ot[e * M + i] * inv[i];
  }
}

// -- Small blocks (block_size < 16): one task per GROUP of query blocks --------------------------------------------
// With a 4-token block a (batch, head, query block) task fills 4 of a vector's 16 lanes and each kept key block is
// a chunk of 4 keys, so run_task<1> computes at about a quarter of its width there.  Here one task takes
// G = 16 / block_size consecutive query blocks (16 query rows, one per lane) and walks the UNION of their kept key
// blocks, key by key, in chunks of KC keys gathered across blocks; each key carries a lane mask — the query rows
// whose block keeps it (and none if the key is padding) — so a row's softmax runs over exactly its own kept real
// keys, the same function as run_task.  Time scales with the union of the G rows' kept blocks, not with each row's
// own: what the group does not keep is never read; a block kept by one of its rows is read for all G (its values
// reach the other rows' lanes only multiplied by an exact 0, so finite K and V are assumed there, as for padded
// keys inside a kept block).

// S[0:kc] = Qt^T K for kc <= KC gathered keys (row pointers kr), -inf outside each key's lane mask; folds the tile
// max into *mt.
DENDRITIC_AVX512 void qk_gathered(const float* __restrict Qt, const float* const* kr, const __mmask16* kmask,
                                  int64_t d, int kc, float* __restrict S, __m512* mt) {
  const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
  for (int j0 = 0; j0 < kc; j0 += KJ) {
    const int u_end = (KJ < kc - j0) ? KJ : kc - j0;
    __m512 acc[KJ];
    for (int u = 0; u < KJ; ++u) acc[u] = _mm512_setzero_ps();
    for (int64_t e = 0; e < d; ++e) {
      const __m512 qv = _mm512_load_ps(Qt + e * 16);
      for (int u = 0; u < KJ; ++u)  // rows past u_end repeat the chunk's last key (never stored)
        acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(kr[j0 + (u < u_end ? u : u_end - 1)][e]), qv, acc[u]);
    }
    for (int u = 0; u < u_end; ++u) {
      const __m512 s = _mm512_mask_mov_ps(ninf, kmask[j0 + u], acc[u]);
      *mt = _mm512_max_ps(*mt, s);
      _mm512_store_ps(S + (int64_t)(j0 + u) * 16, s);
    }
  }
}

// Ot[e0:e0+T] = Ot[e0:e0+T] * alpha + V[gathered rows, e0:e0+T]^T P.
template <int T>
DENDRITIC_AVX512 void pv_gathered(const float* __restrict S, const float* const* vr, int64_t e0, int kc, __m512 alpha,
                                  float* __restrict Ot) {
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_mul_ps(_mm512_load_ps(Ot + (e0 + t) * 16), alpha);
  for (int j = 0; j < kc; ++j) {
    const __m512 pj = _mm512_load_ps(S + (int64_t)j * 16);
    const float* v = vr[j] + e0;
    for (int t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(v[t]), pj, acc[t]);
  }
  for (int t = 0; t < T; ++t) _mm512_store_ps(Ot + (e0 + t) * 16, acc[t]);
}

// One gathered chunk: scores, online-softmax update (as key_chunk), P.V.
DENDRITIC_AVX512 void gathered_chunk(const float* Qt, const float* const* kr, const float* const* vr,
                                     const __mmask16* kmask, int64_t d, int kc, float* S, float* Ot, __m512* m,
                                     __m512* l) {
  __m512 mt = _mm512_set1_ps(-__builtin_inff());
  qk_gathered(Qt, kr, kmask, d, kc, S, &mt);
  const __m512 mn = _mm512_max_ps(*m, mt);
  const __mmask16 dead = _mm512_cmp_ps_mask(mn, _mm512_set1_ps(-__builtin_inff()), _CMP_EQ_OQ);
  const __m512 mu = _mm512_mask_mov_ps(mn, dead, _mm512_setzero_ps());
  const __m512 alpha = exp_ps(_mm512_sub_ps(*m, mu));
  *m = mn;
  __m512 rs = _mm512_setzero_ps();
  for (int j = 0; j < kc; ++j) {
    float* sp = S + (int64_t)j * 16;
    const __m512 pj = exp_ps(_mm512_sub_ps(_mm512_load_ps(sp), mu));
    rs = _mm512_add_ps(rs, pj);
    _mm512_store_ps(sp, pj);
  }
  *l = _mm512_fmadd_ps(*l, alpha, rs);
  int64_t e0 = 0;
  for (; e0 + DD <= d; e0 += DD) pv_gathered<DD>(S, vr, e0, kc, alpha, Ot);
  for (; e0 < d; ++e0) pv_gathered<1>(S, vr, e0, kc, alpha, Ot);
}

__attribute__((target("avx512f,avx2,fma"))) void run_group_task(const BlockSparseParams& p, int64_t task,
                                                                float* scratch) {
  const int64_t d = p.d, n = p.n, bs = p.block_size, nb = p.nb, G = 16 / bs, groups = (nb + G - 1) / G;
  const int64_t bh = task / groups, g = task % groups, b = bh / p.H;
  const float* Qh = static_cast<const float*>(p.q) + bh * n * d;
  const float* Kh = static_cast<const float*>(p.k) + bh * n * d;
  const float* Vh = static_cast<const float*>(p.v) + bh * n * d;
  float* Oh = static_cast<float*>(p.out) + bh * n * d;
  const uint8_t* kvalid = p.key_valid ? p.key_valid + b * n : nullptr;

  float* Qt = scratch;        // d * 16
  float* Ot = Qt + d * 16;    // d * 16
  float* S = Ot + d * 16;     // KC * 16
  uint32_t* lanes = reinterpret_cast<uint32_t*>(S + KC * 16);  // nb: lane mask of each key block, 0 = not kept

  const int64_t qb0 = g * G, qb1 = (qb0 + G < nb) ? qb0 + G : nb;
  const int64_t q0 = qb0 * bs, q1 = (qb1 * bs < n) ? qb1 * bs : n, rows = q1 - q0;
  // the union of the group's kept key blocks, as the lanes (query rows) of the blocks that keep each; walked below
  // in ascending order between the lowest and highest kept block (a scan, not a sort: no STL in this TU)
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
    for (int64_t i = 0; i < 16; ++i) Qt[e * 16 + i] = i < rows ? Qr[i * d + e] * c : 0.0f;
  for (int64_t x = 0; x < d * 16; x += 16) _mm512_store_ps(Ot + x, _mm512_setzero_ps());
  __m512 m = _mm512_set1_ps(-__builtin_inff()), l = _mm512_setzero_ps();
  const float* kr[KC];
  const float* vr[KC];
  __mmask16 km[KC];
  int kc = 0;
  for (int64_t kb = lo; kb <= hi; ++kb) {
    if (lanes[kb] == 0) continue;
    const int64_t k0 = kb * bs, k1 = (k0 + bs < n) ? k0 + bs : n;
    const __mmask16 mask = (__mmask16)lanes[kb];
    lanes[kb] = 0;  // leave the scratch zeroed for the next task
    for (int64_t t = k0; t < k1; ++t) {
      if (kvalid != nullptr && !kvalid[t]) continue;  // padded key: no lane sees it
      kr[kc] = Kh + t * d, vr[kc] = Vh + t * d, km[kc] = mask;
      if (++kc == KC) gathered_chunk(Qt, kr, vr, km, d, kc, S, Ot, &m, &l), kc = 0;
    }
  }
  if (kc > 0) gathered_chunk(Qt, kr, vr, km, d, kc, S, Ot, &m, &l);
  float inv[16];
  const __mmask16 live = _mm512_cmp_ps_mask(l, _mm512_setzero_ps(), _CMP_GT_OQ);
  _mm512_storeu_ps(inv, _mm512_maskz_div_ps(live, _mm512_set1_ps(1.0f), l));
  float* Or = Oh + q0 * d;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t e = 0; e < d; ++e) Or[i * d + e] = Ot[e * 16 + i] * inv[i];
}

}  // namespace

bool avx512_compiled() { return true; }

int64_t avx512_scratch_floats(const BlockSparseParams& p) {
  return (2 * p.d + KC) * 32 + 16 + p.nb;  // run_task<2>'s tiles, or run_group_task's and its nb lane masks
}

int64_t avx512_group_tasks(const BlockSparseParams& p) {
  const int64_t G = 16 / p.block_size;
  return p.B * p.H * ((p.nb + G - 1) / G);
}

void avx512_run_group_task(const BlockSparseParams& p, int64_t task, float* scratch) {
  run_group_task(p, task, scratch);
}

void avx512_run_task(const BlockSparseParams& p, int64_t task, float* scratch) {
  if (p.block_size <= 16)
    run_task<1>(p, task, scratch);
  else
    run_task<2>(p, task, scratch);
}

}  // namespace dendritic

#else  // not x86-64: no AVX-512 path

namespace dendritic {
bool avx512_compiled() { return false; }
int64_t avx512_scratch_floats(const BlockSparseParams&) { return 0; }
void avx512_run_task(const BlockSparseParams&, int64_t, float*) {}
int64_t avx512_group_tasks(const BlockSparseParams&) { return 0; }
void avx512_run_group_task(const BlockSparseParams&, int64_t, float*) {}
}  // namespace dendritic

#endif
