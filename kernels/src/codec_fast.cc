// The fast CPU codec: AVX2 + FMA + F16C kernels chosen at run time, a scalar fallback (the
// reference, per tensor), and a small process-wide worker pool that spreads large chunks
// over layer pairs.
//
// Byte-identity with the reference (docs/format.md section 3) rests on:
//  - every fp32 value that reaches the output being computed by the same IEEE operations
//    in the same order: _mm256_div_ps (never rcp), separate mul and add (the build passes
//    -ffp-contract=off, so even with "fma" enabled nothing is fused), with the caller's
//    FTZ/DAZ switched off (ScopedIeeeMode);
//  - min/max being exact and order-independent (no NaN; the sign of zero fixed after);
//  - codes from exact per-group thresholds instead of a division per element (see
//    Threshold), which select exactly the code rint(clamp((x - mn) / s)) would;
//  - 16-bit conversions: F16C in both directions (fp16 -> fp32 is exact, fp32 -> fp16 with
//    imm 0 is round-to-nearest-even, after clamping to +-65504 as to16 requires), and the
//    same integer round-to-nearest-even trick as half.h for bf16.
// The tests compare this path with the reference byte for byte on random layouts, and
// are known to fail on an rcp-based division or a wrong tie rule.
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kvstash/kernels/xxh3.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "codec_internal.h"
#include "kvstash/kernels/half.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include "xxhash.h"

namespace kvstash::kernels::internal {
namespace {

// Chunks whose 16-bit side (input of an encode, output of a decode) is at least this many
// bytes are spread over the worker pool; smaller ones run on the calling thread, where the
// hand-off would cost more than it saves.
constexpr uint64_t kParallelBytes = 4ull << 20;

// --- Worker pool -------------------------------------------------------------------------

// A fixed set of threads draining one FIFO of tasks. Thread-safe. Process-wide and never
// destroyed (so no thread is joined during static destruction); idle threads sleep.
class WorkerPool {
 public:
  explicit WorkerPool(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  unsigned size() const { return static_cast<unsigned>(threads_.size()); }

  void Submit(std::function<void()> task) {
    absl::MutexLock lock(&mu_);  // wakes a worker waiting for HasWork on unlock
    queue_.push_back(std::move(task));
  }

 private:
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty(); }

  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &WorkerPool::HasWork));
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();  // never under the lock
    }
  }

  // absl::Mutex, not std::mutex: clang's -Wthread-safety checks ABSL_GUARDED_BY only
  // against an annotated mutex (libstdc++'s std::mutex is not).
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

// hardware_concurrency threads in all: the caller plus (n - 1) workers.
WorkerPool& Pool() {
  static WorkerPool* pool = [] {
    const unsigned threads = std::max(2u, std::thread::hardware_concurrency());
    return new WorkerPool(threads - 1);
  }();
  return *pool;
}

// Runs fn(0..n-1), on the pool and the calling thread when `parallel`, else inline. The
// caller takes work items too, so this finishes even when the pool is busy with another
// caller's tasks; helpers that start after all items are taken return at once.
void ParallelFor(size_t n, bool parallel, const std::function<void(size_t)>& fn) {
  if (!parallel || n < 2) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  struct Job {
    const std::function<void(size_t)>* fn;
    size_t n;
    std::atomic<size_t> next{0};
    std::atomic<size_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto job = std::make_shared<Job>();
  job->fn = &fn;  // valid until every item is done, which the caller waits for below
  job->n = n;
  auto work = [](Job& j) {
    const ScopedIeeeMode ieee;  // workers inherit whatever mode their creator had
    for (;;) {
      const size_t i = j.next.fetch_add(1);
      if (i >= j.n) return;
      (*j.fn)(i);
      if (j.done.fetch_add(1) + 1 == j.n) {
        std::lock_guard<std::mutex> lock(j.mu);
        j.cv.notify_all();
      }
    }
  };
  const size_t helpers = std::min<size_t>(Pool().size(), n - 1);
  for (size_t k = 0; k < helpers; ++k) Pool().Submit([job, work] { work(*job); });
  work(*job);
  std::unique_lock<std::mutex> lock(job->mu);
  job->cv.wait(lock, [&] { return job->done.load() == job->n; });
}

// The format's checksum (XXH3-64, seed 0; equal to Checksum() of the concatenation) fed
// tensor by tensor while each tensor's bytes are still in cache.
class SectionHasher {
 public:
  SectionHasher() { XXH3_64bits_reset(&state_); }
  // Adds bytes [begin, end) of `data`.
  void Update(const uint8_t* data, uint64_t begin, uint64_t end) {
    Xxh3Update(&state_, data + begin, end - begin);
  }
  uint64_t Digest() const { return XXH3_64bits_digest(&state_); }

 private:
  XXH3_state_t state_;
};

// --- Dispatch ----------------------------------------------------------------------------

bool HaveAvx2() {
  static const bool have = [] {
    __builtin_cpu_init();
    // F16C straight from CPUID (leaf 1, ECX bit 29): clang before 16 does not know
    // __builtin_cpu_supports("f16c").
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  }();
  return have;
}

// --- AVX2 kernels ------------------------------------------------------------------------

#define KV_AVX2 __attribute__((target("avx2,fma,f16c")))
// Lambdas do not inherit their enclosing function's target; GCC takes the attribute here.
#define KV_AVX2_LAMBDA __attribute__((target("avx2,fma,f16c")))

// 8 values of the 16-bit dtype -> fp32 (exact).
template <bool kBF16>
KV_AVX2 inline __m256 Load8(const void* p) {
  const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
  if constexpr (kBF16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(h);
  }
}

// The format's to16 on 8 lanes: clamp to the largest finite value, round to nearest even.
template <bool kBF16>
KV_AVX2 inline __m128i To16(__m256 v) {
  if constexpr (kBF16) {
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-kBF16Max)), _mm256_set1_ps(kBF16Max));
    const __m256i x = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)), 16);
    const __m256i packed = _mm256_packus_epi32(r, r);  // [r0..3 r0..3 | r4..7 r4..7]
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0xD8));
  } else {
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-kF16Max)), _mm256_set1_ps(kF16Max));
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  }
}

