// Fused block-sparse attention forward (flash-style), for CuPy RawModule (NVRTC) — loaded by
// dendritic/kernels/cupy_backend.py, which instantiates one template per (dtype, head dim, block size) through
// `name_expressions`, e.g. "block_sparse_attention_fwd<__half, 64, 64>".
//
// One thread block per (batch, head, query block).  It walks only the key blocks that query block keeps
// (kv_num_blocks / kv_indices, FlexAttention's layout, see dendritic/kernels/layout.py), staging K and V tiles in shared
// memory (converted to fp32), and keeps an online softmax per query row (running max and sum in fp32, base-2
// exponentials), accumulating P·V in registers.  It writes O (B, H, n, d) in the input dtype and the natural-log
// log-sum-exp (B, H, n) in fp32 for a backward pass; a row with no real kept key gets O = 0 and lse = -inf.
//
// Work split: each query row is owned by kLanes consecutive lanes of one warp; lane g owns the head-dim slices
// [4(g + kLanes c), 4(g + kLanes c) + 4) for c < kVecsPerLane, of q (prescaled, in registers) and of the output
// accumulator.  A score q·k is a partial dot per lane reduced with xor-shuffles inside the row's lane group.
// Plain fp32 FMAs (SIMT); no tensor cores.
//
// Contract with the loader (keep in sync with cupy_backend.THREADS): kThreads = 128 for block 16 and 32, 256 for
// block 64; grid = B * H * nb one-dimensional blocks; all shared memory is static (< 48 KiB).
// NVRTC-clean: no host headers, no INFINITY (-inf is built from its bit pattern).

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace dbsa {

template <int D, int BS>
struct Config {
    static constexpr int kLanes = BS == 16 ? 8 : 4;  // threads per query row
    static constexpr int kThreads = BS * kLanes;  // 128 (BS 16, 32) or 256 (BS 64)
    static constexpr int kVecsPerLane = D / (4 * kLanes);  // float4 slices of the head dim per lane
    // Keys staged per shared-memory tile: K and V fp32 tiles take 2 * kTileKeys * D * 4 bytes <= 32 KiB.
    static constexpr int kTileKeys = BS < 4096 / D ? BS : 4096 / D;
    static constexpr int kChunk = kTileKeys < 16 ? kTileKeys : 16;  // scores held in registers at once
    static_assert(D == 32 || D == 64 || D == 128, "head dim must be 32, 64 or 128");
    static_assert(BS == 16 || BS == 32 || BS == 64, "block size must be 16, 32 or 64");
    static_assert(kVecsPerLane >= 1 && D == 4 * kLanes * kVecsPerLane, "head dim must split into float4 per lane");
    static_assert(32 % kLanes == 0 && kThreads % 32 == 0, "a row's lanes must sit inside one warp");
    static_assert(kTileKeys % kChunk == 0 && BS % kTileKeys == 0, "tiles must split a block evenly");
};

struct alignas(16) F4 {
    float x, y, z, w;
};

template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
    T v[4];
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

template <typename T>
__device__ __forceinline__ F4 load4(const T* p) {
    const Vec4<T> a = *reinterpret_cast<const Vec4<T>*>(p);
    return F4{to_float(a.v[0]), to_float(a.v[1]), to_float(a.v[2]), to_float(a.v[3])};
}

}  // namespace dbsa

