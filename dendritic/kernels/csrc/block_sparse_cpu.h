// Shared between the dispatching TU (block_sparse_cpu.cpp) and the SIMD TUs (block_sparse_avx512.cpp, _avx2.cpp).
// Plain C structs only: the SIMD TUs must not instantiate any inline/template code that the rest of the
// binary could share (an AVX-512 copy of an inline function picked by the linker would break older CPUs).
#pragma once
#include <cstdint>

namespace dendritic {

// One forward call.  Pointers index (B, H, n, d) row-major tensors; `nblk` is (B, H, nb), `idx` (B, H, nb, nb).
struct BlockSparseParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const int32_t* nblk;
  const int32_t* idx;
  const uint8_t* key_valid;   // (B, n): 1 = real key; nullptr = no padding
  const uint8_t* block_full;  // (B, nb): 1 = every key of that block is real; nullptr = no padding
  int64_t B, H, n, d, block_size, nb;
  double scale;
};

// AVX-512 and AVX2 fp32 paths (compiled with per-function target attributes; call only after a runtime CPU check).
bool avx512_compiled();                                      // false on non-x86 builds
int64_t avx512_scratch_floats(const BlockSparseParams& p);   // per-thread scratch size, in floats
void avx512_run_task(const BlockSparseParams& p, int64_t task, float* scratch);
// Blocks under 16 tokens: tasks are groups of 16 / block_size query blocks (one query row per lane); the scratch
// must start zeroed (each task leaves it so).
int64_t avx512_group_tasks(const BlockSparseParams& p);
void avx512_run_group_task(const BlockSparseParams& p, int64_t task, float* scratch);
bool avx2_compiled();
int64_t avx2_scratch_floats(const BlockSparseParams& p);
void avx2_run_task(const BlockSparseParams& p, int64_t task, float* scratch);
int64_t avx2_group_tasks(const BlockSparseParams& p);  // blocks under 8 tokens: groups of 8 / block_size
void avx2_run_group_task(const BlockSparseParams& p, int64_t task, float* scratch);

}  // namespace dendritic
