// Tensor-core block-sparse attention forward with register-resident tiles (fp16 / bf16), for CuPy RawModule (NVRTC)
// — loaded by dendritic/kernels/cupy_backend.py as kernel kind "mma", one template per (dtype, head dim, block size),
// e.g. "block_sparse_attention_fwd_mma<__half, 64, 64>".  Same arguments and outputs as the WMMA kernel
// (block_sparse_attention_tc.cu); what differs is where the tiles live:
//
//   * the WMMA kernel's fragments have an opaque layout, so S, P and the output accumulator go through shared memory
//     on every key tile;
//   * here every tile stays in registers, FlashAttention-2 style, with the documented fragment layout of the PTX
//     instruction mma.sync.m16n8k16 (fp16/bf16 inputs, fp32 accumulation):
//       S = Q Kᵀ   Q's A fragments loaded once into registers, K's B fragments read from shared memory;
//       online softmax in fp32 on the S accumulators (a row is spread over the 4 lanes of a quad: two shuffles);
//       P          the S accumulators of two neighbouring 8-key tiles ARE an A fragment of P (16 rows x 16 keys)
//                  once rounded to the input dtype — no shared-memory round trip;
//       O += P V   V's B fragments gathered from shared memory, O's accumulators rescaled in registers;
//   * K/V tiles are double-buffered: the next kept tile is copied with cp.async while the current one is computed.
//
// One thread block per (batch, head, query block), one warp per 16 query rows.  It writes O (B, H, n, D) in the
// input dtype and the natural-log log-sum-exp (B, H, n) in fp32; a row with no real kept key gets O = 0 and
// lse = -inf.
//
// Fragment layout of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), g = lane / 4, t = lane % 4:
//   A (16x16, row):  a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, +9]   a[3] = A[g+8][2t+8, +9]
//   B (16x8,  col):  b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   C (16x8, fp32):  c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// (two 16-bit values per 32-bit register, the lower column/row index in the low half).
//
// The tests run this unmodified source on the CPU through tests/cuda_shim, which defines DBSA_HOST_PTX and supplies
// host versions of the four PTX wrappers below (mma with this layout, cp.async as deferred copies that land only
// at the wait) — so indexing, masking, barriers and the pipeline's waits are checked without a GPU; the PTX
// strings themselves are checked by NVRTC/ptxas (tests/test_cuda_compile.py) and run on a GPU by gpu_check.
// NVRTC-clean: no host headers, no INFINITY.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifndef DBSA_EXTERN_SHARED
#define DBSA_EXTERN_SHARED extern __shared__
#endif

namespace dbsa_mma {

template <int D, int BS>
struct MmaConfig {
    static constexpr int kWarps = BS / 16;  // 16 query rows per warp
    static constexpr int kThreads = 32 * kWarps;
    static constexpr int kTileKeys = (D == 128 && BS == 64) ? 32 : BS;  // keys per pipelined K/V tile
    static constexpr int kTilesPerBlock = BS / kTileKeys;
    static constexpr int kRow = D + 8;  // shared-memory row stride in elements: 16 bytes of padding against bank
                                        // conflicts (rows g = 0..7 of a fragment land on 8 different banks)
    static_assert(D == 32 || D == 64 || D == 128, "head dim must be 32, 64 or 128");
    static_assert(BS == 16 || BS == 32 || BS == 64, "block size must be 16, 32 or 64");
    static_assert(BS % kTileKeys == 0 && kTileKeys % 16 == 0, "key tiles must split a block into 16-key slices");
};

// Byte offsets of one pipeline stage's regions (16-byte aligned) and the total over the two stages.
template <typename T, int D, int BS>
struct MmaSmem {
    using Cfg = MmaConfig<D, BS>;
    static constexpr int k = 0;                                                         // (KT, D + 8) T
    static constexpr int v = k + Cfg::kTileKeys * Cfg::kRow * (int)sizeof(T);          // (KT, D + 8) T
    static constexpr int bias = v + Cfg::kTileKeys * Cfg::kRow * (int)sizeof(T);       // (KT) fp32
    static constexpr int stage = bias + Cfg::kTileKeys * 4;
    static constexpr int total = 2 * stage;
    static_assert(stage % 16 == 0, "stages must keep 16-byte alignment for cp.async");
};

template <typename T, int D, int BS>
__host__ __device__ constexpr int mma_smem_bytes() { return MmaSmem<T, D, BS>::total; }

__device__ __forceinline__ float neg_inf() { return __int_as_float(static_cast<int>(0xff800000u)); }

// Two values of the input dtype in one 32-bit register, `lo` in the low half.
template <typename T>
struct Packed;
template <>
struct Packed<__half> {
    static __device__ __forceinline__ unsigned from_floats(float lo, float hi) {
        const __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<const unsigned*>(&h);
    }
    static __device__ __forceinline__ unsigned join(__half lo, __half hi) {
        const __half2 h = __halves2half2(lo, hi);
        return *reinterpret_cast<const unsigned*>(&h);
    }
    static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};
template <>
struct Packed<__nv_bfloat16> {
    static __device__ __forceinline__ unsigned from_floats(float lo, float hi) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<const unsigned*>(&h);
    }
    static __device__ __forceinline__ unsigned join(__nv_bfloat16 lo, __nv_bfloat16 hi) {
        const __nv_bfloat162 h = __halves2bfloat162(lo, hi);
        return *reinterpret_cast<const unsigned*>(&h);
    }
    static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

#ifndef DBSA_HOST_PTX
// d = a·b + c on the warp's tensor cores, m16n8k16, fp32 accumulation (layout in the header comment).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                          const float (&c)[4]);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                                  const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const unsigned (&a)[4],
                                                         const unsigned (&b)[2], const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

// 16 bytes global -> shared without passing through registers; zeros instead when !valid (src-size 0).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
#endif  // DBSA_HOST_PTX

}  // namespace dbsa_mma

