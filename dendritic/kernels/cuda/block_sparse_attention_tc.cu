// Tensor-core block-sparse attention forward (fp16 / bf16), for CuPy RawModule (NVRTC) — loaded by
// dendritic/kernels/cupy_backend.py, one template per (dtype, head dim, block size) through `name_expressions`,
// e.g. "block_sparse_attention_fwd_tc<__half, 64, 64>".  fp32 inputs run the SIMT kernel
// (block_sparse_attention.cu); both take the same arguments and write the same outputs.
//
// One thread block per (batch, head, query block) with one warp per 16 query rows.  Per kept key block, in tiles of
// kTileKeys keys staged in shared memory in the input dtype:
//   S = Q Kᵀ       on tensor cores (WMMA m16n16k16, fp32 accumulation), stored to the warp's fp32 score tile;
//   online softmax per query row in fp32 (base-2 exponentials; running max m, running sum l), the unnormalised
//                  probabilities written back in the input dtype (as FlashAttention does) and the warp's output
//                  rows rescaled by α = 2^(m_old − m_new) in shared memory;
//   O += P V       on tensor cores, the fp32 output tile loaded into accumulator fragments and stored back.
// It writes O (B, H, n, d) in the input dtype and the natural-log log-sum-exp (B, H, n) in fp32 (the backward's
// input); a row with no real kept key gets O = 0 and lse = -inf.  WMMA fragments are used only through
// load/store/mma/fill (their element layout is opaque); every row-wise operation goes through shared memory.
//
// Shared memory is dynamic (dbsa_tc::smem_bytes<T, D, BS>() bytes; the loader raises the per-kernel limit past
// 48 KiB where a variant needs it).  The tests run this unmodified source on the CPU through tests/cuda_shim, whose
// host WMMA has the same contract (exact products of the input dtype, fp32 accumulation); DBSA_EXTERN_SHARED is
// the one hook it sets (where the dynamic shared memory lives).
// NVRTC-clean: no host headers, no INFINITY.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>

#ifndef DBSA_EXTERN_SHARED
#define DBSA_EXTERN_SHARED extern __shared__
#endif

namespace dbsa_tc {

template <int D, int BS>
struct TcConfig {
    static constexpr int kWarps = BS / 16;  // 16 query rows per warp
    static constexpr int kThreads = 32 * kWarps;
    static constexpr int kTileKeys = (D == 128 && BS == 64) ? 32 : BS;  // keys staged per shared-memory tile
    static_assert(D == 32 || D == 64 || D == 128, "head dim must be 32, 64 or 128");
    static_assert(BS == 16 || BS == 32 || BS == 64, "block size must be 16, 32 or 64");
    static_assert(BS % kTileKeys == 0 && kTileKeys % 16 == 0, "key tiles must split a block into 16-key slices");
};

__host__ __device__ constexpr int round32(int bytes) { return (bytes + 31) / 32 * 32; }  // WMMA: 256-bit aligned

// Byte offsets of the shared-memory regions (all 32-byte aligned), and the total.
template <typename T, int D, int BS>
struct Smem {
    static constexpr int KT = TcConfig<D, BS>::kTileKeys;
    static constexpr int q = 0;                                           // (BS, D) T  the query block
    static constexpr int k = q + round32(BS * D * (int)sizeof(T));        // (KT, D) T
    static constexpr int v = k + round32(KT * D * (int)sizeof(T));        // (KT, D) T
    static constexpr int bias = v + round32(KT * D * (int)sizeof(T));     // (KT) fp32: 0 real key, -inf otherwise
    static constexpr int warps = bias + round32(KT * 4);                  // per-warp regions from here
    static constexpr int w_s = 0;                                         // (16, KT) fp32 scores
    static constexpr int w_o = w_s + round32(16 * KT * 4);                // (16, D) fp32 unnormalised output
    static constexpr int w_p = w_o + round32(16 * D * 4);                 // (16, KT) T probabilities
    static constexpr int w_m = w_p + round32(16 * KT * (int)sizeof(T));   // (16) fp32 running max (base 2)
    static constexpr int w_l = w_m + round32(16 * 4);                     // (16) fp32 running sum
    static constexpr int per_warp = w_l + round32(16 * 4);
    static constexpr int total = warps + TcConfig<D, BS>::kWarps * per_warp;
};

template <typename T, int D, int BS>
__host__ __device__ constexpr int smem_bytes() { return Smem<T, D, BS>::total; }

__device__ __forceinline__ float neg_inf() { return __int_as_float(static_cast<int>(0xff800000u)); }

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

struct alignas(16) Chunk {  // 16 bytes: 8 fp16/bf16 values
    unsigned int w[4];
};

// Copy `rows` rows of D values from global (row stride D) into shared memory; rows past `valid` become zeros.
template <typename T, int D>
__device__ __forceinline__ void stage_rows(T* dst, const T* src, int rows, int valid, int tid, int threads) {
    constexpr int kPerRow = D * (int)sizeof(T) / 16;
    for (int i = tid; i < rows * kPerRow; i += threads) {
        const int r = i / kPerRow;
        Chunk c{{0u, 0u, 0u, 0u}};
        if (r < valid) c = reinterpret_cast<const Chunk*>(src)[i];
        reinterpret_cast<Chunk*>(dst)[i] = c;
    }
}

}  // namespace dbsa_tc