template <bool kBF16>
KV_AVX2 inline void Store8(void* p, __m256 v) {
  _mm_storeu_si128(static_cast<__m128i*>(p), To16<kBF16>(v));
}

// x + 0.0f: turns -0 into +0 (not folded away without -ffast-math).
KV_AVX2 inline __m256 Canon(__m256 v) { return _mm256_add_ps(v, _mm256_setzero_ps()); }

// Codes without a division per element. For s > 0, t = fl(d / s) is monotone in d (IEEE
// division is correctly rounded), and so is q = rint(min(max(t, 0), lv)):
//   1 bit:  q = [t > 0.5]
//   2 bits: q = [t > 0.5] + [t >= 1.5] + [t > 2.5]      (rint ties to even: 0.5->0,
//                                                          1.5->2, 2.5->2)
// Each term is therefore [d > c] for one float c per group: the largest c with
// fl(c / s) <= k (or < k for the ">=" term). Threshold() finds it exactly by starting at
// fl(k·s), which is within two ulps of it, and stepping one ulp at a time as the true
// quotient fl(c / s) says, so the codes equal the reference's division-based ones bit for
// bit (the fast-vs-reference tests check this on random data full of exact ties). Eight
// groups cost a handful of divisions instead of 256.
// REQUIRES: every lane of s is positive and finite (callers put 1 in lanes with s == 0
// and zero those codes).
template <bool kStrict>
KV_AVX2 inline __m256 Satisfies(__m256 c, __m256 s, __m256 vk) {  // fl(c / s) <= k (< k)
  const __m256 t = _mm256_div_ps(c, s);
  return kStrict ? _mm256_cmp_ps(t, vk, _CMP_LT_OQ) : _mm256_cmp_ps(t, vk, _CMP_LE_OQ);
}
// The exact threshold, stepping one ulp at a time from c (>= 0). c >= 0, so the next
// float up/down is the bit pattern plus/minus one; fl(0 / s) = 0 < k satisfies the
// predicate, so stepping down stops at 0 at the latest. Each loop ends after a few steps;
// the bound only guards against a broken precondition.
template <bool kStrict>
KV_AVX2 inline __m256 StepToThreshold(__m256 c, __m256 s, __m256 vk) {
  const __m256i one = _mm256_set1_epi32(1);
  for (int step = 0; step < 64; ++step) {
    const __m256 up = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(c), one));
    const __m256 m = Satisfies<kStrict>(up, s, vk);
    if (_mm256_testz_ps(m, m)) break;
    c = _mm256_blendv_ps(c, up, m);
  }
  for (int step = 0; step < 64; ++step) {
    const __m256 m =
        _mm256_andnot_ps(Satisfies<kStrict>(c, s, vk), _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
    if (_mm256_testz_ps(m, m)) break;
    c = _mm256_blendv_ps(c, _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_castps_si256(c), one)), m);
  }
  return c;
}

template <bool kStrict>
KV_AVX2 inline __m256 Threshold(__m256 s, float k) {
  const __m256 vk = _mm256_set1_ps(k);
  return StepToThreshold<kStrict>(_mm256_mul_ps(vk, s), s, vk);  // fl(k·s) is a few ulps off
}

