// The CPU driver for cuda/block_sparse_attention.cu under cuda_shim.h, built as a shared library that
// tests/test_cuda_shim.py loads with ctypes.  The kernel source is included unmodified.
#include "cuda_shim.h"

#include "../../dendritic/kernels/cuda/block_sparse_attention.cu"

namespace {

template <typename T, int D, int BS>
void run(const void* q, const void* k, const void* v, const int* kv_num_blocks, const int* kv_indices,
         const unsigned char* key_padding, void* out, float* lse, int B, int H, int n, float scale_log2) {
    const unsigned nb = static_cast<unsigned>((n + BS - 1) / BS);
    cuda_shim::launch(block_sparse_attention_fwd<T, D, BS>, dim3(B * H * nb), dim3(dbsa::Config<D, BS>::kThreads),
                      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), kv_num_blocks,
                      kv_indices, key_padding, static_cast<T*>(out), lse, n, H, scale_log2);
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
