// A host-C++ stand-in for the CUDA execution model, so an UNMODIFIED .cu kernel compiles with g++ and runs on the
// CPU (tests/test_cuda_shim.py).  Slow by design; it exists to catch indexing, masking and synchronisation bugs
// on machines without a GPU.
//
//   * every CUDA thread of a block is a std::thread; blocks run one after another, so `__shared__` can be `static`
//     (all threads of the running block share it, exactly as on the device);
//   * __syncthreads() is a std::barrier over the block (-DSHIM_NO_SYNCTHREADS makes it a no-op: the test of the test);
//   * warp shuffles go through a per-warp slot buffer between two std::barrier phases over the warp's 32 threads;
//   * threadIdx/blockIdx are thread_local, blockDim/gridDim global;
//   * half and bfloat16 are the real cuda_fp16.h / cuda_bf16.h host code;
//   * WMMA (tensor cores) is wmma/mma.h, a host implementation of the fragment API with the device's contract;
//   * the PTX wrappers of the register-tile kernel (mma.m16n8k16, cp.async) are ptx_host.h;
//   * dynamic shared memory (`DBSA_EXTERN_SHARED ... dbsa_smem[]` in the kernels) is the global cuda_shim_smem.
#pragma once

#include <cuda_fp16.h>  // pulls in vector_types.h (uint3, dim3) and host_defines.h for host compilers
#include <cuda_bf16.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <type_traits>
#include <cstring>
#include <math.h>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

// Host meanings of the CUDA keywords (host_defines.h leaves them empty for a host compiler).
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // blocks run in turn: one copy per kernel instantiation is one copy per running block
#define __launch_bounds__(...)

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace cuda_shim {

inline constexpr unsigned kWarpSize = 32;

struct Warp {
    std::barrier<> bar{kWarpSize};
    unsigned long long slot[kWarpSize];  // one lane's value, as raw bytes
    float mma_a[256], mma_b[256], mma_c[256];  // the warp's WMMA operands (wmma/mma.h)
    unsigned ptx_a[kWarpSize][4], ptx_b[kWarpSize][2];  // the warp's mma.m16n8k16 operands (ptx_host.h)
    float ptx_c[kWarpSize][4];
};

inline std::barrier<>* block_barrier = nullptr;  // the running block's
inline std::vector<std::unique_ptr<Warp>> warps;  // the running block's

// Every lane publishes `value`, then reads lane `src`'s; the second barrier keeps slots stable until all have read.
template <typename T, typename SrcLane>
T warp_exchange(T value, SrcLane src_lane) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a type wider than 8 bytes");
    Warp& w = *warps[threadIdx.x / kWarpSize];
    const unsigned lane = threadIdx.x % kWarpSize;
    std::memcpy(&w.slot[lane], &value, sizeof(T));
    w.bar.arrive_and_wait();
    T out;
    std::memcpy(&out, &w.slot[src_lane(lane) % kWarpSize], sizeof(T));
    w.bar.arrive_and_wait();
    return out;
}

}  // namespace cuda_shim

inline void __syncthreads() {
#ifndef SHIM_NO_SYNCTHREADS
    cuda_shim::block_barrier->arrive_and_wait();
#endif
}

template <typename T>
T __shfl_xor_sync(unsigned /*mask: all 32 lanes always take part here*/, T value, int lane_mask, int width = 32) {
    (void)width;
    return cuda_shim::warp_exchange(value, [&](unsigned lane) { return lane ^ static_cast<unsigned>(lane_mask); });
}

template <typename T>
T __shfl_sync(unsigned /*mask*/, T value, int src_lane, int width = 32) {
    return cuda_shim::warp_exchange(value, [&](unsigned lane) {
        return (lane / width) * width + static_cast<unsigned>(src_lane) % width;
    });
}

inline void __syncwarp(unsigned /*mask*/ = 0xffffffffu) { cuda_shim::warps[threadIdx.x / 32]->bar.arrive_and_wait(); }

// atomicAdd on shared or global floats: the blocks' threads really run concurrently here, so it is atomic.
inline float atomicAdd(float* address, float value) { return std::atomic_ref<float>(*address).fetch_add(value); }

inline float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}

inline int __float_as_int(float f) {
    int x;
    std::memcpy(&x, &f, sizeof x);
    return x;
}

namespace cuda_shim {

// Run kernel<<<grid, block>>>(args...): 1-D thread blocks of whole warps, one block at a time.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
    if (block.y != 1 || block.z != 1 || block.x % kWarpSize != 0)
        throw std::invalid_argument("cuda_shim::launch: blocks must be 1-D and a multiple of 32 threads");
    gridDim = grid;
    blockDim = block;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                std::barrier<> bar(block.x);
                block_barrier = &bar;
                warps.clear();
                for (unsigned w = 0; w < block.x / kWarpSize; ++w) warps.push_back(std::make_unique<Warp>());
                std::vector<std::thread> threads;
                threads.reserve(block.x);
                for (unsigned t = 0; t < block.x; ++t)
                    threads.emplace_back([=] {
                        threadIdx = uint3{t, 0, 0};
                        blockIdx = uint3{x, y, z};
                        kernel(static_cast<Params>(args)...);
                    });
                for (auto& th : threads) th.join();
            }
    block_barrier = nullptr;
}

}  // namespace cuda_shim