// The thresholds of one group (per lane): code q = [d > c1] + [d > c2] + [d > c3]
// (2 bits) or [d > c1] (1 bit), where d = x - mn.
struct Thresholds {
  __m256 c1, c2, c3;
};
template <uint32_t kBits>
KV_AVX2 inline Thresholds MakeThresholds(__m256 s) {
  // Lanes with s == 0 get s = 1: finite thresholds; the caller zeroes their codes.
  const __m256 safe =
      _mm256_blendv_ps(s, _mm256_set1_ps(1.0f), _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ));
  Thresholds t;
  t.c1 = Threshold<false>(safe, 0.5f);
  if constexpr (kBits == 2) {
    t.c2 = Threshold<true>(safe, 1.5f);
    t.c3 = Threshold<false>(safe, 2.5f);
  } else {
    t.c2 = t.c3 = t.c1;
  }
  return t;
}

// Codes (int32 per lane) of d = x - mn against per-lane thresholds.
template <uint32_t kBits>
KV_AVX2 inline __m256i CodeOf(__m256 d, const Thresholds& t) {
  const __m256i m1 = _mm256_castps_si256(_mm256_cmp_ps(d, t.c1, _CMP_GT_OQ));  // -1 or 0
  if constexpr (kBits == 1) return _mm256_srli_epi32(m1, 31);
  const __m256i m2 = _mm256_castps_si256(_mm256_cmp_ps(d, t.c2, _CMP_GT_OQ));
  const __m256i m3 = _mm256_castps_si256(_mm256_cmp_ps(d, t.c3, _CMP_GT_OQ));
  return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_add_epi32(_mm256_add_epi32(m1, m2), m3));
}

// Per-tensor encode arguments.
struct EncArgs {
  const uint16_t* src;  // [T][H][D]
  uint8_t* codes;       // null when the layer shares codes
  uint8_t* scales;      // [NGR] 16-bit
  uint8_t* zeros;       // [NGR] 16-bit
  float eta;
  uint64_t H, D, NG, Tq;
};

// Keys: group i = (h·NG + g)·D + d covers tokens 32g..32g+31 of channel d. Eight channels
// are eight lanes. The min/max pass reads 32 channels (a cache line) of each of the 32 rows
// at once, four independent chains; the 32x32 block then stays in L1 for the code pass,
// which goes eight channels at a time.
//
// -0 is only turned into +0 after the reductions: min/max of the raw values equal those of
// the canonical ones up to the sign of a zero, which Canon() then fixes, and the code
// comparisons d > c (c >= 0) do not see the sign of a zero d.
template <bool kBF16, uint32_t kBits>
KV_AVX2 void EncodeK(const EncArgs& a) {
  const uint64_t stride = a.H * a.D;
  const __m256 lv = _mm256_set1_ps(kBits == 2 ? 3.0f : 1.0f);
  const __m256 eta = _mm256_set1_ps(a.eta);
  const __m256 factor = _mm256_set1_ps(1.0f - 2.0f * a.eta);
  for (uint64_t h = 0; h < a.H; ++h) {
    for (uint64_t g = 0; g < a.NG; ++g) {
      const uint16_t* blk = a.src + (32 * g * a.H + h) * a.D;
      const uint64_t i0 = (h * a.NG + g) * a.D;
      for (uint64_t d32 = 0; d32 < a.D; d32 += 32) {
        __m256 mns[4], mxs[4];
        for (int k = 0; k < 4; ++k) mns[k] = mxs[k] = Load8<kBF16>(blk + d32 + 8 * k);
        for (uint32_t j = 1; j < 32; ++j) {
          const uint16_t* row = blk + j * stride + d32;
          for (int k = 0; k < 4; ++k) {
            const __m256 v = Load8<kBF16>(row + 8 * k);
            mns[k] = _mm256_min_ps(mns[k], v);
            mxs[k] = _mm256_max_ps(mxs[k], v);
          }
        }
        for (int k = 0; k < 4; ++k) {
          const uint64_t d0 = d32 + 8 * k;
          const uint16_t* p = blk + d0;
          const __m256 mn = Canon(mns[k]), mx = Canon(mxs[k]);
          const __m256 r = _mm256_sub_ps(mx, mn);
          const __m256 s = _mm256_div_ps(r, lv);
          const __m256 zhat = _mm256_add_ps(mn, _mm256_mul_ps(eta, r));
          const __m256 shat = _mm256_mul_ps(factor, s);
          Store8<kBF16>(a.scales + 2 * (i0 + d0), shat);
          Store8<kBF16>(a.zeros + 2 * (i0 + d0), zhat);
          if (a.codes == nullptr) continue;
          const __m256i s_zero =
              _mm256_castps_si256(_mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ));
          const Thresholds th = MakeThresholds<kBits>(s);
          auto code = [&](uint32_t j) KV_AVX2_LAMBDA {
            return CodeOf<kBits>(_mm256_sub_ps(Load8<kBF16>(p + j * stride), mn), th);
          };
          if constexpr (kBits == 1) {
            __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 32
            for (uint32_t j = 0; j < 32; ++j) {
              acc = _mm256_or_si256(acc, _mm256_slli_epi32(code(j), j));
            }
            acc = _mm256_andnot_si256(s_zero, acc);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.codes + 4 * (i0 + d0)), acc);
          } else {
            __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
#pragma GCC unroll 16
            for (uint32_t j = 0; j < 16; ++j) {
              lo = _mm256_or_si256(lo, _mm256_slli_epi32(code(j), 2 * j));
            }
#pragma GCC unroll 16
            for (uint32_t j = 0; j < 16; ++j) {
              hi = _mm256_or_si256(hi, _mm256_slli_epi32(code(j + 16), 2 * j));
            }
            lo = _mm256_andnot_si256(s_zero, lo);
            hi = _mm256_andnot_si256(s_zero, hi);
            // Lane k's word is lo[k] | hi[k] << 32.
            const __m256i x = _mm256_unpacklo_epi32(lo, hi);  // words 0 1 | 4 5
            const __m256i y = _mm256_unpackhi_epi32(lo, hi);  // words 2 3 | 6 7
            uint8_t* c = a.codes + 8 * (i0 + d0);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(c),
                                _mm256_permute2x128_si256(x, y, 0x20));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 32),
                                _mm256_permute2x128_si256(x, y, 0x31));
          }
        }
      }
    }
  }
}

