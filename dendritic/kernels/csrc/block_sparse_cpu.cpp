// Fused block-sparse attention forward on the CPU: torch binding, runtime ISA dispatch and the portable kernel.
//
// Work is split into (batch, head, query block) tasks handed out dynamically (an atomic counter inside
// at::parallel_for), because rows keep uneven numbers of key blocks.  Each task walks only its kept key blocks,
// so time scales with kept blocks.  (On the AVX-512 path blocks under 16 tokens are grouped instead, 16 query rows
// a task over the union of their blocks' kept key blocks: see run_group_task in block_sparse_avx512.cpp; on the
// AVX2 path blocks under 8, 8 rows a task.)  Three code paths compute the same online-softmax algorithm:
//   * AVX-512 (fp32): block_sparse_avx512.cpp, per-function target attributes, chosen at run time when
//     __builtin_cpu_supports("avx512f") and ("fma");
//   * AVX2 (fp32): block_sparse_avx2.cpp, the same with 8-wide vectors, when ("avx2") and ("fma") but no AVX-512;
//   * portable (fp32, fp64): plain C++ below; fixed-width inner loops the compiler auto-vectorises for whatever
//     baseline ISA it targets (no -march flag), correct on any CPU.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "block_sparse_cpu.h"

namespace dendritic {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Portable kernel: the same tiles as the AVX-512 path (transposed query chunk, key-major score tile, online
// softmax), written as plain loops over W query rows.
constexpr int W = 16;    // query rows per chunk
constexpr int PKC = 32;  // keys per score tile

template <typename T>
void portable_task(const BlockSparseParams& p, int64_t task, T* Qt, T* Ot, T* S) {
  const int64_t d = p.d, n = p.n, bs = p.block_size, nb = p.nb;
  const int64_t bh = task / nb, qb = task % nb, b = bh / p.H;
  const T* Qh = static_cast<const T*>(p.q) + bh * n * d;
  const T* Kh = static_cast<const T*>(p.k) + bh * n * d;
  const T* Vh = static_cast<const T*>(p.v) + bh * n * d;
  T* Oh = static_cast<T*>(p.out) + bh * n * d;
  const int64_t nk = p.nblk[task];
  const int32_t* idx = p.idx + task * nb;
  const uint8_t* kvalid = p.key_valid ? p.key_valid + b * n : nullptr;
  const T c = static_cast<T>(p.scale);
  const T ninf = -std::numeric_limits<T>::infinity();

  const int64_t q0 = qb * bs, qrows = std::min(bs, n - q0);
  for (int64_t r0 = 0; r0 < qrows; r0 += W) {
    const int64_t rows = std::min<int64_t>(W, qrows - r0);
    const T* Qr = Qh + (q0 + r0) * d;
    for (int64_t e = 0; e < d; ++e)
      for (int i = 0; i < W; ++i) Qt[e * W + i] = i < rows ? Qr[i * d + e] * c : T(0);
    std::fill(Ot, Ot + d * W, T(0));
    T m[W], l[W];
    for (int i = 0; i < W; ++i) m[i] = ninf, l[i] = T(0);
    for (int64_t s = 0; s < nk; ++s) {
      const int64_t k0 = (int64_t)idx[s] * bs, kcount = std::min(bs, n - k0);
      for (int64_t c0 = 0; c0 < kcount; c0 += PKC) {
        const int64_t kc = std::min<int64_t>(PKC, kcount - c0);
        const T* Kc = Kh + (k0 + c0) * d;
        const T* Vc = Vh + (k0 + c0) * d;
        T mt[W];
        for (int i = 0; i < W; ++i) mt[i] = ninf;
        for (int64_t j = 0; j < kc; ++j) {
          T* Sj = S + j * W;
          if (kvalid && !kvalid[k0 + c0 + j]) {
            for (int i = 0; i < W; ++i) Sj[i] = ninf;
            continue;
          }
          T acc[W] = {};
          for (int64_t e = 0; e < d; ++e) {
            const T kv = Kc[j * d + e];
            for (int i = 0; i < W; ++i) acc[i] += kv * Qt[e * W + i];
          }
          for (int i = 0; i < W; ++i) Sj[i] = acc[i], mt[i] = std::max(mt[i], acc[i]);
        }
        T mu[W], alpha[W], rs[W] = {};
        for (int i = 0; i < W; ++i) {
          const T mn = std::max(m[i], mt[i]);
          mu[i] = mn == ninf ? T(0) : mn;  // no live key yet: subtract 0, never -inf - -inf
          alpha[i] = std::exp(m[i] - mu[i]);
          m[i] = mn;
        }
        for (int64_t j = 0; j < kc; ++j)
          for (int i = 0; i < W; ++i) {
            const T pr = std::exp(S[j * W + i] - mu[i]);
            S[j * W + i] = pr;
            rs[i] += pr;
          }
        for (int i = 0; i < W; ++i) l[i] = l[i] * alpha[i] + rs[i];
        for (int64_t e = 0; e < d; ++e) {
          T acc[W];
          for (int i = 0; i < W; ++i) acc[i] = Ot[e * W + i] * alpha[i];
          for (int64_t j = 0; j < kc; ++j) {
            const T vv = Vc[j * d + e];
            for (int i = 0; i < W; ++i) acc[i] += vv * S[j * W + i];
          }
          for (int i = 0; i < W; ++i) Ot[e * W + i] = acc[i];
        }
      }
    }
    T* Or = Oh + (q0 + r0) * d;
    for (int64_t i = 0; i < rows; ++i) {
      const T inv = l[i] > T(0) ? T(1) / l[i] : T(0);  // no live key: zeros, never NaN
      for (int64_t e = 0; e < d; ++e) Or[i * d + e] = Ot[e * W + i] * inv;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Dispatch.
enum Isa : int64_t { kAuto = 0, kPortable = 1, kAvx512 = 2, kAvx2 = 3 };

bool cpu_has_avx512() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = avx512_compiled() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = avx2_compiled() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// Which path a call with this dtype and ISA request takes ("avx512" or "portable"); raises if impossible.
std::string resolve_isa(at::ScalarType dtype, int64_t isa) {
  TORCH_CHECK(isa == kAuto || isa == kPortable || isa == kAvx512 || isa == kAvx2,
              "isa must be 0 (auto), 1 (portable), 2 (avx512) or 3 (avx2)");
  if (isa == kPortable) return "portable";
  if (isa == kAvx512) {
    TORCH_CHECK(cpu_has_avx512(), "the AVX-512 path was requested but this CPU/build has no AVX-512F+FMA");
    TORCH_CHECK(dtype == at::kFloat, "the AVX-512 path is fp32 only");
    return "avx512";
  }
  if (isa == kAvx2) {
    TORCH_CHECK(cpu_has_avx2(), "the AVX2 path was requested but this CPU/build has no AVX2+FMA");
    TORCH_CHECK(dtype == at::kFloat, "the AVX2 path is fp32 only");
    return "avx2";
  }
  if (dtype != at::kFloat) return "portable";
  return cpu_has_avx512() ? "avx512" : cpu_has_avx2() ? "avx2" : "portable";
}

template <typename Fn>
void run_tasks(int64_t ntasks, Fn&& per_thread) {
  std::atomic<int64_t> next{0};
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntasks));
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) { per_thread(next); });
}

struct AlignedBuffer {
  void* ptr;
  explicit AlignedBuffer(size_t bytes) : ptr(std::aligned_alloc(64, (bytes + 63) / 64 * 64)) {
    TORCH_CHECK(ptr != nullptr, "out of memory allocating kernel scratch");
  }
  ~AlignedBuffer() { std::free(ptr); }
};

// Hands out tasks 0..ntasks-1 to the threads; each thread owns one 64-byte-aligned scratch of `elems` elements of
// T (zero-filled once when `zeroed`: the grouped paths rely on unused lanes/keys of their scratch starting at 0)
// and calls task_fn(task, scratch) for every task it takes.
template <typename T, typename Fn>
void run_with_scratch(int64_t ntasks, int64_t elems, bool zeroed, Fn&& task_fn) {
  run_tasks(ntasks, [&](std::atomic<int64_t>& next) {
    AlignedBuffer buf(elems * sizeof(T));
    if (zeroed) std::memset(buf.ptr, 0, elems * sizeof(T));
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < ntasks;)
      task_fn(t, static_cast<T*>(buf.ptr));
  });
}

