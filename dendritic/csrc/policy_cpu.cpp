// The learned policy's inference forward in one C++ call: block pooling, scorer, log block mass, gate, the
// input-dependent threshold, hard mask, the kernels' compact layout and the per-input statistics.  It is the same
// function as the Python modules (dendritic/scoring.py, gating.py, perforation.py, masks.py, kernels/layout.py)
// evaluated with hard masks, written as plain loops so that a layer costs one ATen call (the scorer GEMM) besides
// its output allocations, instead of ~60 — at GLUE lengths the dispatches, not the arithmetic, were the policy's
// cost — and three parallel loops (pooling; scores, log-softmax and entropies; threshold, mask and layout).  The
// elementwise hot loops are compiled per ISA (AVX-512 / AVX2 / baseline, picked at load time), the exponentials
// are a vectorisable polynomial (fast_exp) and the order statistic is a radix selection.
//
//   * The floating-point part (pooling, scorer features, scores, log block mass, gate features, LayerNorm, MLP,
//     tanh) follows the Python expressions term by term but not ATen's reduction order nor its exp, so its values
//     agree with the Python path to float rounding (~1e-6 relative), not bit for bit.
//   * The discrete part — the anchor threshold (the budget's order statistic: a radix selection instead of a full
//     sort), the comparison, the safety floor, the compaction into kv_num_blocks / kv_indices and the block counts
//     — computes each float exactly as the Python expression does (fp32, no FMA contraction: this file is
//     compiled with -ffp-contract=off), so GIVEN the same log mass and shift it makes exactly the Python path's
//     decisions.
//
// Hence a block decision can differ from the Python path's only where a candidate's log mass lies within float
// rounding of the threshold.  tests/test_policy_fused.py checks both halves: the floats to tolerance, and the
// decisions exactly when the Python perforation unit is fed this call's log mass and shift.  Training keeps the
// Python path (it is differentiable).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

namespace dendritic {
namespace {

constexpr float kBig = 1e4f;  // perforation._BIG: log-mass values are clamped to ±kBig

// Items per thread for at::parallel_for, from each item's work (~elements touched): below ~32k elements of work a
// loop runs inline on the calling thread (ATen's own GRAIN_SIZE) — at GLUE lengths waking a second thread for each
// of the policy's six short loops cost more than the loops (measured: 2 threads slower than 1).
inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(work_per_item, 1));
}

// t as contiguous fp32 — without an ATen dispatch when it already is (the parameters always are).
at::Tensor as_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.is_contiguous() ? t : t.to(at::kFloat).contiguous();
}

