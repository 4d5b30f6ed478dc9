// The CPU driver for the CUDA kernels in dendritic/kernels/cuda/ under cuda_shim.h, built as a shared library that
// tests/test_cuda_shim.py loads with ctypes.  The kernel sources are included unmodified; the shim sets the hooks
// they expose: DBSA_EXTERN_SHARED (where dynamic shared memory lives — here a global buffer, since blocks run one
// after another) and DBSA_HOST_PTX (ptx_host.h: host versions of the register-tile kernel's PTX wrappers).
#include "cuda_shim.h"
#include "ptx_host.h"

#define DBSA_EXTERN_SHARED extern
alignas(128) unsigned char dbsa_smem[1 << 18];  // dynamic shared memory of the running block (256 KiB)

#include "../../dendritic/kernels/cuda/block_sparse_attention.cu"
#include "../../dendritic/kernels/cuda/block_sparse_attention_tc.cu"
#include "../../dendritic/kernels/cuda/block_sparse_attention_bwd.cu"
#include "../../dendritic/kernels/cuda/block_sparse_attention_mma.cu"

namespace {

template <typename T, int D, int BS>
void run(const void* q, const void* k, const void* v, const int* kv_num_blocks, const int* kv_indices,
         const unsigned char* key_padding, void* out, float* lse, int B, int H, int n, float scale_log2) {
    const unsigned nb = static_cast<unsigned>((n + BS - 1) / BS);
    cuda_shim::launch(block_sparse_attention_fwd<T, D, BS>, dim3(B * H * nb), dim3(dbsa::Config<D, BS>::kThreads),
                      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), kv_num_blocks,
                      kv_indices, key_padding, static_cast<T*>(out), lse, n, H, scale_log2);
}

template <typename T, int D, int BS>
void run_tc(const void* q, const void* k, const void* v, const int* kv_num_blocks, const int* kv_indices,
            const unsigned char* key_padding, void* out, float* lse, int B, int H, int n, float scale_log2) {
    static_assert(dbsa_tc::smem_bytes<T, D, BS>() <= static_cast<int>(sizeof(dbsa_smem)), "shim buffer too small");
    const unsigned nb = static_cast<unsigned>((n + BS - 1) / BS);
    cuda_shim::launch(block_sparse_attention_fwd_tc<T, D, BS>, dim3(B * H * nb),
                      dim3(dbsa_tc::TcConfig<D, BS>::kThreads), static_cast<const T*>(q), static_cast<const T*>(k),
                      static_cast<const T*>(v), kv_num_blocks, kv_indices, key_padding, static_cast<T*>(out), lse, n, H,
                      scale_log2);
}

template <typename T, int D, int BS>
void run_mma(const void* q, const void* k, const void* v, const int* kv_num_blocks, const int* kv_indices,
             const unsigned char* key_padding, void* out, float* lse, int B, int H, int n, float scale_log2) {
    static_assert(dbsa_mma::mma_smem_bytes<T, D, BS>() <= static_cast<int>(sizeof(dbsa_smem)), "shim buffer too small");
    const unsigned nb = static_cast<unsigned>((n + BS - 1) / BS);
    cuda_shim::launch(block_sparse_attention_fwd_mma<T, D, BS>, dim3(B * H * nb),
                      dim3(dbsa_mma::MmaConfig<D, BS>::kThreads), static_cast<const T*>(q), static_cast<const T*>(k),
                      static_cast<const T*>(v), kv_num_blocks, kv_indices, key_padding, static_cast<T*>(out), lse, n,
                      H, scale_log2);
}

template <typename T, int D, int BS>
void run_bwd(const void* q, const void* k, const void* v, const void* dout, const float* lse, const float* delta,
             const int* q_num_blocks, const int* q_indices, const unsigned char* key_padding, float* dq, void* dk,
             void* dv, int B, int H, int n, float scale) {
    const unsigned nb = static_cast<unsigned>((n + BS - 1) / BS);
    cuda_shim::launch(block_sparse_attention_bwd<T, D, BS>, dim3(B * H * nb), dim3(dbsa_bwd::BwdConfig<D, BS>::kThreads),
                      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                      static_cast<const T*>(dout), lse, delta, q_num_blocks, q_indices, key_padding, dq,
                      static_cast<T*>(dk), static_cast<T*>(dv), n, H, scale);
}

}  // namespace

// dtype: 0 float32, 1 float16, 2 bfloat16.  Returns 0, or -1 for a variant this library was not built with.
extern "C" int dbsa_shim_fwd(int dtype, int d, int block_size, const void* q, const void* k, const void* v,
                             const int* kv_num_blocks, const int* kv_indices, const unsigned char* key_padding,
                             void* out, float* lse, int B, int H, int n, float scale_log2) {
#define DBSA_VARIANT(CODE, T, D, BS)                                                                     \
    if (dtype == CODE && d == D && block_size == BS) {                                                  \
        run<T, D, BS>(q, k, v, kv_num_blocks, kv_indices, key_padding, out, lse, B, H, n, scale_log2); \
        return 0;                                                                                       \
    }
#define DBSA_DTYPES(D, BS) DBSA_VARIANT(0, float, D, BS) DBSA_VARIANT(1, __half, D, BS) DBSA_VARIANT(2, __nv_bfloat16, D, BS)
    DBSA_DTYPES(32, 16)
    DBSA_DTYPES(64, 32)
    DBSA_DTYPES(128, 64)  // two K/V tiles per key block (kTileKeys 32 < 64)
#undef DBSA_DTYPES
#undef DBSA_VARIANT
    return -1;
}