// Lane k of the result = min (max) over the eight lanes of v[k]: a transpose-and-reduce
// tree, cheaper than eight separate horizontal reductions.
template <bool kMax>
KV_AVX2 inline __m256 Op(__m256 a, __m256 b) {
  return kMax ? _mm256_max_ps(a, b) : _mm256_min_ps(a, b);
}
template <bool kMax>
KV_AVX2 inline __m256 Reduce8x8(const __m256* v) {
  __m256 h[4];
  for (int i = 0; i < 4; ++i) {
    // [a0 b0 a1 b1 | a4 b4 a5 b5] op [a2 b2 a3 b3 | a6 b6 a7 b7]
    h[i] = Op<kMax>(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                    _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m256 q[2];
  for (int i = 0; i < 2; ++i) {
    // lanes {0,1,2,3} hold v[4i..4i+3], reduced over 4 of their lanes (low or high half)
    q[i] = Op<kMax>(_mm256_shuffle_ps(h[2 * i], h[2 * i + 1], 0x44),
                    _mm256_shuffle_ps(h[2 * i], h[2 * i + 1], 0xEE));
  }
  return Op<kMax>(_mm256_permute2f128_ps(q[0], q[1], 0x20),
                  _mm256_permute2f128_ps(q[0], q[1], 0x31));
}

// Values: group i = (h·Tq + t)·C + c covers channels 32c..32c+31 of token t (C = D/32).
// Eight consecutive groups at a time: pass 1 reduces each group's four vectors to one min
// and one max vector, and a transpose tree turns those into the eight groups' min and max
// lanes; scales, zeros and code thresholds are then computed for the eight groups as one
// vector; pass 2 reloads each group (from L1) and packs its codes with movemask. -0 is
// handled as in EncodeK.
template <bool kBF16, uint32_t kBits>
KV_AVX2 void EncodeV(const EncArgs& a) {
  const uint64_t C = a.D / 32, per_head = a.Tq * C;  // a multiple of 32
  const __m256 lv = _mm256_set1_ps(kBits == 2 ? 3.0f : 1.0f);
  const __m256 eta = _mm256_set1_ps(a.eta);
  const __m256 factor = _mm256_set1_ps(1.0f - 2.0f * a.eta);
  alignas(32) float mn_buf[8], s_buf[8], c1_buf[8], c2_buf[8], c3_buf[8];
  __m256 mins[8], maxs[8];
  const uint16_t* group[8];
  for (uint64_t h = 0; h < a.H; ++h) {
    uint64_t t = 0, c = 0;
    for (uint64_t gb = 0; gb < per_head; gb += 8) {
      const uint64_t ib = h * per_head + gb;
      for (uint32_t k = 0; k < 8; ++k) {
        const uint16_t* p = group[k] = a.src + (t * a.H + h) * a.D + 32 * c;
        if (++c == C) c = 0, ++t;
        const __m256 v0 = Load8<kBF16>(p), v1 = Load8<kBF16>(p + 8), v2 = Load8<kBF16>(p + 16),
                     v3 = Load8<kBF16>(p + 24);
        mins[k] = _mm256_min_ps(_mm256_min_ps(v0, v1), _mm256_min_ps(v2, v3));
        maxs[k] = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
      }
      const __m256 mn = Canon(Reduce8x8<false>(mins)), mx = Canon(Reduce8x8<true>(maxs));
      const __m256 r = _mm256_sub_ps(mx, mn);
      const __m256 s = _mm256_div_ps(r, lv);
      Store8<kBF16>(a.scales + 2 * ib, _mm256_mul_ps(factor, s));
      Store8<kBF16>(a.zeros + 2 * ib, _mm256_add_ps(mn, _mm256_mul_ps(eta, r)));
      if (a.codes == nullptr) continue;
      _mm256_store_ps(mn_buf, mn);
      const Thresholds th = MakeThresholds<kBits>(s);
      _mm256_store_ps(s_buf, s);
      _mm256_store_ps(c1_buf, th.c1);
      _mm256_store_ps(c2_buf, th.c2);
      _mm256_store_ps(c3_buf, th.c3);
      for (uint32_t k = 0; k < 8; ++k) {
        uint8_t* out = a.codes + (ib + k) * 4 * kBits;
        if (s_buf[k] == 0.0f) {  // constant group: all codes 0
          std::memset(out, 0, 4 * kBits);
          continue;
        }
        const __m256 gmn = _mm256_broadcast_ss(&mn_buf[k]);
        const __m256 c1 = _mm256_broadcast_ss(&c1_buf[k]), c2 = _mm256_broadcast_ss(&c2_buf[k]),
                     c3 = _mm256_broadcast_ss(&c3_buf[k]);
        auto gt = [&](uint32_t v, __m256 c) KV_AVX2_LAMBDA {  // [d > c] of vector v, -1/0
          const __m256 d = _mm256_sub_ps(Load8<kBF16>(group[k] + 8 * v), gmn);
          return _mm256_castps_si256(_mm256_cmp_ps(d, c, _CMP_GT_OQ));
        };
        if constexpr (kBits == 1) {
          uint32_t w = 0;
          for (uint32_t v = 0; v < 4; ++v) {
            w |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(gt(v, c1))))
                 << (8 * v);
          }
          std::memcpy(out, &w, 4);
        } else {
          // q = [d > c1] + [d > c2] + [d > c3] with c1 <= c2 <= c3, so bit 0 of q is the xor
          // of the three and bit 1 is [d > c2]. Sixteen codes at a time as 16-bit lanes whose
          // low byte is all bit 0 and high byte all bit 1: movemask_epi8 then yields the
          // format's interleaved 2-bit packing directly.
          const __m256i high_bytes = _mm256_set1_epi16(static_cast<short>(0xFF00));
          uint64_t w = 0;
          for (uint32_t half = 0; half < 2; ++half) {
            const uint32_t v = 2 * half;
            // packs: [v 0-3, v+1 0-3 | v 4-7, v+1 4-7] as 64-bit quarters, fixed by 0xD8.
            const __m256i m1 = _mm256_packs_epi32(gt(v, c1), gt(v + 1, c1));
            const __m256i m2 = _mm256_packs_epi32(gt(v, c2), gt(v + 1, c2));
            const __m256i m3 = _mm256_packs_epi32(gt(v, c3), gt(v + 1, c3));
            const __m256i bit0 = _mm256_xor_si256(_mm256_xor_si256(m1, m2), m3);
            const __m256i lanes =
                _mm256_permute4x64_epi64(_mm256_blendv_epi8(bit0, m2, high_bytes), 0xD8);
            w |= static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_epi8(lanes)))
                 << (32 * half);
          }
          std::memcpy(out, &w, 8);
        }
      }
    }
  }
}

