// Run-time SIMD dispatch for the CPU hot loops: GCC compiles each marked function for AVX-512, AVX2 and
// baseline x86-64 and picks one at load time, so the extension is fast on the machine it runs on and still
// portable to any x86-64 (no -march=native).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MTL_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MTL_CPU_CLONES
#endif
