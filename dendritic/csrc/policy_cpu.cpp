// The learned policy's inference forward in one C++ call: block scorer, gate, input-dependent threshold, hard mask,
// the kernels' compact layout and the per-input statistics.  It is the same function as the Python modules
// (dendritic/scoring.py, gating.py, perforation.py, masks.py, kernels/layout.py) evaluated with hard masks:
//
//   * every floating-point quantity the decision depends on (block pooling, scorer features, log block mass, gate
//     features, LayerNorm + MLP shift) is computed with the SAME ATen operations, in the same order, as the Python
//     code — so the values are bit-identical, only the Python dispatch between them is gone;
//   * the discrete part — the anchor threshold (the budget's order statistic: nth_element instead of a full sort),
//     the comparison, the safety floor, the compaction into kv_num_blocks / kv_indices and the block counts — is
//     one loop per (batch, head), computing each float exactly as the Python expression does (fp32, no FMA
//     contraction: this file is compiled with -ffp-contract=off).
//
// Hence the hard mask, the compact layout and the achieved block sparsity equal the Python path's exactly
// (tests/test_policy_fused.py); the relaxed keep fraction (a statistic for the sparsity loss, unused at inference)
// is summed in another order and agrees to float tolerance.  Training keeps the Python path (it is differentiable).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace dendritic {
namespace {

constexpr float kBig = 1e4f;  // perforation._BIG: log-mass values are clamped to ±kBig

struct Gate {
  at::Tensor ln_w, ln_b, w1, b1, w2, b2;
  double ln_eps, max_shift;
};

// scoring.block_log_mass(scores, counts)
at::Tensor block_log_mass(const at::Tensor& scores, const at::Tensor& counts) {
  auto log_counts = at::log(counts.clamp_min(1.0));                                        // (B, nb)
  auto s = scores.to(at::kFloat).clamp(-1e4, 1e4) + log_counts.unsqueeze(1).unsqueeze(1);  // (B, H, nb, nb)
  s = s.masked_fill(counts.eq(0).unsqueeze(1).unsqueeze(1), -std::numeric_limits<double>::infinity());
  return at::log_softmax(s, -1);
}

// gating.GatingController.forward(hidden, key_padding, log_mass) -> shift (B, H)
at::Tensor gate_shift(const at::Tensor& x, const at::Tensor& key_padding, const at::Tensor& log_mass, const Gate& g) {
  auto real = key_padding.unsqueeze(-1).to(x.scalar_type());                  // (B, n, 1)
  auto length = real.sum(1).clamp_min(1.0);                                     // (B, 1)
  auto mean = (x * real).sum(1) / length;                                       // (B, d)
  auto norms = at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/true);            // (B, n, 1)
  auto norm_mean = (norms * real).sum(1) / length;                              // (B, 1)
  auto norm_std = (((at::pow(norms - norm_mean.unsqueeze(1), 2) * real).sum(1) / length) + 1e-6).sqrt();
  auto p = log_mass.exp();
  auto entropy = -(p * log_mass.clamp_min(-1e4)).sum(-1);                      // (B, H, nb)
  auto f = at::cat({mean, length.log(), norm_std, entropy.mean(-1).to(mean.scalar_type())}, -1);
  auto h = at::layer_norm(f, {f.size(-1)}, g.ln_w, g.ln_b, g.ln_eps);
  h = at::gelu(at::linear(h, g.w1, g.b1));
  return at::tanh(at::linear(h, g.w2, g.b2)) * g.max_shift;
}

