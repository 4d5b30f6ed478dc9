// Host stand-in for CUDA's WMMA API (nvcuda::wmma, <mma.h>) under cuda_shim.h: the tensor-core kernels compile with
// g++ and run on the CPU, unmodified (tests/test_cuda_shim.py).
//
// Contract kept from the device API: fragments are warp-wide, every lane of the warp calls load/store/mma with the
// same arguments; a fragment's element layout is unspecified (here: lane L holds elements 8L .. 8L+7 of the 16x16
// matrix in row-major order — a kernel that relied on the device's layout would fail here); mma_sync computes
// D = A·B + C with the products of the fp16/bf16 inputs formed exactly and accumulated in fp32.
// -DSHIM_WMMA_DROP_C makes mma_sync ignore C (D = A·B): a deliberately broken tensor core, the test of the test.
#pragma once

#include "../cuda_shim.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the shim implements m16n16k16 only");
    static constexpr int num_elements = 8;  // 256 elements over 32 lanes
    T x[num_elements];
};

namespace detail {
inline int lane() { return static_cast<int>(threadIdx.x % 32); }
inline float as_float(float v) { return v; }
inline float as_float(__half v) { return __half2float(v); }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
// Element (r, c) of a 16x16 matrix stored with leading dimension ldm.
inline long at(int r, int c, unsigned ldm, bool row_major) { return row_major ? r * (long)ldm + c : c * (long)ldm + r; }
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename L, typename V>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& value) {
    for (int e = 0; e < 8; ++e) f.x[e] = static_cast<T>(value);
}

template <typename Use, typename T, typename L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
    static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load needs a layout");
    constexpr bool by_rows = std::is_same_v<L, wmma::row_major>;
    for (int e = 0; e < 8; ++e) {
        const int idx = detail::lane() * 8 + e;
        f.x[e] = p[detail::at(idx / 16, idx % 16, ldm, by_rows)];
    }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout) {
    for (int e = 0; e < 8; ++e) {
        const int idx = detail::lane() * 8 + e;
        f.x[e] = p[detail::at(idx / 16, idx % 16, ldm, layout == mem_row_major)];
    }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout) {
    for (int e = 0; e < 8; ++e) {
        const int idx = detail::lane() * 8 + e;
        p[detail::at(idx / 16, idx % 16, ldm, layout == mem_row_major)] = f.x[e];
    }
}

// D = A·B + C over the warp: every lane publishes its parts of A, B and C, then computes its own 8 outputs.
template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
    cuda_shim::Warp& w = *cuda_shim::warps[threadIdx.x / 32];
    const int lane = detail::lane();
    for (int e = 0; e < 8; ++e) {
        w.mma_a[lane * 8 + e] = detail::as_float(a.x[e]);  // exact: fp16/bf16 values are fp32 values
        w.mma_b[lane * 8 + e] = detail::as_float(b.x[e]);
        w.mma_c[lane * 8 + e] = c.x[e];
    }
    w.bar.arrive_and_wait();
    float out[8];
    for (int e = 0; e < 8; ++e) {
        const int idx = lane * 8 + e, r = idx / 16, col = idx % 16;
#ifdef SHIM_WMMA_DROP_C
        float acc = 0.f;
#else
        float acc = w.mma_c[idx];
#endif
        for (int kk = 0; kk < 16; ++kk) acc += w.mma_a[r * 16 + kk] * w.mma_b[kk * 16 + col];  // exact products
        out[e] = acc;
    }
    w.bar.arrive_and_wait();  // everyone has read the shared operands before the next mma overwrites them
    for (int e = 0; e < 8; ++e) d.x[e] = out[e];
}

}  // namespace wmma
}  // namespace nvcuda
