// Host versions of the PTX wrappers of dendritic/kernels/cuda/block_sparse_attention_mma.cu under cuda_shim.h: the
// kernel defines them with inline PTX unless DBSA_HOST_PTX is set, and this header supplies them instead.
//
//   * mma_16816<T>: the warp-wide mma.sync.m16n8k16 (row.col, fp32 accumulation) with the PTX ISA's documented
//     fragment layout — every lane publishes its registers, then computes its own four outputs; a kernel that
//     placed a value in the wrong register or lane fails.  Products of the fp16/bf16 inputs are exact in fp32, as
//     on the device; -DSHIM_WMMA_DROP_C ignores the accumulator input (the test of the test, as for WMMA).
//   * cp.async: a copy is only queued; it lands when the issuing thread waits for its group (cp_async_wait<N>
//     leaves the newest N groups in flight), so a kernel that reads a tile before waiting for it reads stale data.
#pragma once

#include "cuda_shim.h"

#include <cstring>
#include <deque>
#include <type_traits>
#include <vector>

#define DBSA_HOST_PTX 1

namespace dbsa_mma {

namespace host_ptx {
template <typename T>
inline float half_of(unsigned reg, int which) {  // element `which` (0 = low half) of a packed register, as fp32
    const unsigned short bits = static_cast<unsigned short>(which ? reg >> 16 : reg & 0xffffu);
    T x;
    std::memcpy(&x, &bits, sizeof bits);
    if constexpr (std::is_same_v<T, __half>)
        return __half2float(x);
    else
        return __bfloat162float(x);
}

struct Copy {
    void* dst;
    const void* src;
    bool valid;
};
inline thread_local std::vector<Copy> pending;              // issued, not yet committed
inline thread_local std::deque<std::vector<Copy>> groups;   // committed, oldest first
}  // namespace host_ptx

template <typename T>
void mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], const float (&c)[4]) {
    cuda_shim::Warp& w = *cuda_shim::warps[threadIdx.x / 32];
    const int lane = static_cast<int>(threadIdx.x % 32);
    for (int r = 0; r < 4; ++r) w.ptx_a[lane][r] = a[r];
    for (int r = 0; r < 2; ++r) w.ptx_b[lane][r] = b[r];
    for (int r = 0; r < 4; ++r) w.ptx_c[lane][r] = c[r];
    w.bar.arrive_and_wait();
    // A[row][k]: lane (row % 8) * 4 + (k % 8) / 2, register (row / 8) + 2 * (k / 8), half k % 2.
    auto A = [&](int row, int k) {
        return host_ptx::half_of<T>(w.ptx_a[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)], k % 2);
    };
    // B[k][col]: lane col * 4 + (k % 8) / 2, register k / 8, half k % 2.
    auto B = [&](int k, int col) { return host_ptx::half_of<T>(w.ptx_b[col * 4 + (k % 8) / 2][k / 8], k % 2); };
    float out[4];
    const int g = lane / 4, t = lane % 4;
    for (int e = 0; e < 4; ++e) {  // C[g + 8 * (e / 2)][2t + e % 2]
        const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
#ifdef SHIM_WMMA_DROP_C
        float acc = 0.f;
#else
        float acc = w.ptx_c[lane][e];
#endif
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);  // exact products, fp32 sums
        out[e] = acc;
    }
    w.bar.arrive_and_wait();  // every lane has read the operands before the next mma overwrites them
    for (int e = 0; e < 4; ++e) d[e] = out[e];
}

inline void cp_async_16(void* smem, const void* gmem, bool valid) { host_ptx::pending.push_back({smem, gmem, valid}); }

inline void cp_async_commit() {
    host_ptx::groups.push_back(std::move(host_ptx::pending));
    host_ptx::pending.clear();
}

template <int N>
void cp_async_wait() {
    while (host_ptx::groups.size() > static_cast<size_t>(N)) {
        for (const host_ptx::Copy& c : host_ptx::groups.front()) {
            if (c.valid)
                std::memcpy(c.dst, c.src, 16);
            else
                std::memset(c.dst, 0, 16);
        }
        host_ptx::groups.pop_front();
    }
}

}  // namespace dbsa_mma