// Per-tensor decode arguments.
struct DecArgs {
  const uint8_t* codes;   // the codes this tensor decodes with
  const uint8_t* scales;  // [NGR]
  const uint8_t* zeros;   // [NGR]
  uint16_t* dst;          // [T][Hs][D]
  uint64_t h0, h1, D, NG, Tq;
};

template <bool kOut>
KV_AVX2 inline void Dequant8(uint16_t* o, __m256i q, __m256 scale, __m256 zero) {
  const __m256 prod = _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale);  // exact: q <= 3
  Store8<kOut>(o, _mm256_add_ps(prod, zero));
}

template <bool kIn, bool kOut, uint32_t kBits>
KV_AVX2 void DecodeK(const DecArgs& a) {
  const uint64_t Hs = a.h1 - a.h0, ostride = Hs * a.D;
  const __m256i mask = _mm256_set1_epi32(kBits == 2 ? 3 : 1);
  for (uint64_t h = a.h0; h < a.h1; ++h) {
    for (uint64_t g = 0; g < a.NG; ++g) {
      const uint64_t i0 = (h * a.NG + g) * a.D;
      uint16_t* o = a.dst + (32 * g * Hs + (h - a.h0)) * a.D;
      for (uint64_t d0 = 0; d0 < a.D; d0 += 8) {
        const __m256 sc = Load8<kIn>(a.scales + 2 * (i0 + d0));
        const __m256 zr = Load8<kIn>(a.zeros + 2 * (i0 + d0));
        if constexpr (kBits == 1) {
          const __m256i w =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.codes + 4 * (i0 + d0)));
#pragma GCC unroll 32
          for (uint32_t j = 0; j < 32; ++j) {
            Dequant8<kOut>(o + j * ostride + d0, _mm256_and_si256(_mm256_srli_epi32(w, j), mask),
                           sc, zr);
          }
        } else {
          const uint8_t* c = a.codes + 8 * (i0 + d0);
          const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
          const __m256i pa = _mm256_permutevar8x32_epi32(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)), idx);
          const __m256i pb = _mm256_permutevar8x32_epi32(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32)), idx);
          const __m256i lo = _mm256_permute2x128_si256(pa, pb, 0x20);  // low halves, lanes 0..7
          const __m256i hi = _mm256_permute2x128_si256(pa, pb, 0x31);  // high halves