template <typename T, int D, int BS>
__global__ void __launch_bounds__(dbsa_mma::MmaConfig<D, BS>::kThreads)
block_sparse_attention_fwd_mma(const T* __restrict__ q,  // (B, H, n, D)
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
    using Cfg = dbsa_mma::MmaConfig<D, BS>;
    using S = dbsa_mma::MmaSmem<T, D, BS>;
    using P = dbsa_mma::Packed<T>;
    constexpr int KT = Cfg::kTileKeys, RS = Cfg::kRow;
    constexpr int kChunks = D * (int)sizeof(T) / 16;  // 16-byte chunks per K/V row
    DBSA_EXTERN_SHARED __align__(128) unsigned char dbsa_smem[];

    const int nb = (n + BS - 1) / BS;
    const int qb = static_cast<int>(blockIdx.x) % nb;  // query block
    const int bh = static_cast<int>(blockIdx.x) / nb;  // batch * H + head
    const int b = bh / num_heads;
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32, lane = tid % 32;
    const int g = lane >> 2, t = lane & 3;  // fragment row group and column pair (header comment)
    const long long head_off = static_cast<long long>(bh) * n * D;
    const int bq = bh * nb + qb;
    const int num_tiles = kv_num_blocks[bq] * Cfg::kTilesPerBlock;  // uniform across the block
    const int* kept = kv_indices + static_cast<long long>(bq) * nb;

    // Stage tile `i` (key block kept[i / tiles-per-block], its (i % tiles-per-block)-th KT keys) into `stage`:
    // K and V rows by cp.async (rows past n become zeros), the key bias (0 real key, -inf otherwise) by stores.
    auto load_tile = [&](int i, int stage) {
        unsigned char* base = dbsa_smem + stage * S::stage;
        T* k_s = reinterpret_cast<T*>(base + S::k);
        T* v_s = reinterpret_cast<T*>(base + S::v);
        float* bias_s = reinterpret_cast<float*>(base + S::bias);
        const int key0 = kept[i / Cfg::kTilesPerBlock] * BS + (i % Cfg::kTilesPerBlock) * KT;
        for (int c = tid; c < KT * kChunks; c += Cfg::kThreads) {
            const int r = c / kChunks, col = (c % kChunks) * (16 / (int)sizeof(T));
            const bool valid = key0 + r < n;
            const long long src = head_off + static_cast<long long>(valid ? key0 + r : 0) * D + col;
            dbsa_mma::cp_async_16(k_s + r * RS + col, k + src, valid);
            dbsa_mma::cp_async_16(v_s + r * RS + col, v + src, valid);
        }
        for (int r = tid; r < KT; r += Cfg::kThreads) {
            const int key = key0 + r;
            const bool real = key < n && (key_padding == nullptr || key_padding[static_cast<long long>(b) * n + key] != 0);
            bias_s[r] = real ? 0.f : dbsa_mma::neg_inf();
        }
    };

    if (num_tiles > 0) load_tile(0, 0);
    dbsa_mma::cp_async_commit();

    // The warp's 16 query rows as A fragments, straight from global memory (rows past n are zeros).
    const int q0 = qb * BS + warp * 16;
    unsigned qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int row = q0 + g + (r & 1) * 8, col = kk * 16 + (r >> 1) * 8 + 2 * t;
            qa[kk][r] = row < n ? *reinterpret_cast<const unsigned*>(q + head_off + static_cast<long long>(row) * D + col)
                                : 0u;
        }

    float o[D / 8][4];  // O accumulators: rows g and g + 8, columns dt * 8 + 2t, +1
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dt][e] = 0.f;
    float m[2] = {dbsa_mma::neg_inf(), dbsa_mma::neg_inf()};  // running max (base 2) of rows g, g + 8
    float l[2] = {0.f, 0.f};  // this lane's part of the running sums (the quad's parts are added at the end)

    for (int i = 0; i < num_tiles; ++i) {
        if (i + 1 < num_tiles) load_tile(i + 1, (i + 1) & 1);  // its stage was released by the last barrier
        dbsa_mma::cp_async_commit();
        dbsa_mma::cp_async_wait<1>();  // this thread's copies of tile i have landed ...
        __syncthreads();               // ... and everyone's: tile i is in shared memory
        const unsigned char* base = dbsa_smem + (i & 1) * S::stage;
        const T* k_s = reinterpret_cast<const T*>(base + S::k);
        const T* v_s = reinterpret_cast<const T*>(base + S::v);
        const float* bias_s = reinterpret_cast<const float*>(base + S::bias);

        // S = Q Kᵀ: KT / 8 accumulator tiles of 16 rows x 8 keys.
        float s[KT / 8][4];
#pragma unroll
        for (int nt = 0; nt < KT / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const T* kr = k_s + (nt * 8 + g) * RS + kk * 16 + 2 * t;  // Kᵀ's column g is key nt * 8 + g
                const unsigned kb[2] = {*reinterpret_cast<const unsigned*>(kr),
                                        *reinterpret_cast<const unsigned*>(kr + 8)};
                dbsa_mma::mma_16816<T>(s[nt], qa[kk], kb, s[nt]);
            }
        }

        // Online softmax (base 2, fp32): scale, mask, new row maxima over the quad, rescale what came before.
        float mt[2] = {dbsa_mma::neg_inf(), dbsa_mma::neg_inf()};
