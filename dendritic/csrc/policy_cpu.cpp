// The learned policy's inference forward in one C++ call: block pooling, scorer, log block mass, gate, the
// input-dependent threshold, hard mask, the kernels' compact layout and the per-input statistics.  It is the same
// function as the Python modules (dendritic/scoring.py, gating.py, perforation.py, masks.py, kernels/layout.py)
// evaluated with hard masks, written as plain loops so that a layer costs a handful of ATen dispatches (the two
// scorer GEMMs and the output allocations) instead of ~60 — at GLUE lengths the dispatches, not the arithmetic,
// were the policy's cost.
//
//   * The floating-point part (pooling, scorer features, scores, log block mass, gate features, LayerNorm, MLP,
//     tanh) follows the Python expressions term by term but not ATen's reduction order, so its values agree with
//     the Python path to float rounding (~1e-6 relative), not bit for bit.
//   * The discrete part — the anchor threshold (the budget's order statistic: nth_element instead of a full
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
#include <functional>
#include <limits>
#include <vector>

namespace dendritic {
namespace {

constexpr float kBig = 1e4f;  // perforation._BIG: log-mass values are clamped to ±kBig

// t as contiguous fp32 — without an ATen dispatch when it already is (the parameters always are).
at::Tensor as_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.is_contiguous() ? t : t.to(at::kFloat).contiguous();
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
    double acc = g.b1[o];
    const float* w = g.w1 + o * F;
    for (int64_t i = 0; i < F; ++i) acc += static_cast<double>(w[i]) * f[i];
    h1[o] = static_cast<float>(0.5 * acc * (1.0 + std::erf(acc / std::sqrt(2.0))));
  }
  for (int64_t h = 0; h < H; ++h) {
    double acc = g.b2[h];
    const float* w = g.w2 + h * g.hidden;
    for (int64_t o = 0; o < g.hidden; ++o) acc += static_cast<double>(w[o]) * h1[o];
    shift[h] = static_cast<float>(std::tanh(acc)) * g.max_shift;
  }
}