#pragma GCC unroll 16
          for (uint32_t j = 0; j < 16; ++j) {
            Dequant8<kOut>(o + j * ostride + d0,
                           _mm256_and_si256(_mm256_srli_epi32(lo, 2 * j), mask), sc, zr);
          }
#pragma GCC unroll 16
          for (uint32_t j = 0; j < 16; ++j) {
            Dequant8<kOut>(o + (j + 16) * ostride + d0,
                           _mm256_and_si256(_mm256_srli_epi32(hi, 2 * j), mask), sc, zr);
          }
        }
      }
    }
  }
}

template <bool kIn, bool kOut, uint32_t kBits>
KV_AVX2 void DecodeV(const DecArgs& a) {
  const uint64_t C = a.D / 32, per_head = a.Tq * C, Hs = a.h1 - a.h0;
  const __m256i mask = _mm256_set1_epi32(kBits == 2 ? 3 : 1);
  __m256i sh[4];
  for (int v = 0; v < 4; ++v) {
    sh[v] = kBits == 1 ? _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                          _mm256_set1_epi32(8 * v))
                       : _mm256_add_epi32(_mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14),
                                          _mm256_set1_epi32(16 * (v & 1)));
  }
  alignas(32) float sc_buf[8], zr_buf[8];
  for (uint64_t h = a.h0; h < a.h1; ++h) {
    uint64_t t = 0, c = 0;
    for (uint64_t gb = 0; gb < per_head; gb += 8) {
      const uint64_t ib = h * per_head + gb;
      _mm256_store_ps(sc_buf, Load8<kIn>(a.scales + 2 * ib));
      _mm256_store_ps(zr_buf, Load8<kIn>(a.zeros + 2 * ib));
      for (uint32_t k = 0; k < 8; ++k) {
        uint16_t* o = a.dst + (t * Hs + (h - a.h0)) * a.D + 32 * c;
        if (++c == C) c = 0, ++t;
        const __m256 sc = _mm256_set1_ps(sc_buf[k]), zr = _mm256_set1_ps(zr_buf[k]);
        __m256i w[4];
        if constexpr (kBits == 1) {
          uint32_t word;
          std::memcpy(&word, a.codes + 4 * (ib + k), 4);
          w[0] = w[1] = w[2] = w[3] = _mm256_set1_epi32(static_cast<int>(word));
        } else {
          uint64_t word;
          std::memcpy(&word, a.codes + 8 * (ib + k), 8);
          w[0] = w[1] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(word)));
          w[2] = w[3] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(word >> 32)));
        }
        for (int v = 0; v < 4; ++v) {
          Dequant8<kOut>(o + 8 * v, _mm256_and_si256(_mm256_srlv_epi32(w[v], sh[v]), mask), sc, zr);
        }
      }
    }
  }
}

// n values of one 16-bit dtype to another (n a multiple of 8).
template <bool kIn, bool kOut>
KV_AVX2 void ConvertRow(const uint8_t* src, uint16_t* dst, uint64_t n) {
  for (uint64_t i = 0; i < n; i += 8) Store8<kOut>(dst + i, Load8<kIn>(src + 2 * i));
}