// Order-preserving map of a float to uint32 (a < b as floats ⇔ key(a) < key(b) for non-NaN values; −0 sorts just
// below +0, which compare equal as floats — a threshold built from either is the same number) and back.
inline uint32_t order_key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float key_value(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// The k-th largest key (1 ≤ k ≤ keys.size()) by radix selection: the digits start at the highest bit in which the
// keys differ (a layer's log masses share their sign and leading exponent bits), each pass histograms the
// survivors' next 8 bits, keeps the bucket holding the k-th largest and filters the survivors into it — O(m) with
// one or two full passes (the policy's order statistic; nth_element on the same values cost a third of the policy
// at GLUE lengths).
uint32_t kth_largest(const std::vector<uint32_t>& keys, int64_t k, std::vector<uint32_t>& survivors,
                     std::vector<uint32_t>& next) {
  const uint32_t* cur = keys.data();
  int64_t m = static_cast<int64_t>(keys.size());
  uint32_t lo = cur[0], hi = cur[0];
  for (int64_t i = 1; i < m; ++i) lo = std::min(lo, cur[i]), hi = std::max(hi, cur[i]);
  if (lo == hi) return lo;
  int top = 31;  // the highest bit in which the keys differ
  while (!(((lo ^ hi) >> top) & 1u)) --top;
  uint32_t prefix = hi & ~((top == 31) ? 0xffffffffu : ((2u << top) - 1u));  // the shared leading bits
  for (int shift = std::max(top - 7, 0);; shift = std::max(shift - 8, 0)) {
    uint32_t hist[256] = {0};
    for (int64_t i = 0; i < m; ++i) ++hist[(cur[i] >> shift) & 255u];
    int d = 255;
    for (; d > 0 && k > static_cast<int64_t>(hist[d]); --d) k -= hist[d];
    prefix |= static_cast<uint32_t>(d) << shift;
    if (shift == 0) return prefix;
    if (static_cast<int64_t>(hist[d]) == m) continue;  // every survivor in this bucket: no filtering
    next.clear();
    for (int64_t i = 0; i < m; ++i)
      if (((cur[i] >> shift) & 255u) == static_cast<uint32_t>(d)) next.push_back(cur[i]);
    survivors.swap(next);
    cur = survivors.data();
    m = static_cast<int64_t>(survivors.size());
    if (m == 1 || std::all_of(cur, cur + m, [&](uint32_t v) { return v == cur[0]; })) return cur[0];
  }
}

// The largest key below `upper` (the (k+1)-th largest when only k keys are ≥ upper), or upper itself when more than
// k keys are ≥ upper (ties).
uint32_t next_largest(const std::vector<uint32_t>& keys, uint32_t upper, int64_t k) {
  int64_t at_least = 0;
  uint32_t below = 0;
  for (const uint32_t v : keys) {
    at_least += v >= upper;
    below = std::max(below, v < upper ? v : 0u);
  }
  return at_least > k ? upper : below;
}

// The elementwise hot loops, compiled for AVX-512, AVX2 and baseline x86-64 with the variant picked at load time
// (GCC/Clang function multi-versioning): wider vectors, the same IEEE operations — no FMA contraction
// (-ffp-contract=off), so every value is the one the baseline build computes.  Other targets (and macOS, which has
// no ifunc): one plain build.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__INTEL_COMPILER)
#define DENDRITIC_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DENDRITIC_ISA_CLONES
#endif

// One key block's pooling: out = Σ of its real tokens (then the caller divides), and each real token's norm
// (32 partial sums: vectorisable; ATen's reduction order differs too, so this agrees with it to rounding).
DENDRITIC_ISA_CLONES
float pool_block(const float* xp, const bool* kp, int64_t t0, int64_t t1, int64_t C, float* out, float* norms) {
  std::fill(out, out + C, 0.0f);
  float c = 0.0f;
  for (int64_t t = t0; t < t1; ++t) {
    if (!kp[t]) continue;
    c += 1.0f;
    const float* xt = xp + t * C;
    for (int64_t k = 0; k < C; ++k) out[k] += xt[k];
    if (norms != nullptr) {
      float sq[32] = {0.0f};
      int64_t k = 0;
      for (; k + 32 <= C; k += 32)
        for (int u = 0; u < 32; ++u) sq[u] += xt[k + u] * xt[k + u];
      for (; k < C; ++k) sq[k % 32] += xt[k] * xt[k];
      for (int w = 16; w > 0; w /= 2)  // pairwise
        for (int u = 0; u < w; ++u) sq[u] += sq[u + w];
      norms[t] = std::sqrt(sq[0]);
    }
  }
  return c;
}

// Σ a_j over m floats in 8 lanes, then the lanes pairwise (an in-order float sum does not vectorise); inlined into
// each ISA clone that calls it.
static inline float lane_sum(const float* a, int64_t m) {
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t j = 0;
  for (; j + 8 <= m; j += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[j + u];
  for (; j < m; ++j) acc[0] += a[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// exp(x) in fp32 for the vectorised loops below (Cephes' expf: Cody–Waite reduction by ln 2, a degree-6
// polynomial, 2^k by exponent bits; within ~2 ulp of libm), branch-free so that GCC vectorises the loop that calls
// it.  x < −87.3 (−inf included) gives 0; x is capped at 88 (the callers' arguments never exceed 0 — softmax — or
// only feed σ, which is 0 or 1 to float precision there anyway).  One ATen call per tensor (at::exp, at::sigmoid)
// cost a dispatch and a full pass of its own; here the exponentials are computed where their values are used.
static inline float fast_exp(float x) {
  const bool underflow = x < -87.3f;
  x = underflow ? -87.3f : (x > 88.0f ? 88.0f : x);  // ternaries, not std::min/max: GCC if-converts these
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 · 2^23 trick)
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return underflow ? 0.0f : p * scale;
}

// One head's scores and log block mass, row by row while the row is in cache (scoring.block_log_mass):
// s_ij = clamp(<fq_i, fk_j> · scale, ±1e4) + log count of key block j, −inf on padded key blocks, then
// ℓ_ij = (s_ij − max_j s_ij) − log Σ_j exp(s_ij − max_j s_ij) — ATen's log_softmax expression, with the
// exponentials above.  Returns Σ over rows of Σ_j p_ij · max(ℓ_ij, −1e4), p = exp(ℓ) (the gate's row entropies,
// negated; 0 when `entropy` is false).  kT is the head's key features transposed, (r, nb); q rows have stride
// q_stride; e is scratch of nb floats.
DENDRITIC_ISA_CLONES
double score_head(const float* q, int64_t q_stride, const float* kT, int64_t r, int64_t nb, float scale,
                  const float* counts, const float* log_counts, bool entropy, float* e, float* out) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  double ent = 0.0;
  for (int64_t i = 0; i < nb; ++i) {
    float* row = out + i * nb;
    const float* qi = q + i * q_stride;
    std::fill(row, row + nb, 0.0f);
    for (int64_t k = 0; k < r; ++k) {
      const float qk = qi[k];
      const float* kk = kT + k * nb;
      for (int64_t j = 0; j < nb; ++j) row[j] += qk * kk[j];
    }
    for (int64_t j = 0; j < nb; ++j) {
      const float v = row[j] * scale;
      const float c = v < -1e4f ? -1e4f : (v > 1e4f ? 1e4f : v);
      row[j] = counts[j] == 0.0f ? neg_inf : c + log_counts[j];
    }
    // the row maximum (finite: key block 0 is always real) in 8 lanes — a float max reduction does not vectorise
    float mx8[8] = {neg_inf, neg_inf, neg_inf, neg_inf, neg_inf, neg_inf, neg_inf, neg_inf};
    int64_t j = 0;
    for (; j + 8 <= nb; j += 8)
      for (int u = 0; u < 8; ++u) mx8[u] = row[j + u] > mx8[u] ? row[j + u] : mx8[u];
    for (; j < nb; ++j) mx8[0] = row[j] > mx8[0] ? row[j] : mx8[0];
    float mx = mx8[0];
    for (int u = 1; u < 8; ++u) mx = mx8[u] > mx ? mx8[u] : mx;
    for (j = 0; j < nb; ++j) e[j] = fast_exp(row[j] - mx);
    const float sum = lane_sum(e, nb);
    const float lse = std::log(sum);
    for (j = 0; j < nb; ++j) row[j] = (row[j] - mx) - lse;
    if (entropy) {  // p · max(ℓ, −1e4) in place of e, p = e / sum
      const float inv = 1.0f / sum;
      for (j = 0; j < nb; ++j) e[j] = (e[j] * inv) * (row[j] < -1e4f ? -1e4f : row[j]);
      ent += lane_sum(e, nb);
    }
  }
  return ent;
}

// One head's hard mask [z > 0] ∪ floor (z = clamp(ℓ, ±BIG) − θ on the candidates) and the compact layout — kept
// key blocks first, then the skipped ones, each ascending (layout.py) — branch-free.  Returns the number of kept
// blocks; *soft gets Σ over the candidates of σ(z / T), the relaxed keep (perforation: sigmoid(z / T)).  sig is
// scratch of nb floats (the row's σ, then lane_sum).
DENDRITIC_ISA_CLONES
int64_t mask_head(const float* L, const uint8_t* is_floor, const uint8_t* is_cand, int64_t nb, float theta, float T,
                  bool* hard, int32_t* counts, int32_t* idx, int32_t* tail, float* sig, double* soft) {
  int64_t kept = 0;
  double soft_sum = 0.0;
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t o = i * nb;
    for (int64_t j = 0; j < nb; ++j) {
      const float l = L[o + j];
      const float z = (l < -kBig ? -kBig : (l > kBig ? kBig : l)) - theta;
      hard[o + j] = is_floor[o + j] | (is_cand[o + j] & (z > 0.0f));
      const float sg = 1.0f / (1.0f + fast_exp(-(z / T)));
      sig[j] = is_cand[o + j] ? sg : 0.0f;
    }
    soft_sum += lane_sum(sig, nb);
    int32_t* row = idx + o;
    int32_t k = 0, s = 0;
    for (int64_t j = 0; j < nb; ++j) {
      const int32_t keep = hard[o + j];
      row[k] = static_cast<int32_t>(j);
      tail[s] = static_cast<int32_t>(j);
      k += keep, s += 1 - keep;
    }
    std::copy(tail, tail + s, row + k);
    counts[i] = k;
    kept += k;
  }
  *soft = soft_sum;
  return kept;
}

// Σ_i a_i · b_i over m floats with 8 partial sums (vectorised; the gate's matrix-vector products).
DENDRITIC_ISA_CLONES
float dot(const float* a, const float* b, int64_t m) {
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i = 0;
  for (; i + 8 <= m; i += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[i + u] * b[i + u];
  for (; i < m; ++i) acc[0] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

struct Gate {
  const float *ln_w, *ln_b, *w1, *b1, *w2, *b2;
  int64_t hidden;  // the MLP's hidden width
  float ln_eps, max_shift;
};

// gating.GatingController.forward for one input: features (mean hidden state, log length, spread of token norms,
// each head's mean row entropy of the log block mass), LayerNorm, Linear-GELU-Linear, tanh · max_shift.
void gate_shift(const float* token_norms, const float* real_sum, const bool* real, int64_t n, int64_t C,
                const float* ent_mean, int64_t H, const Gate& g, float* shift, std::vector<float>& f,
                std::vector<float>& h1) {
  // token_norms (n,): ‖x_t‖; real_sum (C,): Σ over real tokens of x_t — both from vectorised ATen calls
  const int64_t F = C + 2 + H;
  f.assign(F, 0.0f);
  double length = 0.0, norm_sum = 0.0;
  for (int64_t t = 0; t < n; ++t)
    if (real[t]) length += 1.0, norm_sum += token_norms[t];
  const float len = static_cast<float>(std::max(length, 1.0));
  const float norm_mean = static_cast<float>(norm_sum) / len;
  double var = 0.0;
  for (int64_t t = 0; t < n; ++t)
    if (real[t]) var += static_cast<double>(token_norms[t] - norm_mean) * (token_norms[t] - norm_mean);
  for (int64_t c = 0; c < C; ++c) f[c] = real_sum[c] / len;
  f[C] = std::log(len);
  f[C + 1] = std::sqrt(static_cast<float>(var) / len + 1e-6f);
  for (int64_t h = 0; h < H; ++h) f[C + 2 + h] = ent_mean[h];
  // LayerNorm over the F features (biased variance, as torch)
  double mu = 0.0, v = 0.0;
  for (int64_t i = 0; i < F; ++i) mu += f[i];
  mu /= F;
  for (int64_t i = 0; i < F; ++i) v += (f[i] - mu) * (f[i] - mu);
  const double inv = 1.0 / std::sqrt(v / F + g.ln_eps);
  for (int64_t i = 0; i < F; ++i) f[i] = static_cast<float>((f[i] - mu) * inv) * g.ln_w[i] + g.ln_b[i];
  // Linear -> GELU (exact, erf) -> Linear -> tanh
  h1.assign(g.hidden, 0.0f);
  for (int64_t o = 0; o < g.hidden; ++o) {
    const double acc = g.b1[o] + dot(g.w1 + o * F, f.data(), F);
    h1[o] = static_cast<float>(0.5 * acc * (1.0 + std::erf(acc / std::sqrt(2.0))));
  }
  for (int64_t h = 0; h < H; ++h) {
    const double acc = g.b2[h] + dot(g.w2 + h * g.hidden, h1.data(), g.hidden);
    shift[h] = static_cast<float>(std::tanh(acc)) * g.max_shift;
  }
}

std::vector<at::Tensor> learned_policy(
    const at::Tensor& x_in, const at::Tensor& key_padding_in, const at::Tensor& w_qk, const at::Tensor& b_qk,
    int64_t num_heads, int64_t rank, double scale,
    const c10::optional<std::vector<at::Tensor>>& gate, double ln_eps, double max_shift, const at::Tensor& offset,
    const at::Tensor& budgets, int64_t block_size, bool dense_cls_row, double temperature) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() == 3 && x_in.scalar_type() == at::kFloat,
              "the fused policy takes CPU fp32 hidden states (B, n, d)");
  TORCH_CHECK(key_padding_in.scalar_type() == at::kBool && key_padding_in.dim() == 2, "key_padding must be bool (B, n)");
  const auto x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  const auto key_padding = key_padding_in.is_contiguous() ? key_padding_in : key_padding_in.contiguous();
  const int64_t B = x.size(0), n = x.size(1), C = x.size(2), H = num_heads, r = rank, b = block_size;
  const int64_t nb = (n + b - 1) / b, R = H * r;
  TORCH_CHECK(budgets.numel() == H && offset.numel() == H, "budgets and offset must have one entry per head");
  TORCH_CHECK(w_qk.dim() == 2 && w_qk.size(0) == C && w_qk.size(1) == 2 * R && b_qk.numel() == 2 * R,
              "scorer weights must be [W_q; W_k]^T, (d, 2 * H * rank), and their bias (2 * H * rank)");
  auto opts = at::TensorOptions().device(at::kCPU);
  const float* xp = x.data_ptr<float>();
  const bool* kp = key_padding.data_ptr<bool>();

  // -- block pooling (scoring.pool_blocks): mean of each block's real tokens, real-token counts ---------------
  // The same pass keeps what the gate needs from the tokens: each real token's norm and, per block, the sum of its
  // real tokens (their total over blocks is Σ_t x_t, the gate's mean hidden state times the length).
  auto counts_t = at::empty({B, nb}, opts.dtype(at::kFloat));
  auto pooled = at::empty({B * nb, C}, opts.dtype(at::kFloat));
  float* cnt = counts_t.data_ptr<float>();
  float* pp = pooled.data_ptr<float>();
  const bool gated = gate.has_value();
  std::vector<float> token_norms(gated ? B * n : 0), block_sums(gated ? B * nb * C : 0);
  at::parallel_for(0, B * nb, grain(2 * b * C), [&](int64_t lo, int64_t hi) {
    for (int64_t bj = lo; bj < hi; ++bj) {
      const int64_t bi = bj / nb, j = bj % nb;
      float* out = pp + bj * C;
      const float c = pool_block(xp + bi * n * C, kp + bi * n, j * b, std::min(n, (j + 1) * b), C, out,
                                 gated ? token_norms.data() + bi * n : nullptr);
      cnt[bj] = c;
      if (gated) std::copy(out, out + C, block_sums.begin() + bj * C);
      const float div = std::max(c, 1.0f);
      for (int64_t k = 0; k < C; ++k) out[k] /= div;
    }
  });

  // -- scorer features: the two low-rank projections (the only GEMMs) ------------------------------------------
  // One GEMM for both: [fq | fk] = pooled · [W_q; W_k]^T + [b_q; b_k], the weight pre-transposed to (d, 2·H·r) by
  // the caller (cached per parameter version: fused_policy.py) — a third cheaper than two addmm on W^T views.
  const auto fqk_t = at::addmm(as_float(b_qk), pooled, as_float(w_qk));  // (B * nb, 2 * H * r), contiguous
  TORCH_CHECK(fqk_t.is_contiguous());

  // -- scores, log block mass (scoring.block_log_mass) and the gate's row entropies: one pass per (input, head) -----
  // s_ij = <fq_i, fk_j> · scale per head (the Python scorer's (B, H, nb, r) @ (B, H, r, nb)), clamped, plus the
  // log real-token count of key block j, −inf on padded key blocks, then each row's log-softmax and (gated) its
  // entropy −Σ p·max(ℓ, −1e4), p = exp(ℓ) — vectorised over j (the key features transposed to (B, H, r, nb) first),
  // each row finished while it is in cache, in one parallel loop (each at::parallel_for region and ATen call is a
  // fixed cost that, at GLUE lengths, rivals the loop it runs).
  std::vector<float> log_counts(B * nb);
  for (int64_t bj = 0; bj < B * nb; ++bj) log_counts[bj] = std::log(std::max(cnt[bj], 1.0f));
  const float* fq = fqk_t.data_ptr<float>();  // row stride 2R: fq at column 0, fk at column R
  const float* fk = fq + R;
  std::vector<float> fkT(B * R * nb);  // (B, H, r, nb)
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t j = 0; j < nb; ++j)
      for (int64_t c = 0; c < R; ++c) fkT[(bi * R + c) * nb + j] = fk[(bi * nb + j) * 2 * R + c];
  auto log_mass = at::empty({B, H, nb, nb}, opts.dtype(at::kFloat));
  float* lmw = log_mass.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  std::vector<float> ent_mean(B * H, 0.0f);
  at::parallel_for(0, B * H, grain(nb * nb * (r + 8)), [&](int64_t lo, int64_t hi) {
    std::vector<float> e(nb);
    for (int64_t bh = lo; bh < hi; ++bh) {
      const int64_t bi = bh / H, h = bh % H;
      const double neg_ent = score_head(fq + bi * nb * 2 * R + h * r, 2 * R, fkT.data() + (bi * R + h * r) * nb, r,
                                        nb, sc, cnt + bi * nb, log_counts.data() + bi * nb, gated, e.data(),
                                        lmw + bh * nb * nb);
      ent_mean[bh] = static_cast<float>(-neg_ent / static_cast<double>(nb));
    }
  });

  // -- gate (gating.GatingController): one threshold shift per input and head ---------------------------------
  at::Tensor shift;
  if (gate.has_value()) {
    const auto& t = *gate;
    TORCH_CHECK(t.size() == 6, "gate parameters: ln_w, ln_b, w1, b1, w2, b2");
    std::vector<at::Tensor> p;
    for (const auto& w : t) p.push_back(as_float(w));
    TORCH_CHECK(p[0].numel() == C + 2 + H && p[2].size(1) == C + 2 + H && p[4].size(0) == H,
                "gate shapes must be LayerNorm(d + H + 2), Linear(d + H + 2, k), Linear(k, H)");
    const Gate g{p[0].data_ptr<float>(), p[1].data_ptr<float>(), p[2].data_ptr<float>(), p[3].data_ptr<float>(),
                 p[4].data_ptr<float>(), p[5].data_ptr<float>(), p[2].size(0), static_cast<float>(ln_eps),
                 static_cast<float>(max_shift)};
    shift = at::empty({B, H}, opts.dtype(at::kFloat));
    float* shw = shift.data_ptr<float>();
    std::vector<float> real_sum(B * C, 0.0f);  // Σ over real tokens of x_t, from the block sums
    for (int64_t bi = 0; bi < B; ++bi)
      for (int64_t j = 0; j < nb; ++j) {
        const float* bs = block_sums.data() + (bi * nb + j) * C;
        for (int64_t k = 0; k < C; ++k) real_sum[bi * C + k] += bs[k];
      }
    const float* tn = token_norms.data();
    const float* rs = real_sum.data();
    at::parallel_for(0, B, grain(n + (C + 2 + H) * g.hidden), [&](int64_t lo, int64_t hi) {
      std::vector<float> f, h1;
      for (int64_t bi = lo; bi < hi; ++bi)
        gate_shift(tn + bi * n, rs + bi * C, kp + bi * n, n, C, ent_mean.data() + bi * H, H, g, shw + bi * H, f, h1);
    });
  }

  // -- threshold, hard mask, compaction, statistics: one loop per (batch, head) -------------------------------
  auto hard = at::empty({B, H, nb, nb}, opts.dtype(at::kBool));  // every entry is written below
  auto kv_num_blocks = at::empty({B, H, nb}, opts.dtype(at::kInt));
  auto kv_indices = at::empty({B, H, nb, nb}, opts.dtype(at::kInt));
  auto keep_fraction = at::empty({B, H}, opts.dtype(at::kFloat));
  auto target_keep = at::empty({B, H}, opts.dtype(at::kFloat));
  auto kept_blocks = at::empty({B, H}, opts.dtype(at::kLong));
  std::vector<float> kept_pairs(B * H);  // per (input, head): real token pairs in kept blocks
  auto off = as_float(offset), bud = as_float(budgets);
  const float* lm = lmw;
  const float* offp = off.data_ptr<float>();
  const float* budp = bud.data_ptr<float>();
  const float* shp = shift.defined() ? shift.data_ptr<float>() : nullptr;
  bool* hp = hard.data_ptr<bool>();
  int32_t* nkb = kv_num_blocks.data_ptr<int32_t>();
  int32_t* kvi = kv_indices.data_ptr<int32_t>();
  float* kf = keep_fraction.data_ptr<float>();
  float* tk = target_keep.data_ptr<float>();
  int64_t* kb = kept_blocks.data_ptr<int64_t>();
  const float T = static_cast<float>(temperature);

  // Per input (shared by its heads): which pairs are real, floor (diagonal, [CLS] key column, optional [CLS] row)
  // or candidates, and how many.
  std::vector<uint8_t> floor_b(B * nb * nb), cand_b(B * nb * nb);
  std::vector<int64_t> n_real_b(B), n_floor_b(B);
  for (int64_t bi = 0; bi < B; ++bi) {
    const float* c = cnt + bi * nb;
    int64_t n_real = 0, n_floor = 0;
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t j = 0; j < nb; ++j) {
        const bool real = c[i] > 0 && c[j] > 0;
        const bool fl = real && (i == j || j == 0 || (dense_cls_row && i == 0));
        floor_b[(bi * nb + i) * nb + j] = fl;
        cand_b[(bi * nb + i) * nb + j] = real && !fl;
        n_real += real, n_floor += fl;
      }
    n_real_b[bi] = n_real, n_floor_b[bi] = n_floor;
  }

  at::parallel_for(0, B * H, grain(4 * nb * nb), [&](int64_t lo, int64_t hi) {
    std::vector<uint32_t> keys, survivors, next;
    std::vector<int32_t> tail(nb);
    std::vector<float> sig(nb);
    for (int64_t bh = lo; bh < hi; ++bh) {
      const int64_t bi = bh / H, h = bh % H;
      const uint8_t* is_floor = floor_b.data() + bi * nb * nb;
      const uint8_t* is_cand = cand_b.data() + bi * nb * nb;
      const float* L = lm + bh * nb * nb;
      // the candidates' clamped log mass, as order-preserving keys
      keys.resize(nb * nb);
      int64_t m = 0;
      for (int64_t p = 0; p < nb * nb; ++p) {  // branch-free gather
        keys[m] = order_key(std::min(std::max(L[p], -kBig), kBig));
        m += is_cand[p];
      }
      keys.resize(m);
      const float nr = static_cast<float>(n_real_b[bi]), nf = static_cast<float>(n_floor_b[bi]);
      // perforation: want = round((1 - s) · n_real) − n_floor, n_keep = min(max(want, 0), n_cand)
      const float want = std::nearbyint((1.0f - budp[h]) * nr) - nf;
      const int64_t n_keep = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(std::max(want, 0.0f)), 0), m);
      // _anchor_threshold: midway between the n_keep-th and (n_keep+1)-th largest candidate (sentinels ±2·BIG)
      float upper = 2 * kBig, lower = -2 * kBig;
      if (n_keep > 0) {
        const uint32_t up = kth_largest(keys, n_keep, survivors, next);
        upper = key_value(up);
        if (n_keep < m) lower = key_value(next_largest(keys, up, n_keep));
      } else if (m > 0) {
        lower = key_value(*std::max_element(keys.begin(), keys.end()));
      }
      float theta = (upper + lower) / 2.0f;
      theta = theta + offp[h];
      if (shp) theta = theta + shp[bh];
      double soft = 0.0;
      const int64_t kept = mask_head(L, is_floor, is_cand, nb, theta, T, hp + bh * nb * nb, nkb + bh * nb,
                                     kvi + bh * nb * nb, tail.data(), sig.data(), &soft);
      const float denom = std::max(nr, 1.0f);
      // relaxed keep fraction (a statistic; the sparsity loss's input in training): the floor counts 1 per pair,
      // each candidate σ(z / T), over the real pairs
      kf[bh] = static_cast<float>(static_cast<double>(nf) + soft) / denom;
      tk[bh] = std::max(1.0f - budp[h], nf / denom);
      kb[bh] = kept;
      // masks.token_level_sparsity's numerator: Σ over kept block pairs of (real tokens of i) · (real tokens of j).
      // Counts are integers and every partial sum stays below 2^24 for n ≤ 4096, so this fp32 sum is exact, as is
      // the Python expression's in any order.
      const float* c = cnt + bi * nb;
      const bool* hrow = hp + bh * nb * nb;
      float pairs = 0.0f;
      for (int64_t i = 0; i < nb; ++i) {
        float row = 0.0f;
        for (int64_t j = 0; j < nb; ++j) row += hrow[i * nb + j] ? c[j] : 0.0f;
        pairs += c[i] * row;
      }
      kept_pairs[bh] = pairs;
    }
  });
  // _summarise: achieved block sparsity per input over the real pairs of every head (fp32, as the Python path)
  auto block_sparsity = at::empty({B}, opts.dtype(at::kFloat));
  float* bsp = block_sparsity.data_ptr<float>();
  for (int64_t bi = 0; bi < B; ++bi) {
    float n_real_b = 0.0f;
    for (int64_t j = 0; j < nb; ++j) n_real_b += cnt[bi * nb + j] > 0.0f;
    int64_t kept_sum = 0;
    for (int64_t h = 0; h < H; ++h) kept_sum += kb[bi * H + h];
    const float real_pairs = std::max(n_real_b * n_real_b, 1.0f);
    bsp[bi] = 1.0f - static_cast<float>(kept_sum) / (real_pairs * static_cast<float>(H));
  }
  // masks.token_level_sparsity(hard, key_padding, b).mean(-1): the fraction of real token pairs skipped, averaged
  // over heads (the model's pair_sparsity output) — the per-head values are the Python expression's exactly (exact
  // integer sums, one IEEE division), their mean agrees with ATen's to rounding (summation order).
  auto pair_sparsity = at::empty({B}, opts.dtype(at::kFloat));
  float* psp = pair_sparsity.data_ptr<float>();
  for (int64_t bi = 0; bi < B; ++bi) {
    float tokens = 0.0f;
    for (int64_t j = 0; j < nb; ++j) tokens += cnt[bi * nb + j];
    const float total = std::max(tokens * tokens, 1.0f);
    float acc = 0.0f;
    for (int64_t h = 0; h < H; ++h) acc += 1.0f - kept_pairs[bi * H + h] / total;
    psp[bi] = acc / static_cast<float>(H);
  }
  return {hard, kv_num_blocks, kv_indices, keep_fraction, target_keep, block_sparsity, log_mass,
          shift.defined() ? shift : at::zeros({B, H}, opts.dtype(at::kFloat)), pair_sparsity};
}