std::vector<at::Tensor> learned_policy(
    const at::Tensor& x_in, const at::Tensor& key_padding_in, const at::Tensor& wq, const at::Tensor& bq,
    const at::Tensor& wk, const at::Tensor& bk, int64_t num_heads, int64_t rank, double scale,
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
  TORCH_CHECK(wq.size(0) == R && wk.size(0) == R && wq.size(1) == C, "scorer weights must be (H * rank, d)");
  auto opts = at::TensorOptions().device(at::kCPU);
  const float* xp = x.data_ptr<float>();
  const bool* kp = key_padding.data_ptr<bool>();

  // -- block pooling (scoring.pool_blocks): mean of each block's real tokens, real-token counts ---------------
  auto counts_t = at::empty({B, nb}, opts.dtype(at::kFloat));
  auto pooled = at::empty({B * nb, C}, opts.dtype(at::kFloat));
  float* cnt = counts_t.data_ptr<float>();
  float* pp = pooled.data_ptr<float>();
  at::parallel_for(0, B * nb, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t bj = lo; bj < hi; ++bj) {
      const int64_t bi = bj / nb, j = bj % nb;
      float* out = pp + bj * C;
      std::fill(out, out + C, 0.0f);
      float c = 0.0f;
      for (int64_t t = j * b; t < std::min(n, (j + 1) * b); ++t)
        if (kp[bi * n + t]) {
          c += 1.0f;
          const float* xt = xp + (bi * n + t) * C;
          for (int64_t k = 0; k < C; ++k) out[k] += xt[k];
        }
      cnt[bj] = c;
      const float div = std::max(c, 1.0f);
      for (int64_t k = 0; k < C; ++k) out[k] /= div;
    }
  });

  // -- scorer features: the two low-rank projections (the only GEMMs) ------------------------------------------
  const auto fq_t = at::addmm(bq, pooled, wq.t());  // (B * nb, H * r), contiguous
  const auto fk_t = at::addmm(bk, pooled, wk.t());
  TORCH_CHECK(fq_t.is_contiguous() && fk_t.is_contiguous());

  // -- scores and log block mass (scoring.block_log_mass), row entropies for the gate ---------------------------
  // Scores by one batched GEMM (as the Python scorer: (B, H, nb, r) @ (B, H, r, nb), then the scale); the clamp,
  // the log-count term and the padding mask in one loop; the transcendental work in two vectorised ATen calls
  // (log_softmax, exp) over the whole (B, H, nb, nb) tensor — per element ~10x cheaper than libm calls.
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> log_counts(B * nb);
  for (int64_t bj = 0; bj < B * nb; ++bj) log_counts[bj] = std::log(std::max(cnt[bj], 1.0f));
  auto scores = at::matmul(fq_t.view({B, nb, H, r}).transpose(1, 2), fk_t.view({B, nb, H, r}).permute({0, 2, 3, 1}))
                    .contiguous();  // (B, H, nb, nb)
  float* sp = scores.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * H, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t bh = lo; bh < hi; ++bh) {
      const int64_t bi = bh / H;
      const float* c = cnt + bi * nb;
      const float* lc = log_counts.data() + bi * nb;
      for (int64_t i = 0; i < nb; ++i) {
        float* row = sp + (bh * nb + i) * nb;
        for (int64_t j = 0; j < nb; ++j)
          row[j] = c[j] == 0.0f ? neg_inf : std::min(std::max(row[j] * sc, -1e4f), 1e4f) + lc[j];
      }
    }
  });
  auto log_mass = at::log_softmax(scores, -1);  // block 0 is always real: every row has a finite entry
  const float* lmw = log_mass.data_ptr<float>();
  std::vector<float> ent_mean(B * H, 0.0f);
  if (gate.has_value()) {  // each head's mean row entropy −Σ p·max(ℓ, −1e4), p = exp(ℓ) (0 on padded keys)
    const auto prob = at::exp(log_mass);
    const float* pp2 = prob.data_ptr<float>();
    at::parallel_for(0, B * H, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t bh = lo; bh < hi; ++bh) {
        double ent_sum = 0.0;
        for (int64_t e = bh * nb * nb; e < (bh + 1) * nb * nb; ++e)
          ent_sum -= static_cast<double>(pp2[e]) * std::max(lmw[e], -1e4f);
        ent_mean[bh] = static_cast<float>(ent_sum / static_cast<double>(nb));
      }
    });
  }

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
    const auto token_norms = at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/false);              // (B, n)
    const auto real_sum = at::bmm(key_padding.to(at::kFloat).unsqueeze(1), x).contiguous();      // (B, 1, C)
    const float* tn = token_norms.data_ptr<float>();
    const float* rs = real_sum.data_ptr<float>();
    at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
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
  auto off = as_float(offset), bud = as_float(budgets);
  const float* lm = lmw;
  auto zbuf = at::empty({B, H, nb, nb}, opts.dtype(at::kFloat));  // z / T of the candidates, −inf elsewhere
  float* zb = zbuf.data_ptr<float>();
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

  at::parallel_for(0, B * H, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> cand;
    std::vector<uint8_t> is_floor(nb * nb), is_cand(nb * nb);
    for (int64_t bh = lo; bh < hi; ++bh) {
      const int64_t bi = bh / H, h = bh % H;
      const float* c = cnt + bi * nb;
      // pair_real, floor and candidates of this input (the floor: diagonal, [CLS] key column, optional [CLS] row)
      int64_t n_real = 0, n_floor = 0;
      cand.clear();
      const float* L = lm + bh * nb * nb;
      for (int64_t i = 0; i < nb; ++i)
        for (int64_t j = 0; j < nb; ++j) {
          const bool real = c[i] > 0 && c[j] > 0;
          const bool fl = real && (i == j || j == 0 || (dense_cls_row && i == 0));
          is_floor[i * nb + j] = fl;
          is_cand[i * nb + j] = real && !fl;
          n_real += real, n_floor += fl;
          if (real && !fl) cand.push_back(std::min(std::max(L[i * nb + j], -kBig), kBig));
        }
      const int64_t m = static_cast<int64_t>(cand.size());
      const float nr = static_cast<float>(n_real), nf = static_cast<float>(n_floor);
      // perforation: want = round((1 - s) · n_real) − n_floor, n_keep = min(max(want, 0), n_cand)
      const float want = std::nearbyint((1.0f - budp[h]) * nr) - nf;
      const int64_t n_keep = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(std::max(want, 0.0f)), 0), m);
      // _anchor_threshold: midway between the n_keep-th and (n_keep+1)-th largest candidate (sentinels ±2·BIG)
      float upper = 2 * kBig, lower = -2 * kBig;
      if (n_keep > 0) {
        std::nth_element(cand.begin(), cand.begin() + (n_keep - 1), cand.end(), std::greater<float>());
        upper = cand[n_keep - 1];
      }
      if (n_keep < m)  // after the partition above, the (n_keep+1)-th largest is the largest of the rest
        lower = *std::max_element(cand.begin() + n_keep, cand.end());
      float theta = (upper + lower) / 2.0f;
      theta = theta + offp[h];
      if (shp) theta = theta + shp[bh];
      // hard mask [z > 0] ∪ floor over real pairs; relaxed keep fraction σ(z / T) (floor counts 1)
      bool* Hm = hp + bh * nb * nb;
      int32_t* cnt_row = nkb + bh * nb;
      int32_t* idx = kvi + bh * nb * nb;
      int64_t kept = 0;
      float* Z = zb + bh * nb * nb;
      for (int64_t i = 0; i < nb; ++i) {
        int32_t* row = idx + i * nb;
        int32_t k = 0;
        for (int64_t j = 0; j < nb; ++j) {
          const int64_t p = i * nb + j;
          bool keep = is_floor[p];
          Z[p] = -std::numeric_limits<float>::infinity();
          if (is_cand[p]) {
            const float z = std::min(std::max(L[p], -kBig), kBig) - theta;
            keep = z > 0.0f;
            Z[p] = z / T;
          }
          Hm[p] = keep;
          if (keep) row[k++] = static_cast<int32_t>(j);
        }
        cnt_row[i] = k;
        kept += k;
        for (int64_t j = 0, s = k; j < nb; ++j)  // the skipped blocks fill the tail, ascending (layout.py)
          if (!Hm[i * nb + j]) row[s++] = static_cast<int32_t>(j);
      }
      const float denom = std::max(nr, 1.0f);
      kf[bh] = nf;  // the floor counts 1 per pair; the candidates' σ(z / T) are added below
      tk[bh] = std::max(1.0f - budp[h], nf / denom);
      kb[bh] = kept;
    }
  });
  // relaxed keep fraction (a statistic; the sparsity loss's input in training): (#floor + Σ_cand σ(z / T)) / #real,
  // the sigmoids in one vectorised call (σ(−inf) = 0 off the candidates)
  const auto soft = at::sigmoid(zbuf);
  const float* so = soft.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t bh = lo; bh < hi; ++bh) {
      double acc = kf[bh];
      for (int64_t e = bh * nb * nb; e < (bh + 1) * nb * nb; ++e) acc += so[e];
      float n_real_b = 0.0f;
      for (int64_t j = 0; j < nb; ++j) n_real_b += cnt[(bh / H) * nb + j] > 0.0f;
      kf[bh] = static_cast<float>(acc) / std::max(n_real_b * n_real_b, 1.0f);
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
  return {hard, kv_num_blocks, kv_indices, keep_fraction, target_keep, block_sparsity, log_mass,
          shift.defined() ? shift : at::zeros({B, H}, opts.dtype(at::kFloat))};
}

}  // namespace
}  // namespace dendritic

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("learned_policy", &dendritic::learned_policy,
        "the learned policy's inference forward (see dendritic/fused_policy.py)", py::arg("x"), py::arg("key_padding"),
        py::arg("wq"), py::arg("bq"), py::arg("wk"), py::arg("bk"), py::arg("num_heads"), py::arg("rank"),
        py::arg("scale"), py::arg("gate"), py::arg("ln_eps"), py::arg("max_shift"), py::arg("offset"),
        py::arg("budgets"), py::arg("block_size"), py::arg("dense_cls_row"), py::arg("temperature"));
}