// True when every value is finite (and, for bf16, below 2^126 in magnitude).
template <bool kBF16>
KV_AVX2 bool AllEncodable(const uint16_t* p, uint64_t n) {
  const __m256i m = _mm256_set1_epi16(static_cast<short>(kBF16 ? 0x7FFF : 0x7C00));
  const __m256i lim = _mm256_set1_epi16(static_cast<short>(kBF16 ? 0x7E7F : 0x7C00));
  __m256i bad = _mm256_setzero_si256();
  uint64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i v =
        _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)), m);
    bad = _mm256_or_si256(bad, kBF16 ? _mm256_cmpgt_epi16(v, lim) : _mm256_cmpeq_epi16(v, lim));
  }
  if (!_mm256_testz_si256(bad, bad)) return false;
  for (; i < n; ++i) {
    if (!HalfIsEncodable(p[i], kBF16 ? 2 : 1)) return false;
  }
  return true;
}

// --- Per-tensor drivers ------------------------------------------------------------------

bool LayerEncodable(const ChunkShape& s, const uint16_t* in, uint32_t layer, bool avx2) {
  const uint16_t* p = InputTensor(s, in, layer, 0);
  const uint64_t n = 2ull * s.num_tokens * s.num_heads * s.head_dim;  // K and V
  const bool bf16 = s.dtype == DType::kBF16;
  if (avx2) return bf16 ? AllEncodable<true>(p, n) : AllEncodable<false>(p, n);
  for (uint64_t i = 0; i < n; ++i) {
    if (!HalfIsEncodable(p[i], static_cast<int>(s.dtype))) return false;
  }
  return true;
}

template <bool kBF16>
void EncodeTensorAvx2(const ChunkLayout& lay, const uint16_t* in, uint32_t layer, int x,
                      uint8_t* out) {
  const ChunkShape& s = lay.shape;
  const TensorLayout& tl = lay.tensor(layer, x);
  EncArgs a;
  a.src = InputTensor(s, in, layer, x);
  a.codes = tl.owns_codes ? out + tl.codes : nullptr;
  a.scales = out + tl.scales;
  a.zeros = out + tl.zeros;
  a.eta = EtaFor(lay.config, tl.bits);
  a.H = s.num_heads, a.D = s.head_dim, a.NG = lay.num_groups_t, a.Tq = lay.quant_tokens;
  if (lay.groups > 0) {
    if (x == 0) {
      tl.bits == 2 ? EncodeK<kBF16, 2>(a) : EncodeK<kBF16, 1>(a);
    } else {
      tl.bits == 2 ? EncodeV<kBF16, 2>(a) : EncodeV<kBF16, 1>(a);
    }
  }
  const uint64_t Tt = lay.tail_tokens, D = s.head_dim;
  for (uint64_t h = 0; h < s.num_heads; ++h) {
    for (uint64_t t = lay.quant_tokens; t < s.num_tokens; ++t) {
      std::memcpy(out + tl.tail + 2 * ((h * Tt + (t - lay.quant_tokens)) * D),
                  a.src + (t * s.num_heads + h) * D, 2 * D);
    }
  }
}

template <bool kIn, bool kOut>
void DecodeTensorAvx2(const ChunkLayout& lay, const uint8_t* const* sections, const Slice& slice,
                      uint32_t layer, int x, uint16_t* out) {
  const ChunkShape& s = lay.shape;
  const TensorLayout& tl = lay.tensor(layer, x);
  DecArgs a;
  a.dst = OutputTensor(s, slice, out, layer, x);
  a.h0 = slice.head_begin, a.h1 = slice.head_end;
  a.D = s.head_dim, a.NG = lay.num_groups_t, a.Tq = lay.quant_tokens;
  if (lay.groups > 0) {
    a.codes = SectionAt(lay, sections, layer, tl.codes);
    a.scales = SectionAt(lay, sections, layer, tl.scales);
    a.zeros = SectionAt(lay, sections, layer, tl.zeros);
    if (x == 0) {
      tl.bits == 2 ? DecodeK<kIn, kOut, 2>(a) : DecodeK<kIn, kOut, 1>(a);
    } else {
      tl.bits == 2 ? DecodeV<kIn, kOut, 2>(a) : DecodeV<kIn, kOut, 1>(a);
    }
  }
  const uint8_t* tail = SectionAt(lay, sections, layer, tl.tail);
  const uint64_t Tt = lay.tail_tokens, D = s.head_dim, Hs = a.h1 - a.h0;
  for (uint64_t h = a.h0; h < a.h1; ++h) {
    for (uint64_t t = lay.quant_tokens; t < s.num_tokens; ++t) {
      const uint8_t* src = tail + 2 * ((h * Tt + (t - lay.quant_tokens)) * D);
      uint16_t* dst = a.dst + (t * Hs + (h - a.h0)) * D;
      if constexpr (kIn == kOut) {
        std::memcpy(dst, src, 2 * D);
      } else {
        ConvertRow<kIn, kOut>(src, dst, D);
      }
    }
  }
}

