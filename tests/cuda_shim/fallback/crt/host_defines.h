// Fallback for host compilers when only the nvidia-cuda-runtime wheel's headers are installed: the wheel ships
// cuda_fp16.h / vector_types.h but not crt/host_defines.h, which they include.  Found through -idirafter, so a
// full toolkit's own header always wins.  These are the host-compiler (non-__CUDACC__) meanings from the toolkit.
#pragma once
#ifndef __HOST_DEFINES_H__
#define __HOST_DEFINES_H__
#define __no_return__ __attribute__((noreturn))
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __inline_hint__
#define __align__(n) __attribute__((aligned(n)))
#define __builtin_align__(a) __align__(a)
#define __thread__ __thread
#define __import__
#define __export__
#define __cdecl
#define __annotate__(a)
#define __location__(a) __annotate__(a)
#define __specialization_static
#define __grid_constant__
#define __host__
#define __device__
#define __global__
#define __shared__
#define __constant__
#define __managed__
#define __nv_pure__
#define __device_builtin__
#define __device_builtin_texture_type__
#define __device_builtin_surface_type__
#define __cudart_builtin__
#define CUDARTAPI
#define CUDARTAPI_CDECL
#define __CUDA_ARCH_HAS_FEATURE__(_FEAT) __CUDA_ARCH_FEAT_##_FEAT
#endif