// masked_sdpa's inputs on CPU (dendritic/kernels/masked_sdpa.py): the additive mask (B, H, n, n) fp32 — 0 where the
// block pair (i / b, j / b) is kept and key j is real, −inf elsewhere — and (B, H, n) bool: query row i has a real
// kept key.  One pass writing each query block's first row, then b − 1 row copies; the same values as the torch
// expression (a 6-D `where` with a 4-wide inner loop: ~20x slower at n = 128, as slow as the attention itself).
std::vector<at::Tensor> block_bias(const at::Tensor& keep_in, const c10::optional<at::Tensor>& key_padding_in,
                                   int64_t n, int64_t b) {
  TORCH_CHECK(keep_in.device().is_cpu() && keep_in.scalar_type() == at::kBool && keep_in.dim() == 4,
              "block_bias takes a CPU bool block mask (B, H, nb, nb)");
  const auto keep = keep_in.contiguous();
  const int64_t B = keep.size(0), H = keep.size(1), nb = keep.size(2);
  TORCH_CHECK(b >= 1 && nb == (n + b - 1) / b && keep.size(3) == nb, "block mask shape does not match n and b");
  at::Tensor pad;
  if (key_padding_in.has_value()) {
    pad = key_padding_in->to(at::kBool).contiguous();
    TORCH_CHECK(pad.dim() == 2 && pad.size(0) == B && pad.size(1) == n, "key padding mask must be (B, n)");
  }
  const bool* kp = pad.defined() ? pad.data_ptr<bool>() : nullptr;
  auto opts = at::TensorOptions().device(at::kCPU);
  auto bias = at::empty({B, H, n, n}, opts.dtype(at::kFloat));
  auto live = at::empty({B, H, n}, opts.dtype(at::kBool));
  const bool* K = keep.data_ptr<bool>();
  float* out = bias.data_ptr<float>();
  bool* lv = live.data_ptr<bool>();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B * H * nb, grain(b * n), [&](int64_t lo, int64_t hi) {
    for (int64_t idx = lo; idx < hi; ++idx) {
      const int64_t bh = idx / nb, i = idx % nb, bi = bh / H;
      const bool* krow = K + (bh * nb + i) * nb;
      const bool* real = kp ? kp + bi * n : nullptr;
      const int64_t r0 = i * b, r1 = std::min(n, r0 + b);
      float* first = out + (bh * n + r0) * n;
      bool any = false;
      for (int64_t jb = 0; jb < nb; ++jb) {
        const bool kept = krow[jb];
        for (int64_t j = jb * b; j < std::min(n, jb * b + b); ++j) {
          const bool ok = kept && (real == nullptr || real[j]);
          first[j] = ok ? 0.0f : neg_inf;
          any |= ok;
        }
      }
      for (int64_t r = r0 + 1; r < r1; ++r) std::memcpy(out + (bh * n + r) * n, first, n * sizeof(float));
      std::fill(lv + bh * n + r0, lv + bh * n + r1, any);
    }
  });
  return {bias, live};
}

}  // namespace
}  // namespace dendritic

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("learned_policy", &dendritic::learned_policy,
        "the learned policy's inference forward (see dendritic/fused_policy.py)", py::arg("x"), py::arg("key_padding"),
        py::arg("w_qk"), py::arg("b_qk"), py::arg("num_heads"), py::arg("rank"),
        py::arg("scale"), py::arg("gate"), py::arg("ln_eps"), py::arg("max_shift"), py::arg("offset"),
        py::arg("budgets"), py::arg("block_size"), py::arg("dense_cls_row"), py::arg("temperature"));
  m.def("block_bias", &dendritic::block_bias,
        "masked_sdpa's additive token mask and live query rows from a block mask (see dendritic/kernels/masked_sdpa.py)",
        py::arg("keep"), py::arg("key_padding"), py::arg("n"), py::arg("block_size"));
}
