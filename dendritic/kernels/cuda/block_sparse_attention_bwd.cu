// Block-sparse attention backward (dQ, dK, dV), for CuPy RawModule (NVRTC) — loaded by
// dendritic/kernels/cupy_backend.py ("block_sparse_attention_bwd<__half, 64, 64>" etc.; fp32, fp16, bf16 inputs).
//
// From the forward's O and natural-log log-sum-exp (the FlashAttention-2 recipe): with s = scale·q·k,
// p = exp(s − lse), Δ = rowsum(dO ∘ O) (computed by the caller),
//     dV_j += p dO_i,   dp = dO_i · v_j,   ds = p (dp − Δ_i),   dK_j += scale ds q_i,   dQ_i += scale ds k_j.
// One thread block per (batch, head, KEY block j); it walks only the query blocks that keep j (the transposed
// layout q_num_blocks / q_indices, made by the caller from kv_num_blocks / kv_indices), so a skipped block pair
// contributes exactly nothing and a key block no query keeps gets dK = dV = 0.
//
// Work split: each key row is owned by kGroup = D / 8 consecutive lanes of one warp; lane g owns head dims
// [8g, 8g + 8) of that key's k, v (registers) and of its dK, dV accumulators (registers, fp32).  Query rows are
// visited one at a time: q_i and dO_i are staged in shared memory, the dot products are partial per lane and reduced
// with xor-shuffles inside the key's lane group, and dQ_i (a sum over the block's keys) is accumulated in shared
// memory with atomicAdd, then added to the fp32 dQ accumulator in global memory (other key blocks add theirs).
// Plain fp32 SIMT arithmetic (no tensor cores), written for correctness first; rows with lse = -inf (no real kept
// key in the forward) contribute nothing.  NVRTC-clean.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace dbsa_bwd {

template <int D, int BS>
struct BwdConfig {
    static constexpr int kGroup = D / 8;  // lanes per key row
    static constexpr int kThreads = BS * kGroup;  // 64 .. 1024
    static_assert(D == 32 || D == 64 || D == 128, "head dim must be 32, 64 or 128");
    static_assert(BS == 16 || BS == 32 || BS == 64, "block size must be 16, 32 or 64");
    static_assert(32 % kGroup == 0 && kThreads % 32 == 0, "a key's lanes must sit inside one warp");
};

__device__ __forceinline__ float neg_inf() { return __int_as_float(static_cast<int>(0xff800000u)); }
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

}  // namespace dbsa_bwd

template <typename T, int D, int BS>
__global__ void __launch_bounds__(dbsa_bwd::BwdConfig<D, BS>::kThreads)
block_sparse_attention_bwd(const T* __restrict__ q,  // (B, H, n, D)
                           const T* __restrict__ k,  // (B, H, n, D)
                           const T* __restrict__ v,  // (B, H, n, D)
                           const T* __restrict__ dout,  // (B, H, n, D)
                           const float* __restrict__ lse,  // (B, H, n), natural log (forward output)
                           const float* __restrict__ delta,  // (B, H, n), rowsum(dO * O) in fp32
                           const int* __restrict__ q_num_blocks,  // (B, H, nb): query blocks keeping key block j
                           const int* __restrict__ q_indices,  // (B, H, nb, nb): those query blocks first
                           const unsigned char* __restrict__ key_padding,  // (B, n), 1 = real token; or null
                           float* __restrict__ dq,  // (B, H, n, D) fp32 accumulator, zero on entry
                           T* __restrict__ dk,  // (B, H, n, D)
                           T* __restrict__ dv,  // (B, H, n, D)
                           int n, int num_heads, float scale)
{
    using Cfg = dbsa_bwd::BwdConfig<D, BS>;
    constexpr int G = Cfg::kGroup;
    const int nb = (n + BS - 1) / BS;
    const int kb = static_cast<int>(blockIdx.x) % nb;  // key block
    const int bh = static_cast<int>(blockIdx.x) / nb;
    const int b = bh / num_heads;
    const int tid = static_cast<int>(threadIdx.x);
    const int g = tid % G;  // lane in the key's group: head dims [8g, 8g + 8)
    const int key = kb * BS + tid / G;
    const long long head_off = static_cast<long long>(bh) * n * D;
    const bool live_key = key < n && (key_padding == nullptr || key_padding[static_cast<long long>(b) * n + key] != 0);

    __shared__ float q_s[D];
    __shared__ float do_s[D];
    __shared__ float dq_s[D];
    __shared__ float row_lse;
    __shared__ float row_delta;

    float kr[8], vr[8], dkr[8], dvr[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const long long off = head_off + static_cast<long long>(key) * D + 8 * g + e;
        kr[e] = key < n ? dbsa_bwd::to_float(k[off]) : 0.f;
        vr[e] = key < n ? dbsa_bwd::to_float(v[off]) : 0.f;
        dkr[e] = dvr[e] = 0.f;
    }

    const int bk = bh * nb + kb;
    const int num_q = q_num_blocks[bk];
    const int* qblocks = q_indices + static_cast<long long>(bk) * nb;
    for (int s = 0; s < num_q; ++s) {  // uniform across the block: barriers inside are safe
        const int qb = qblocks[s];
        for (int r = 0; r < BS; ++r) {
            const int row = qb * BS + r;
            if (row >= n) break;
            __syncthreads();  // the previous row is done with the shared row buffers
            for (int e = tid; e < D; e += Cfg::kThreads) {
                q_s[e] = dbsa_bwd::to_float(q[head_off + static_cast<long long>(row) * D + e]);
                do_s[e] = dbsa_bwd::to_float(dout[head_off + static_cast<long long>(row) * D + e]);
                dq_s[e] = 0.f;
            }
            if (tid == 0) {
                row_lse = lse[static_cast<long long>(bh) * n + row];
                row_delta = delta[static_cast<long long>(bh) * n + row];
            }
            __syncthreads();
            const float l = row_lse;
            if (l == dbsa_bwd::neg_inf()) continue;  // no real kept key in the forward: no gradient (uniform)
            float qk = 0.f, dov = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                qk += q_s[8 * g + e] * kr[e];
                dov += do_s[8 * g + e] * vr[e];
            }
#pragma unroll
            for (int off = G / 2; off > 0; off >>= 1) {
                qk += __shfl_xor_sync(0xffffffffu, qk, off);
                dov += __shfl_xor_sync(0xffffffffu, dov, off);
            }
            const float p = live_key ? expf(qk * scale - l) : 0.f;
            const float ds = p * (dov - row_delta) * scale;  // d(loss)/d(q·k)
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                dvr[e] += p * do_s[8 * g + e];
                dkr[e] += ds * q_s[8 * g + e];
            }
            if (ds != 0.f) {
#pragma unroll
                for (int e = 0; e < 8; ++e) atomicAdd(&dq_s[8 * g + e], ds * kr[e]);
            }
            __syncthreads();  // dq_s holds the whole block's contribution to dQ of this row
            for (int e = tid; e < D; e += Cfg::kThreads)
                atomicAdd(&dq[head_off + static_cast<long long>(row) * D + e], dq_s[e]);
        }
    }
    if (key < n) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const long long off = head_off + static_cast<long long>(key) * D + 8 * g + e;
            dk[off] = dbsa_bwd::from_float<T>(dkr[e]);
            dv[off] = dbsa_bwd::from_float<T>(dvr[e]);
        }
    }
}