std::vector<at::Tensor> learned_policy(
    const at::Tensor& x, const at::Tensor& key_padding, const at::Tensor& wq, const at::Tensor& bq,
    const at::Tensor& wk, const at::Tensor& bk, int64_t num_heads, int64_t rank, double scale,
    const c10::optional<std::vector<at::Tensor>>& gate, double ln_eps, double max_shift, const at::Tensor& offset,
    const at::Tensor& budgets, int64_t block_size, bool dense_cls_row, double temperature) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3, "the fused policy takes CPU hidden states (B, n, d)");
  TORCH_CHECK(key_padding.scalar_type() == at::kBool && key_padding.dim() == 2, "key_padding must be bool (B, n)");
  const int64_t B = x.size(0), n = x.size(1), C = x.size(2), H = num_heads, b = block_size;
  const int64_t nb = (n + b - 1) / b;
  TORCH_CHECK(budgets.numel() == H && offset.numel() == H, "budgets and offset must have one entry per head");

  // -- scorer (scoring.pool_blocks, ImportanceScorer.forward) and log block mass ------------------------------
  auto counts = at::constant_pad_nd(key_padding.to(at::kFloat), {0, nb * b - n}).view({B, nb, b}).sum(-1);  // (B, nb)
  auto xm = x * key_padding.unsqueeze(-1).to(x.scalar_type());
  xm = at::constant_pad_nd(xm, {0, 0, 0, nb * b - n});
  auto pooled = xm.view({B, nb, b, C}).sum(2) / counts.clamp_min(1.0).unsqueeze(-1).to(x.scalar_type());
  auto fq = at::linear(pooled, wq, bq).view({B, nb, H, rank}).transpose(1, 2);  // (B, H, nb, r)
  auto fk = at::linear(pooled, wk, bk).view({B, nb, H, rank}).transpose(1, 2);
  auto scores = at::matmul(fq, fk.transpose(-1, -2)) * scale;                   // (B, H, nb, nb)
  auto log_mass = block_log_mass(scores, counts).contiguous();                   // fp32

  at::Tensor shift;
  if (gate.has_value()) {
    const auto& t = *gate;
    TORCH_CHECK(t.size() == 6, "gate parameters: ln_w, ln_b, w1, b1, w2, b2");
    shift = gate_shift(x, key_padding, log_mass, Gate{t[0], t[1], t[2], t[3], t[4], t[5], ln_eps, max_shift})
                .to(at::kFloat).contiguous();
  }

  // -- threshold, hard mask, compaction, statistics: one loop per (batch, head) -------------------------------
  auto opts = at::TensorOptions().device(at::kCPU);
  auto hard = at::zeros({B, H, nb, nb}, opts.dtype(at::kBool));
  auto kv_num_blocks = at::empty({B, H, nb}, opts.dtype(at::kInt));
  auto kv_indices = at::empty({B, H, nb, nb}, opts.dtype(at::kInt));
  auto keep_fraction = at::empty({B, H}, opts.dtype(at::kFloat));
  auto target_keep = at::empty({B, H}, opts.dtype(at::kFloat));
  auto kept_blocks = at::empty({B, H}, opts.dtype(at::kLong));
  auto counts_c = counts.contiguous();
  auto off = offset.to(at::kFloat).contiguous(), bud = budgets.to(at::kFloat).contiguous();
  const float* lm = log_mass.data_ptr<float>();
  const float* cnt = counts_c.data_ptr<float>();
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
      if (n_keep < m) {
        std::nth_element(cand.begin() + n_keep, cand.begin() + n_keep, cand.end(), std::greater<float>());
        lower = *std::max_element(cand.begin() + n_keep, cand.end());
      }
      float theta = (upper + lower) / 2.0f;
      theta = theta + offp[h];
      if (shp) theta = theta + shp[bh];
      // hard mask [z > 0] ∪ floor over real pairs; relaxed keep fraction σ(z / T) (floor counts 1)
      bool* Hm = hp + bh * nb * nb;
      int32_t* cnt_row = nkb + bh * nb;
      int32_t* idx = kvi + bh * nb * nb;
      int64_t kept = 0;
      double soft_sum = 0.0;
      for (int64_t i = 0; i < nb; ++i) {
        int32_t* row = idx + i * nb;
        int32_t k = 0;
        for (int64_t j = 0; j < nb; ++j) {
          const int64_t p = i * nb + j;
          bool keep = is_floor[p];
          if (is_cand[p]) {
            const float z = std::min(std::max(L[p], -kBig), kBig) - theta;
            keep = z > 0.0f;
            soft_sum += 1.0 / (1.0 + std::exp(-static_cast<double>(z / T)));
          } else if (is_floor[p]) {
            soft_sum += 1.0;
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
      kf[bh] = static_cast<float>(soft_sum) / denom;
      tk[bh] = std::max(1.0f - budp[h], nf / denom);
      kb[bh] = kept;
    }
  });
  // _summarise: achieved block sparsity per input over the real pairs of every head
  auto n_real_b = (counts > 0).sum(-1).to(at::kFloat);                               // (B,) real blocks
  auto real_pairs = (n_real_b * n_real_b).clamp_min(1.0);
  auto block_sparsity = 1.0 - kept_blocks.sum(-1).to(at::kFloat) / (real_pairs * static_cast<double>(H));
  return {hard, kv_num_blocks, kv_indices, keep_fraction, target_keep, block_sparsity, log_mass};
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
