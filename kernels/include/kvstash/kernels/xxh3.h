// XXH3-64 over large buffers at the speed of the widest vector unit the CPU has: on x86-64
// Debian's libxxhash exports runtime-dispatched entry points (xxh_x86dispatch.h; AVX2 or
// AVX-512 when present, ~3.5x the SSE2 baseline on 5 MB), elsewhere the plain functions.
// Same results either way (the XXH3 specification). Used for chunk and section checksums.
#ifndef KVSTASH_KERNELS_XXH3_H_
#define KVSTASH_KERNELS_XXH3_H_

#include <xxhash.h>

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif

namespace kvstash::kernels {

inline uint64_t Xxh3(const void* data, size_t size) {
#if defined(__x86_64__)
  return XXH3_64bits_dispatch(data, size);
#else
  return XXH3_64bits(data, size);
#endif
}

inline void Xxh3Update(XXH3_state_t* state, const void* data, size_t size) {
#if defined(__x86_64__)
  XXH3_64bits_update_dispatch(state, data, size);
#else
  XXH3_64bits_update(state, data, size);
#endif
}

}  // namespace kvstash::kernels

#endif  // KVSTASH_KERNELS_XXH3_H_