torch::Tensor forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor kv_num_blocks,
                      torch::Tensor kv_indices, c10::optional<torch::Tensor> key_padding_mask, int64_t block_size,
                      double scale, int64_t isa) {
  // Arguments were validated by dendritic.kernels.block_sparse_attention; these checks guard memory safety only.
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "cpu backend needs CPU tensors");
  TORCH_CHECK(q.dim() == 4 && q.sizes() == k.sizes() && q.sizes() == v.sizes(), "q, k, v must share a 4-D shape");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "q, k, v must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "q, k, v dtypes differ");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "the cpu kernel computes in fp32 or fp64 (fp16/bf16 are upcast by dendritic.kernels.cpu)");
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), d = q.size(3);
  TORCH_CHECK(block_size > 0 && d > 0 && n > 0, "empty input or bad block_size");
  const int64_t nb = (n + block_size - 1) / block_size;
  TORCH_CHECK(kv_num_blocks.scalar_type() == at::kInt && kv_num_blocks.is_contiguous() &&
                  kv_num_blocks.sizes() == at::IntArrayRef({B, H, nb}),
              "kv_num_blocks must be contiguous int32 (B, H, nb)");
  TORCH_CHECK(kv_indices.scalar_type() == at::kInt && kv_indices.is_contiguous() &&
                  kv_indices.sizes() == at::IntArrayRef({B, H, nb, nb}),
              "kv_indices must be contiguous int32 (B, H, nb, nb)");
  const std::string path = resolve_isa(q.scalar_type(), isa);

  auto out = torch::empty_like(q);
  BlockSparseParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.nblk = kv_num_blocks.data_ptr<int32_t>();
  p.idx = kv_indices.data_ptr<int32_t>();
  p.B = B, p.H = H, p.n = n, p.d = d, p.block_size = block_size, p.nb = nb, p.scale = scale;

  std::vector<uint8_t> key_valid, block_full;
  if (key_padding_mask.has_value() && key_padding_mask->defined()) {
    auto kpm = key_padding_mask->contiguous();
    TORCH_CHECK(kpm.scalar_type() == at::kBool && kpm.sizes() == at::IntArrayRef({B, n}),
                "key_padding_mask must be bool (B, n)");
    const bool* src = kpm.data_ptr<bool>();
    key_valid.assign(src, src + B * n);
    block_full.assign(B * nb, 1);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < n; ++t)
        if (!key_valid[b * n + t]) block_full[b * nb + t / block_size] = 0;
    p.key_valid = key_valid.data();
    p.block_full = block_full.data();
  }

  const int64_t ntasks = B * H * nb;
  if (path == "avx512" && block_size < 16) {  // small blocks: groups of query blocks fill the 16 lanes
    run_with_scratch<float>(avx512_group_tasks(p), avx512_scratch_floats(p), /*zeroed=*/true,
                            [&](int64_t t, float* s) { avx512_run_group_task(p, t, s); });
  } else if (path == "avx512") {
    run_with_scratch<float>(ntasks, avx512_scratch_floats(p), /*zeroed=*/false,
                            [&](int64_t t, float* s) { avx512_run_task(p, t, s); });
  } else if (path == "avx2" && block_size < 8) {  // small blocks: groups of query blocks fill the 8 lanes
    run_with_scratch<float>(avx2_group_tasks(p), avx2_scratch_floats(p), /*zeroed=*/true,
                            [&](int64_t t, float* s) { avx2_run_group_task(p, t, s); });
  } else if (path == "avx2") {
    run_with_scratch<float>(ntasks, avx2_scratch_floats(p), /*zeroed=*/false,
                            [&](int64_t t, float* s) { avx2_run_task(p, t, s); });
  } else {
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "block_sparse_portable", [&] {
      run_with_scratch<scalar_t>(ntasks, 2 * d * W + PKC * W, /*zeroed=*/false, [&](int64_t t, scalar_t* Qt) {
        portable_task<scalar_t>(p, t, Qt, Qt + d * W, Qt + 2 * d * W);
      });
    });
  }
  return out;
}

}  // namespace
}  // namespace dendritic

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &dendritic::forward, "block-sparse attention forward (see dendritic/kernels/cpu.py)",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kv_num_blocks"), py::arg("kv_indices"),
        py::arg("key_padding_mask"), py::arg("block_size"), py::arg("scale"), py::arg("isa"));
  m.def("resolve_isa", [](const std::string& dtype, int64_t isa) {
    return dendritic::resolve_isa(dtype == "float32" ? at::kFloat : at::kDouble, isa);
  }, "which code path a call of this dtype ('float32'/'float64') and isa request runs", py::arg("dtype"), py::arg("isa"));
}