template <typename T, int D, int BS>
__global__ void __launch_bounds__(dbsa_tc::TcConfig<D, BS>::kThreads)
block_sparse_attention_fwd_tc(const T* __restrict__ q,  // (B, H, n, D)
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
    using namespace nvcuda;
    using Cfg = dbsa_tc::TcConfig<D, BS>;
    using S = dbsa_tc::Smem<T, D, BS>;
    constexpr int KT = Cfg::kTileKeys;
    DBSA_EXTERN_SHARED __align__(128) unsigned char dbsa_smem[];

    const int nb = (n + BS - 1) / BS;
    const int qb = static_cast<int>(blockIdx.x) % nb;  // query block
    const int bh = static_cast<int>(blockIdx.x) / nb;  // batch * H + head
    const int b = bh / num_heads;
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32, lane = tid % 32;
    const long long head_off = static_cast<long long>(bh) * n * D;

    T* q_s = reinterpret_cast<T*>(dbsa_smem + S::q);
    T* k_s = reinterpret_cast<T*>(dbsa_smem + S::k);
    T* v_s = reinterpret_cast<T*>(dbsa_smem + S::v);
    float* bias_s = reinterpret_cast<float*>(dbsa_smem + S::bias);
    unsigned char* wbase = dbsa_smem + S::warps + warp * S::per_warp;
    float* s_w = reinterpret_cast<float*>(wbase + S::w_s);  // (16, KT)
    float* o_w = reinterpret_cast<float*>(wbase + S::w_o);  // (16, D)
    T* p_w = reinterpret_cast<T*>(wbase + S::w_p);          // (16, KT)
    float* m_w = reinterpret_cast<float*>(wbase + S::w_m);  // (16)
    float* l_w = reinterpret_cast<float*>(wbase + S::w_l);  // (16)

    // The query block (rows past n are zeros) and the warp's running statistics.
    const int q0 = qb * BS;
    dbsa_tc::stage_rows<T, D>(q_s, q + head_off + static_cast<long long>(q0) * D, BS, n - q0, tid, Cfg::kThreads);
    for (int i = lane; i < 16 * D; i += 32) o_w[i] = 0.f;
    if (lane < 16) {
        m_w[lane] = dbsa_tc::neg_inf();
        l_w[lane] = 0.f;
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) wmma::load_matrix_sync(qa[kk], q_s + warp * 16 * D + kk * 16, D);

    const int row = lane >> 1;  // the softmax step: two lanes per query row ...
    const int half = lane & 1;  // ... each owning half of the keys and half of the output columns
    const int bq = bh * nb + qb;
    const int num_kept = kv_num_blocks[bq];
    const int* kept = kv_indices + static_cast<long long>(bq) * nb;

    for (int s = 0; s < num_kept; ++s) {  // uniform across the block: barriers inside are safe
        const int kb = kept[s];
        for (int t0 = 0; t0 < BS; t0 += KT) {
            const int key0 = kb * BS + t0;
            const int nvalid = n - key0 < KT ? n - key0 : KT;
            if (nvalid <= 0) break;

            __syncthreads();  // every warp is done with the previous tile
            dbsa_tc::stage_rows<T, D>(k_s, k + head_off + static_cast<long long>(key0) * D, KT, nvalid, tid,
                                      Cfg::kThreads);
            dbsa_tc::stage_rows<T, D>(v_s, v + head_off + static_cast<long long>(key0) * D, KT, nvalid, tid,
                                      Cfg::kThreads);
            for (int i = tid; i < KT; i += Cfg::kThreads) {
                const bool real = i < nvalid && (key_padding == nullptr ||
                                                 key_padding[static_cast<long long>(b) * n + key0 + i] != 0);
                bias_s[i] = real ? 0.f : dbsa_tc::neg_inf();
            }
            __syncthreads();  // the tile is loaded

            // S = Q Kᵀ for the warp's 16 rows and the tile's KT keys (fp32 accumulation).
#pragma unroll
            for (int c = 0; c < KT / 16; ++c) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> sacc;
                wmma::fill_fragment(sacc, 0.f);
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
                    wmma::load_matrix_sync(kf, k_s + c * 16 * D + kk * 16, D);  // Kᵀ: key c*16 + j is column j
                    wmma::mma_sync(sacc, qa[kk], kf, sacc);
                }
                wmma::store_matrix_sync(s_w + c * 16, sacc, KT, wmma::mem_row_major);
            }
            __syncwarp();

            // Online softmax of row `row` over this tile (base 2, fp32).
            constexpr int kHalfKeys = KT / 2;
            // Lane-skewed loops: the 32 lanes read 16 rows x 2 halves whose starts are a multiple of 32 words
            // apart, i.e. one shared-memory bank; starting each lane at its own offset (j + lane) spreads them
            // over the banks (32-way conflicts otherwise).  max and sum do not depend on the order.
            float* srow = s_w + row * KT + half * kHalfKeys;
            float mt = dbsa_tc::neg_inf();
            for (int jj = 0; jj < kHalfKeys; ++jj) {
                const int j = (jj + lane) % kHalfKeys;
                const float x = srow[j] * scale_log2 + bias_s[half * kHalfKeys + j];
                srow[j] = x;
                mt = fmaxf(mt, x);
            }
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
            const float m_old = m_w[row];
            const float m_new = fmaxf(m_old, mt);
            const float m_use = m_new == dbsa_tc::neg_inf() ? 0.f : m_new;  // nothing live yet: no -inf - -inf
            const float alpha = exp2f(m_old - m_use);
            float rs = 0.f;
            T* prow = p_w + row * KT + half * kHalfKeys;
            for (int jj = 0; jj < kHalfKeys; ++jj) {
                const int j = (jj + lane) % kHalfKeys;
                const float p = exp2f(srow[j] - m_use);
                rs += p;
                prow[j] = dbsa_tc::from_float<T>(p);
            }
            rs += __shfl_xor_sync(0xffffffffu, rs, 1);
            float* orow = o_w + row * D + half * (D / 2);
            for (int ee = 0; ee < D / 2; ++ee) orow[(ee + lane) % (D / 2)] *= alpha;
            __syncwarp();  // both lanes of the row have read m_old
            if (half == 0) {
                m_w[row] = m_new;
                l_w[row] = l_w[row] * alpha + rs;
            }
            __syncwarp();  // P and the rescaled O are in shared memory

            // O += P V (fp32 accumulation, the output tile round-trips through shared memory).
#pragma unroll
            for (int dt = 0; dt < D / 16; ++dt) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> oacc;
                wmma::load_matrix_sync(oacc, o_w + dt * 16, D, wmma::mem_row_major);
#pragma unroll
                for (int c = 0; c < KT / 16; ++c) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
                    wmma::load_matrix_sync(pf, p_w + c * 16, KT);
                    wmma::load_matrix_sync(vf, v_s + c * 16 * D + dt * 16, D);
                    wmma::mma_sync(oacc, pf, vf, oacc);
                }
                wmma::store_matrix_sync(o_w + dt * 16, oacc, D, wmma::mem_row_major);
            }
            __syncwarp();
        }
    }

    const int qrow = q0 + warp * 16 + row;
    if (qrow < n) {
        const float l = l_w[row];
        const float inv = l > 0.f ? 1.f / l : 0.f;
        T* o = out + head_off + static_cast<long long>(qrow) * D + half * (D / 2);
        const float* orow = o_w + row * D + half * (D / 2);
        for (int ee = 0; ee < D / 2; ++ee) {
            const int e = (ee + lane) % (D / 2);
            o[e] = dbsa_tc::from_float<T>(orow[e] * inv);
        }
        if (half == 0) {
            const float ln2 = 0.6931471805599453f;
            lse[static_cast<long long>(bh) * n + qrow] = l > 0.f ? (m_w[row] + log2f(l)) * ln2 : dbsa_tc::neg_inf();
        }
    }
}
