// CPU SIMD helpers for the hot loops.
//
// Run-time dispatch: GCC compiles each MTL_CPU_CLONES function for AVX-512, AVX2 and baseline x86-64 and
// picks one when the library loads, so the extension is fast on the machine it runs on and still portable
// (no -march=native).
//
// Vec8d is eight float64 lanes written with GCC/Clang vector extensions: in each clone the compiler maps it
// onto that clone's registers (one zmm, two ymm or four xmm), which lets the kernels keep their accumulators
// in registers where auto-vectorised loops spilled them to the stack.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MTL_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MTL_CPU_CLONES
#endif

// The helpers below take or return vector types: they must always be inlined into the clone that uses them,
// never called across a boundary compiled for another SIMD width (a call would pass vectors through memory).
#define MTL_SIMD_INLINE __attribute__((always_inline)) inline

namespace mtl_fast {

typedef double Vec8d __attribute__((vector_size(64)));
typedef float Vec8f __attribute__((vector_size(32)));
typedef float Vec16f __attribute__((vector_size(64)));

// Eight consecutive values (any alignment) widened to float64.
template <typename scalar_t>
MTL_SIMD_INLINE Vec8d load8(const scalar_t* p) {
  Vec8d v;
  for (int l = 0; l < 8; ++l) v[l] = static_cast<double>(p[l]);
  return v;
}

template <>
MTL_SIMD_INLINE Vec8d load8<float>(const float* p) {
  Vec8f f;
  std::memcpy(&f, p, sizeof(f));
  return __builtin_convertvector(f, Vec8d);
}

template <>
MTL_SIMD_INLINE Vec8d load8<double>(const double* p) {
  Vec8d v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Stores eight float64 lanes rounded to scalar_t (any alignment).
template <typename scalar_t>
MTL_SIMD_INLINE void store8(scalar_t* p, Vec8d v) {
  for (int l = 0; l < 8; ++l) p[l] = static_cast<scalar_t>(v[l]);
}

template <>
MTL_SIMD_INLINE void store8<float>(float* p, Vec8d v) {
  const Vec8f f = __builtin_convertvector(v, Vec8f);
  std::memcpy(p, &f, sizeof(f));
}

template <>
MTL_SIMD_INLINE void store8<double>(double* p, Vec8d v) {
  std::memcpy(p, &v, sizeof(v));
}

// Sixteen consecutive floats (any alignment).
MTL_SIMD_INLINE Vec16f load16(const float* p) {
  Vec16f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

typedef int32_t Vec16i __attribute__((vector_size(64)));

// |v|: clears the sign bits.
MTL_SIMD_INLINE Vec16f abs16(Vec16f v) {
  return reinterpret_cast<Vec16f>(reinterpret_cast<Vec16i>(v) & 0x7fffffff);
}

MTL_SIMD_INLINE double sum_lanes(Vec16f v) {
  double s = 0;
  for (int l = 0; l < 16; ++l) s += v[l];
  return s;
}

// The lane count of a vector type, and loads of that many consecutive values into it.
template <typename Vec>
constexpr int lanes_of() {
  return static_cast<int>(sizeof(Vec) / sizeof(Vec{}[0]));
}

template <typename Vec, typename scalar_t>
MTL_SIMD_INLINE Vec load_lanes(const scalar_t* p) {
  if constexpr (std::is_same_v<Vec, Vec16f>) {
    static_assert(std::is_same_v<scalar_t, float>, "float32 lanes are only loaded from float32 data");
    return load16(p);
  } else {
    return load8(p);
  }
}

MTL_SIMD_INLINE double sum_lanes(Vec8d v) {
  double s = 0;
  for (int l = 0; l < 8; ++l) s += v[l];
  return s;
}

}  // namespace mtl_fast