template <typename T, int D, int BS>
__global__ void __launch_bounds__(dbsa::Config<D, BS>::kThreads)
block_sparse_attention_fwd(const T* __restrict__ q,  // (B, H, n, D)
                           const T* __restrict__ k,  // (B, H, n, D)
                           const T* __restrict__ v,  // (B, H, n, D)
                           const int* __restrict__ kv_num_blocks,  // (B, H, nb)
                           const int* __restrict__ kv_indices,  // (B, H, nb, nb), kept blocks first
                           const unsigned char* __restrict__ key_padding,  // (B, n), 1 = real token; or null
                           T* __restrict__ out,  // (B, H, n, D)
                           float* __restrict__ lse,  // (B, H, n), natural log
                           int n, int num_heads,
                           float scale_log2)  // softmax scale * log2(e)
{
    using Cfg = dbsa::Config<D, BS>;
    constexpr int L = Cfg::kLanes;
    constexpr int NV = Cfg::kVecsPerLane;
    constexpr int KT = Cfg::kTileKeys;
    constexpr int CH = Cfg::kChunk;

    const int nb = (n + BS - 1) / BS;
    const int qb = static_cast<int>(blockIdx.x) % nb;  // query block
    const int bh = static_cast<int>(blockIdx.x) / nb;  // batch * H + head
    const int b = bh / num_heads;
    const int tid = static_cast<int>(threadIdx.x);
    const int g = tid % L;  // lane within the row's group
    const int row = qb * BS + tid / L;
    const bool active = row < n;  // rows past n (partial last block) compute on zeros and write nothing
    const long long head_off = static_cast<long long>(bh) * n * D;

    __shared__ dbsa::F4 k_tile[KT * D / 4];  // (KT, D) fp32
    __shared__ dbsa::F4 v_tile[KT * D / 4];  // (KT, D) fp32
    __shared__ float key_bias[KT];  // 0 for a real key, -inf for padding or past n

    float qr[NV][4];
    float acc[NV][4];
#pragma unroll
    for (int c = 0; c < NV; ++c) {
        dbsa::F4 x{0.f, 0.f, 0.f, 0.f};
        if (active) x = dbsa::load4(q + head_off + static_cast<long long>(row) * D + 4 * (g + L * c));
        qr[c][0] = x.x * scale_log2;
        qr[c][1] = x.y * scale_log2;
        qr[c][2] = x.z * scale_log2;
        qr[c][3] = x.w * scale_log2;
        acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.f;
    }
    float m = dbsa::neg_inf();  // running max of the base-2 logits
    float l = 0.f;  // running sum of exp2(logit - m)

    const int bq = bh * nb + qb;
    const int num_kept = kv_num_blocks[bq];
    const int* kept = kv_indices + static_cast<long long>(bq) * nb;

    for (int s = 0; s < num_kept; ++s) {  // uniform across the block: barriers inside are safe
        const int kb = kept[s];
        for (int t0 = 0; t0 < BS; t0 += KT) {
            const int key0 = kb * BS + t0;
            const int nvalid = n - key0 < KT ? n - key0 : KT;
            if (nvalid <= 0) break;

            __syncthreads();  // every thread is done reading the previous tile
            for (int i = tid; i < KT * D / 4; i += Cfg::kThreads) {
                const int key = i / (D / 4);
                dbsa::F4 kx{0.f, 0.f, 0.f, 0.f};
                dbsa::F4 vx{0.f, 0.f, 0.f, 0.f};
                if (key < nvalid) {
                    const long long off = head_off + static_cast<long long>(key0) * D + 4LL * i;
                    kx = dbsa::load4(k + off);
                    vx = dbsa::load4(v + off);
                }
                k_tile[i] = kx;
                v_tile[i] = vx;
            }
            for (int i = tid; i < KT; i += Cfg::kThreads) {
                const bool real = i < nvalid &&
                                  (key_padding == nullptr ||
                                   key_padding[static_cast<long long>(b) * n + key0 + i] != 0);
                key_bias[i] = real ? 0.f : dbsa::neg_inf();
            }
            __syncthreads();  // the tile is loaded

            for (int j0 = 0; j0 < nvalid; j0 += CH) {
                float sc[CH];  // base-2 logits of keys j0 .. j0 + CH
#pragma unroll
                for (int jj = 0; jj < CH; ++jj) {
                    const dbsa::F4* kr = k_tile + (j0 + jj) * (D / 4);
                    float part = 0.f;
#pragma unroll
                    for (int c = 0; c < NV; ++c) {
                        const dbsa::F4 kx = kr[g + L * c];
                        part += qr[c][0] * kx.x + qr[c][1] * kx.y + qr[c][2] * kx.z + qr[c][3] * kx.w;
                    }
#pragma unroll
                    for (int off = L / 2; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
                    sc[jj] = part + key_bias[j0 + jj];
                }
                float mc = sc[0];
#pragma unroll
                for (int jj = 1; jj < CH; ++jj) mc = fmaxf(mc, sc[jj]);
                const float m_new = fmaxf(m, mc);
                // Everything masked so far: keep the exponent finite so exp2(-inf - 0) = 0, never NaN.
                const float m_use = m_new == dbsa::neg_inf() ? 0.f : m_new;
                const float alpha = exp2f(m - m_use);
                l *= alpha;
#pragma unroll
                for (int c = 0; c < NV; ++c) {
                    acc[c][0] *= alpha;
                    acc[c][1] *= alpha;
                    acc[c][2] *= alpha;
                    acc[c][3] *= alpha;
                }
#pragma unroll
                for (int jj = 0; jj < CH; ++jj) {
                    const float p = exp2f(sc[jj] - m_use);
                    l += p;
                    const dbsa::F4* vr = v_tile + (j0 + jj) * (D / 4);
#pragma unroll
                    for (int c = 0; c < NV; ++c) {
                        const dbsa::F4 vx = vr[g + L * c];
                        acc[c][0] += p * vx.x;
                        acc[c][1] += p * vx.y;
                        acc[c][2] += p * vx.z;
                        acc[c][3] += p * vx.w;
                    }
                }
                m = m_new;
            }
        }
    }

    if (active) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        T* o = out + head_off + static_cast<long long>(row) * D;
#pragma unroll
        for (int c = 0; c < NV; ++c) {
            dbsa::Vec4<T> y;
#pragma unroll
            for (int e = 0; e < 4; ++e) y.v[e] = dbsa::from_float<T>(acc[c][e] * inv);
            *reinterpret_cast<dbsa::Vec4<T>*>(o + 4 * (g + L * c)) = y;
        }
        if (g == 0) {
            const float ln2 = 0.6931471805599453f;
            lse[static_cast<long long>(bh) * n + row] = l > 0.f ? (m + log2f(l)) * ln2 : dbsa::neg_inf();
        }
    }
}