// The tensor-core kernel (fp16: 1, bf16: 2), same arguments and outputs.
extern "C" int dbsa_shim_fwd_tc(int dtype, int d, int block_size, const void* q, const void* k, const void* v,
                                const int* kv_num_blocks, const int* kv_indices, const unsigned char* key_padding,
                                void* out, float* lse, int B, int H, int n, float scale_log2) {
#define DBSA_VARIANT(CODE, T, D, BS)                                                                        \
    if (dtype == CODE && d == D && block_size == BS) {                                                     \
        run_tc<T, D, BS>(q, k, v, kv_num_blocks, kv_indices, key_padding, out, lse, B, H, n, scale_log2); \
        return 0;                                                                                          \
    }
#define DBSA_DTYPES(D, BS) DBSA_VARIANT(1, __half, D, BS) DBSA_VARIANT(2, __nv_bfloat16, D, BS)
    DBSA_DTYPES(32, 16)
    DBSA_DTYPES(64, 32)
    DBSA_DTYPES(128, 64)  // two K/V tiles per key block (kTileKeys 32 < 64)
#undef DBSA_DTYPES
#undef DBSA_VARIANT
    return -1;
}

// The register-tile tensor-core kernel (mma.m16n8k16; fp16: 1, bf16: 2), same arguments and outputs.
extern "C" int dbsa_shim_fwd_mma(int dtype, int d, int block_size, const void* q, const void* k, const void* v,
                                 const int* kv_num_blocks, const int* kv_indices, const unsigned char* key_padding,
                                 void* out, float* lse, int B, int H, int n, float scale_log2) {
#define DBSA_VARIANT(CODE, T, D, BS)                                                                         \
    if (dtype == CODE && d == D && block_size == BS) {                                                      \
        run_mma<T, D, BS>(q, k, v, kv_num_blocks, kv_indices, key_padding, out, lse, B, H, n, scale_log2); \
        return 0;                                                                                           \
    }
#define DBSA_DTYPES(D, BS) DBSA_VARIANT(1, __half, D, BS) DBSA_VARIANT(2, __nv_bfloat16, D, BS)
    DBSA_DTYPES(32, 16)
    DBSA_DTYPES(64, 32)
    DBSA_DTYPES(128, 64)  // two pipelined 32-key tiles per key block
#undef DBSA_DTYPES
#undef DBSA_VARIANT
    return -1;
}

// The backward kernel (fp32 0, fp16 1, bf16 2): dq is a zeroed fp32 accumulator, dk and dv in the input dtype.
extern "C" int dbsa_shim_bwd(int dtype, int d, int block_size, const void* q, const void* k, const void* v,
                             const void* dout, const float* lse, const float* delta, const int* q_num_blocks,
                             const int* q_indices, const unsigned char* key_padding, float* dq, void* dk, void* dv,
                             int B, int H, int n, float scale) {
#define DBSA_VARIANT(CODE, T, D, BS)                                                                              \
    if (dtype == CODE && d == D && block_size == BS) {                                                           \
        run_bwd<T, D, BS>(q, k, v, dout, lse, delta, q_num_blocks, q_indices, key_padding, dq, dk, dv, B, H, n, \
                          scale);                                                                                \
        return 0;                                                                                                \
    }
    DBSA_VARIANT(0, float, 32, 16)
    DBSA_VARIANT(1, __half, 32, 16)
    DBSA_VARIANT(2, __nv_bfloat16, 64, 32)
    DBSA_VARIANT(0, float, 64, 32)
#undef DBSA_VARIANT
    return -1;
}

// The tensor-core kernel's dynamic shared memory per variant, for the loader's own formula to be checked against.
extern "C" int dbsa_shim_tc_smem(int dtype, int d, int block_size) {
#define DBSA_SMEM(CODE, T, D, BS) \
    if (dtype == CODE && d == D && block_size == BS) return dbsa_tc::smem_bytes<T, D, BS>();
#define DBSA_ALL(CODE, T)                                                                                   \
    DBSA_SMEM(CODE, T, 32, 16) DBSA_SMEM(CODE, T, 32, 32) DBSA_SMEM(CODE, T, 32, 64) DBSA_SMEM(CODE, T, 64, 16) \
    DBSA_SMEM(CODE, T, 64, 32) DBSA_SMEM(CODE, T, 64, 64) DBSA_SMEM(CODE, T, 128, 16)                         \
    DBSA_SMEM(CODE, T, 128, 32) DBSA_SMEM(CODE, T, 128, 64)
    DBSA_ALL(1, __half)
    DBSA_ALL(2, __nv_bfloat16)
#undef DBSA_ALL
#undef DBSA_SMEM
    return -1;
}

// The same for the register-tile kernel (dbsa_mma::MmaSmem<...>::total).
extern "C" int dbsa_shim_mma_smem(int dtype, int d, int block_size) {
#define DBSA_SMEM(CODE, T, D, BS) \
    if (dtype == CODE && d == D && block_size == BS) return dbsa_mma::mma_smem_bytes<T, D, BS>();
#define DBSA_ALL(CODE, T)                                                                                   \
    DBSA_SMEM(CODE, T, 32, 16) DBSA_SMEM(CODE, T, 32, 32) DBSA_SMEM(CODE, T, 32, 64) DBSA_SMEM(CODE, T, 64, 16) \
    DBSA_SMEM(CODE, T, 64, 32) DBSA_SMEM(CODE, T, 64, 64) DBSA_SMEM(CODE, T, 128, 16)                         \
    DBSA_SMEM(CODE, T, 128, 32) DBSA_SMEM(CODE, T, 128, 64)
    DBSA_ALL(1, __half)
    DBSA_ALL(2, __nv_bfloat16)
#undef DBSA_ALL
#undef DBSA_SMEM
    return -1;
}