#pragma unroll
        for (int nt = 0; nt < KT / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float x = s[nt][e] * scale_log2 + bias_s[nt * 8 + 2 * t + (e & 1)];
                s[nt][e] = x;
                mt[e >> 1] = fmaxf(mt[e >> 1], x);
            }
        float alpha[2], m_use[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            mt[h] = fmaxf(mt[h], __shfl_xor_sync(0xffffffffu, mt[h], 1));
            mt[h] = fmaxf(mt[h], __shfl_xor_sync(0xffffffffu, mt[h], 2));
            const float m_new = fmaxf(m[h], mt[h]);
            m_use[h] = m_new == dbsa_mma::neg_inf() ? 0.f : m_new;  // nothing live yet: no -inf - -inf
            alpha[h] = exp2f(m[h] - m_use[h]);
            m[h] = m_new;
            l[h] *= alpha[h];
        }
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[dt][e] *= alpha[e >> 1];

        // P = exp2(S - m), summed in fp32 and rounded to the input dtype as the A fragments of P V.
#pragma unroll
        for (int kc = 0; kc < KT / 16; ++kc) {
            unsigned pa[4];
#pragma unroll
            for (int side = 0; side < 2; ++side) {  // keys kc * 16 + side * 8 + 2t, +1 are tile nt = 2kc + side
                const float* sv = s[2 * kc + side];
                const float p0 = exp2f(sv[0] - m_use[0]), p1 = exp2f(sv[1] - m_use[0]);
                const float p2 = exp2f(sv[2] - m_use[1]), p3 = exp2f(sv[3] - m_use[1]);
                l[0] += p0 + p1;
                l[1] += p2 + p3;
                pa[side * 2] = P::from_floats(p0, p1);      // row g
                pa[side * 2 + 1] = P::from_floats(p2, p3);  // row g + 8
            }
            // O += P V: V's B fragment for output columns dt * 8 + g and keys kc * 16 + 2t (+1, +8, +9).
            const T* vr = v_s + (kc * 16 + 2 * t) * RS + g;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt) {
                const T* vc = vr + dt * 8;
                const unsigned vb[2] = {P::join(vc[0], vc[RS]), P::join(vc[8 * RS], vc[9 * RS])};
                dbsa_mma::mma_16816<T>(o[dt], pa, vb, o[dt]);
            }
        }
        __syncthreads();  // every warp is done with stage i & 1 before tile i + 2 is copied into it
    }
    dbsa_mma::cp_async_wait<0>();  // nothing may be in flight when the block exits

    // Normalise and write: the row sums are the quad's four parts.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = q0 + g + h * 8;
        if (row >= n) continue;
        const float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
        T* orow = out + head_off + static_cast<long long>(row) * D + 2 * t;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
            *reinterpret_cast<unsigned*>(orow + dt * 8) = P::from_floats(o[dt][2 * h] * inv, o[dt][2 * h + 1] * inv);
        if (t == 0) {
            const float ln2 = 0.6931471805599453f;
            lse[static_cast<long long>(bh) * n + row] = l[h] > 0.f ? (m[h] + log2f(l[h])) * ln2 : dbsa_mma::neg_inf();
        }
    }
}