void EncodeTensor(const ChunkLayout& lay, const uint16_t* in, uint32_t layer, int x, uint8_t* out,
                  bool avx2) {
  if (!avx2) return EncodeTensorReference(lay, in, layer, x, out);
  if (lay.shape.dtype == DType::kBF16) return EncodeTensorAvx2<true>(lay, in, layer, x, out);
  EncodeTensorAvx2<false>(lay, in, layer, x, out);
}

void DecodeTensor(const ChunkLayout& lay, const uint8_t* const* sections, const Slice& slice,
                  uint32_t layer, int x, DType out_dtype, uint16_t* out, bool avx2) {
  if (!avx2) return DecodeTensorReference(lay, sections, slice, layer, x, out_dtype, out);
  const bool in_bf16 = lay.shape.dtype == DType::kBF16, out_bf16 = out_dtype == DType::kBF16;
  if (in_bf16) {
    out_bf16 ? DecodeTensorAvx2<true, true>(lay, sections, slice, layer, x, out)
             : DecodeTensorAvx2<true, false>(lay, sections, slice, layer, x, out);
  } else {
    out_bf16 ? DecodeTensorAvx2<false, true>(lay, sections, slice, layer, x, out)
             : DecodeTensorAvx2<false, false>(lay, sections, slice, layer, x, out);
  }
}

}  // namespace

const char* FastPath() { return HaveAvx2() ? "avx2" : "scalar"; }

absl::Status EncodeFast(const ChunkLayout& lay, const uint16_t* in, uint8_t* out,
                        uint64_t* section_sums) {
  const bool avx2 = HaveAvx2();
  const uint32_t L = lay.shape.num_layers;
  std::atomic<bool> bad_input{false};
  // One work item per layer pair: validate each layer, write its arrays (which all lie in
  // the pair's own section, so items never write the same bytes) and hash each tensor's
  // bytes right after writing them.
  ParallelFor(lay.num_pairs(), lay.shape.payload_bytes() >= kParallelBytes, [&](size_t p) {
    SectionHasher hasher;
    for (uint32_t l = 2 * p; l < std::min<uint32_t>(2 * p + 2, L); ++l) {
      if (bad_input.load(std::memory_order_relaxed)) return;
      if (!LayerEncodable(lay.shape, in, l, avx2)) {
        bad_input.store(true);
        return;
      }
      for (int x = 0; x < 2; ++x) {
        EncodeTensor(lay, in, l, x, out, avx2);
        hasher.Update(out, TensorBegin(lay, l, x), TensorEnd(lay, l, x));
      }
    }
    section_sums[p] = hasher.Digest();
  });
  if (bad_input.load()) {
    // Rare: let the scalar scan find and name the first offending element.
    absl::Status st = ValidateInput(lay.shape, in);
    return st.ok() ? absl::InternalError("input: vector and scalar validation disagree") : st;
  }
  return absl::OkStatus();
}

absl::Status DecodeFast(const ParsedHeader& header, const uint8_t* const* sections,
                        const Slice& slice, DType out_dtype, uint16_t* out) {
  const ChunkLayout& lay = header.layout;
  const bool avx2 = HaveAvx2();
  const PairRange pairs = PairsForSlice(slice);
  const uint32_t n = pairs.last - pairs.first + 1;
  std::vector<absl::Status> status(n);
  // One work item per pair. Each tensor of the pair is hashed in section order and, when
  // the slice holds its layer, decoded right after, while its bytes are in cache; the
  // section's checksum is compared at the end (on a mismatch the output is unspecified and
  // the call fails with DataLoss).
  ParallelFor(n, DecodedBytes(lay.shape, slice) >= kParallelBytes, [&](size_t k) {
    const uint32_t p = pairs.first + static_cast<uint32_t>(k);
    const uint64_t base = lay.pairs[p].offset;  // sections[p] holds chunk offset `base`
    SectionHasher hasher;
    for (uint32_t l = 2 * p; l < std::min(2 * p + 2, lay.shape.num_layers); ++l) {
      for (int x = 0; x < 2; ++x) {
        hasher.Update(sections[p], TensorBegin(lay, l, x) - base, TensorEnd(lay, l, x) - base);
        if (l >= slice.layer_begin && l < slice.layer_end) {
          DecodeTensor(lay, sections, slice, l, x, out_dtype, out, avx2);
        }
      }
    }
    if (hasher.Digest() != header.section_checksums[p]) status[k] = SectionChecksumError(lay, p);
  });
  for (const absl::Status& st : status) {
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace kvstash::kernels::internal
