// The CUDA codec against the CPU reference, byte for byte: encode (separate-pass and fused
// validity protocols, batched, and the naive baseline) and decode of random slices, on
// random and adversarial inputs of many layouts, from and into contiguous buffers and paged
// caches in the engines' strided layouts. Tests that need a device skip cleanly without
// one; the geometry, status and parameter tests run everywhere.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/cuda_chunk.h"
#include "kvstash/kernels/cuda_codec.h"
#include "kvstash/kernels/cuda_status.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"

namespace kvstash::kernels::cuda {
namespace {

bool HaveDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define REQUIRE_DEVICE()                    \
  if (!HaveDevice()) {                      \
    GTEST_SKIP() << "no CUDA device";       \
  }

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// Move-only device allocation.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&ptr_, std::max<size_t>(bytes, 16)) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

std::string Describe(const ChunkShape& s, const CodecConfig& c) {
  std::ostringstream o;
  o << "L=" << s.num_layers << " T=" << s.num_tokens << " H=" << s.num_heads
    << " D=" << s.head_dim << " " << DTypeName(s.dtype) << " raw=" << c.raw << " k_q=" << c.k_q
    << " v_q=" << c.v_q << " k_m=" << c.k_m << " v_m=" << c.v_m << " eta1=" << c.eta1
    << " eta2=" << c.eta2;
  return o.str();
}

// Random inputs. Tiles of (layer, tensor, 32 tokens, head) pick a mode, so key groups
// (strided over tokens) and value groups (contiguous channels) both meet every case:
// plain Gaussian with channel structure, constant groups, +-max of the dtype, subnormals,
// exact quantizer ties (small integers times a power of two), signed zeros, mixed.
std::vector<uint16_t> MakeInput(const ChunkShape& s, std::mt19937_64& rng, bool adversarial) {
  const int dt = static_cast<int>(s.dtype);
  const float big = dt == 1 ? kF16Max : 3.0e37f;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> in(s.elements());
  const uint64_t T = s.num_tokens, H = s.num_heads, D = s.head_dim;
  for (uint64_t lx = 0; lx < 2ull * s.num_layers; ++lx) {
    for (uint64_t t0 = 0; t0 < T; t0 += 32) {
      for (uint64_t h = 0; h < H; ++h) {
        const int mode = adversarial ? static_cast<int>(rng() % 8) : 0;
        const float off = 3.0f * normal(rng), spread = std::exp(2.0f * normal(rng));
        const int e = static_cast<int>(rng() % 20) - 10;
        for (uint64_t t = t0; t < std::min(T, t0 + 32); ++t) {
          for (uint64_t d = 0; d < D; ++d) {
            uint16_t v;
            switch (mode) {
              case 1: v = FloatToHalfSat(off, dt); break;  // constant groups
              case 2: v = FloatToHalfSat((rng() % 2 ? big : -big) * (rng() % 4 ? 1.0f : 0.5f), dt); break;
              case 3:  // subnormals of the 16-bit type (bf16: also fp32 subnormals)
                v = static_cast<uint16_t>((rng() % 2 ? 0x8000u : 0u) | (rng() % (dt == 1 ? 0x400u : 0x100u)));
                break;
              case 4: v = FloatToHalfSat(std::ldexp(static_cast<float>(rng() % 7), e) + off, dt); break;
              case 5: v = static_cast<uint16_t>(rng() % 2 ? 0x8000u : 0u); break;  // +-0
              case 6: {  // mixed: zeros, ties and Gaussians in one group
                const uint64_t k = rng() % 4;
                v = k == 0 ? static_cast<uint16_t>(0x8000u)
                    : k == 1 ? FloatToHalfSat(static_cast<float>(rng() % 4), dt)
                             : FloatToHalfSat(spread * normal(rng), dt);
                break;
              }
              case 7: v = FloatToHalfSat(std::ldexp(static_cast<float>(rng() % 4), e - 14), dt); break;
              default: v = FloatToHalfSat(off + spread * normal(rng), dt); break;
            }
            in[((lx * T + t) * H + h) * D + d] = v;
          }
        }
      }
    }
  }
  return in;
}

CodecConfig RandomConfig(uint32_t L, std::mt19937_64& rng) {
  while (true) {
    CodecConfig c;
    c.k_q = rng() % (L + 1), c.v_q = rng() % (L + 1);
    c.k_m = rng() % (L + 1), c.v_m = rng() % (L + 1);
    std::uniform_real_distribution<float> eta(0.0f, 0.49f);
    c.eta1 = rng() % 3 ? eta(rng) : 0.0f;
    c.eta2 = rng() % 3 ? eta(rng) : 0.0f;
    ChunkShape s{L, 64, 1, 32, DType::kF16};
    if (ValidateConfig(s, c).ok()) return c;
  }
}

// Where the first difference between two encoded chunks lies, for failure messages.
std::string FirstDifference(const ChunkLayout& lay, const std::vector<uint8_t>& a,
                            const std::vector<uint8_t>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i]) continue;
    std::ostringstream o;
    o << "first difference at byte " << i << " (cpu 0x" << std::hex << int(a[i]) << ", gpu 0x"
      << int(b[i]) << std::dec << ")";
    for (uint32_t l = 0; l < lay.shape.num_layers; ++l) {
      for (int x = 0; x < 2; ++x) {
        const TensorLayout& t = lay.tensor(l, x);
        auto in = [&](uint64_t off, uint64_t n) { return i >= off && i < off + n; };
        const char* what = nullptr;
        if (t.owns_codes && in(t.codes, lay.groups * 4 * t.bits)) what = "codes";
        if (in(t.scales, 2 * lay.groups)) what = "scales";
        if (in(t.zeros, 2 * lay.groups)) what = "zeros";
        if (what) o << " in layer " << l << (x ? " V " : " K ") << what;
      }
    }
    return o.str();
  }
  return "sizes differ";
}

class CudaCodecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (HaveDevice()) {
      ASSERT_CUDA(cudaStreamCreate(&stream_));
    }
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Encodes with every GPU path and checks each against the CPU reference; then decodes
  // `slices` random slices in both output dtypes against the CPU decoder.
  void CheckCase(const ChunkShape& shape, const CodecConfig& config, std::mt19937_64& rng,
                 bool adversarial, int slices = 3) {
    SCOPED_TRACE(Describe(shape, config) + (adversarial ? " adversarial" : ""));
    absl::StatusOr<ChunkLayout> layout = MakeLayout(shape, config);
    ASSERT_TRUE(layout.ok()) << layout.status();
    const ChunkLayout& lay = *layout;
    const std::vector<uint16_t> in = MakeInput(shape, rng, adversarial);
    std::vector<uint8_t> cpu(lay.total_bytes);
    ASSERT_TRUE(Encode(lay, in.data(), cpu.data(), Impl::kReference).ok());

    DeviceBuffer d_in(in.size() * 2), d_out(lay.total_bytes), d_flag(8);
    ASSERT_CUDA(cudaMemcpy(d_in.as<void>(), in.data(), in.size() * 2, cudaMemcpyHostToDevice));

    // 1. The separate-pass protocol through the host glue.
    ASSERT_CUDA(cudaMemset(d_out.as<void>(), 0xA5, lay.total_bytes));
    std::vector<uint8_t> gpu(lay.total_bytes, 0);
    absl::Status st = EncodeToHost(lay, d_in.as<uint16_t>(), d_out.as<uint8_t>(),
                                   d_flag.as<unsigned long long>(), stream_, gpu.data());
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE(gpu == cpu) << "separate pass: " << FirstDifference(lay, cpu, gpu);
    std::vector<uint8_t> fused(lay.total_bytes, 0);
    st = EncodeToHost(lay, d_in.as<uint16_t>(), d_out.as<uint8_t>(),
                      d_flag.as<unsigned long long>(), stream_, fused.data(),
                      ValidityCheck::kFused);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE(fused == cpu) << "fused host glue: " << FirstDifference(lay, cpu, fused);

    // 2. The fused check, 3. the naive baseline.
    const CudaGeometry geo = GeometryOf(lay);
    for (int variant = 0; variant < 2; ++variant) {
      ASSERT_CUDA(cudaMemset(d_out.as<void>(), 0x5A, lay.total_bytes));
      ASSERT_CUDA(cudaMemset(d_flag.as<void>(), 0xFF, 8));
      EncodeParams ep;
      ep.geo = geo;
      ep.in = d_in.as<uint16_t>();
      ep.out = d_out.as<uint8_t>();
      if (variant == 0) {
        ep.first_bad = d_flag.as<unsigned long long>();
        ASSERT_CUDA(LaunchEncode(ep, stream_));
      } else {
        ASSERT_CUDA(LaunchEncodeNaive(ep, stream_));
      }
      ASSERT_CUDA(cudaStreamSynchronize(stream_));
      unsigned long long flag = 0;
      ASSERT_CUDA(cudaMemcpy(&flag, d_flag.as<void>(), 8, cudaMemcpyDeviceToHost));
      EXPECT_EQ(flag, kNoBadElement);
      std::vector<uint8_t> g(lay.total_bytes);
      ASSERT_CUDA(cudaMemcpy(g.data(), d_out.as<void>(), lay.total_bytes, cudaMemcpyDeviceToHost));
      WriteHeader(lay, g.data());
      SealChecksums(lay, g.data());
      ASSERT_TRUE(g == cpu) << (variant == 0 ? "fused: " : "naive: ")
                            << FirstDifference(lay, cpu, g);
    }

    // Decode from sections that each live in their own allocation.
    std::vector<DeviceBuffer> pages;
    std::vector<const uint8_t*> ptrs;
    for (uint32_t p = 0; p < lay.num_pairs(); ++p) {
      pages.emplace_back(lay.pairs[p].bytes);
      ASSERT_CUDA(cudaMemcpy(pages.back().as<void>(), cpu.data() + lay.pairs[p].offset,
                             lay.pairs[p].bytes, cudaMemcpyHostToDevice));
      ptrs.push_back(pages.back().as<uint8_t>());
    }
    DeviceBuffer d_ptrs(ptrs.size() * sizeof(void*));
    ASSERT_CUDA(cudaMemcpy(d_ptrs.as<void>(), ptrs.data(), ptrs.size() * sizeof(void*),
                           cudaMemcpyHostToDevice));
    for (int k = 0; k < slices; ++k) {
      Slice sl;
      if (k > 0) {
        sl.layer_begin = rng() % shape.num_layers;
        sl.layer_end = sl.layer_begin + 1 + rng() % (shape.num_layers - sl.layer_begin);
        sl.head_begin = rng() % shape.num_heads;
        sl.head_end = sl.head_begin + 1 + rng() % (shape.num_heads - sl.head_begin);
      }
      absl::StatusOr<Slice> rs = ResolveSlice(shape, sl);
      ASSERT_TRUE(rs.ok()) << rs.status();
      const DType out_dtype = (k + rng()) % 2 ? DType::kF16 : DType::kBF16;
      SCOPED_TRACE(::testing::Message() << "slice layers [" << rs->layer_begin << ", "
                                        << rs->layer_end << ") heads [" << rs->head_begin << ", "
                                        << rs->head_end << ") out " << DTypeName(out_dtype));
      std::vector<uint16_t> want;
      absl::Status ds = Decode(cpu.data(), cpu.size(), *rs, out_dtype, &want, Impl::kReference);
      ASSERT_TRUE(ds.ok()) << ds;
      ASSERT_EQ(want.size() * 2, DecodedBytes(shape, *rs));
      DeviceBuffer d_dec(want.size() * 2);
      DecodeParams dp;
      dp.geo = geo;
      dp.sections = d_ptrs.as<const uint8_t* const>();
      dp.layer_begin = rs->layer_begin, dp.layer_end = rs->layer_end;
      dp.head_begin = rs->head_begin, dp.head_end = rs->head_end;
      dp.out_dtype = static_cast<uint32_t>(out_dtype);
      dp.out = d_dec.as<uint16_t>();
      for (int variant = 0; variant < 2; ++variant) {
        ASSERT_CUDA(cudaMemset(d_dec.as<void>(), 0xA5, d_dec.bytes()));
        ASSERT_CUDA(variant == 0 ? LaunchDecode(dp, stream_) : LaunchDecodeNaive(dp, stream_));
        ASSERT_CUDA(cudaStreamSynchronize(stream_));
        std::vector<uint16_t> got(want.size());
        ASSERT_CUDA(cudaMemcpy(got.data(), d_dec.as<void>(), d_dec.bytes(), cudaMemcpyDeviceToHost));
        if (got != want) {
          size_t i = 0;
          while (got[i] == want[i]) ++i;
          FAIL() << (variant ? "naive " : "") << "decode differs at element " << i << ": cpu 0x"
                 << std::hex << want[i] << " gpu 0x" << got[i];
        }
      }
    }
  }

  cudaStream_t stream_ = nullptr;
};

// --- Runs everywhere --------------------------------------------------------------------

TEST(CudaGeometryTest, OffsetsMatchComputeLayout) {
  std::mt19937_64 rng(7);
  for (int it = 0; it < 3000; ++it) {
    ChunkShape s{1 + static_cast<uint32_t>(rng() % 40), 1 + static_cast<uint32_t>(rng() % 300),
                 1 + static_cast<uint32_t>(rng() % 9), 32 * (1 + static_cast<uint32_t>(rng() % 8)),
                 rng() % 2 ? DType::kF16 : DType::kBF16};
    CodecConfig c;
    const int kind = static_cast<int>(rng() % 5);
    c = kind < 4 ? PresetConfig(static_cast<Preset>(kind + 1), s.num_layers)
                 : RandomConfig(s.num_layers, rng);
    const ChunkLayout lay = ComputeLayout(s, c);
    const CudaGeometry g = GeometryOf(lay);
    SCOPED_TRACE(Describe(s, c));
    ASSERT_EQ(g.layer_offset(s.num_layers), lay.total_bytes);
    for (uint32_t p = 0; p < lay.num_pairs(); ++p) {
      ASSERT_EQ(g.pair_offset(p), lay.pairs[p].offset);
      ASSERT_EQ(g.pair_bytes(p), lay.pairs[p].bytes);
    }
    for (uint32_t l = 0; l < s.num_layers; ++l) {
      for (int x = 0; x < 2; ++x) {
        const TensorLayout& want = lay.tensor(l, x);
        const TensorOffsets got = g.tensor(l, x);
        ASSERT_EQ(got.bits, want.bits) << l << " " << x;
        ASSERT_EQ(got.owns_codes, want.owns_codes) << l << " " << x;
        ASSERT_EQ(got.codes, want.codes) << l << " " << x;
        ASSERT_EQ(got.scales, want.scales) << l << " " << x;
        ASSERT_EQ(got.zeros, want.zeros) << l << " " << x;
        ASSERT_EQ(got.tail, want.tail) << l << " " << x;
      }
    }
  }
}

TEST(CudaStatusTest, MapsErrorsToCodes) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "ctx").ok());
  const absl::Status oom = CudaStatus(cudaErrorMemoryAllocation, "alloc pool");
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(oom.message().find("alloc pool"), std::string::npos);
  EXPECT_NE(oom.message().find("cudaErrorMemoryAllocation"), std::string::npos);
  const absl::Status inv = CudaStatus(cudaErrorInvalidValue, "launch");
  EXPECT_EQ(inv.code(), absl::StatusCode::kInternal);
  EXPECT_NE(inv.message().find("cudaErrorInvalidValue"), std::string::npos);
  EXPECT_EQ(CudaStatus(cudaErrorLaunchFailure, "k").code(), absl::StatusCode::kInternal);
}

absl::Status ReturnsThroughMacro(cudaError_t e) {
  KVSTASH_CUDA_RETURN_IF_ERROR(e, "macro");
  return absl::OkStatus();
}

TEST(CudaStatusTest, MacroReturnsOnlyOnError) {
  EXPECT_TRUE(ReturnsThroughMacro(cudaSuccess).ok());
  EXPECT_EQ(ReturnsThroughMacro(cudaErrorMemoryAllocation).code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(CudaLaunchTest, RejectsBadParamsBeforeLaunching) {
  const ChunkLayout lay = ComputeLayout({2, 64, 2, 64, DType::kF16}, PresetConfig(Preset::kXQuant, 2));
  EncodeParams ep;
  ep.geo = GeometryOf(lay);
  EXPECT_EQ(LaunchEncode(ep, nullptr), cudaErrorInvalidValue);  // null pointers
  ep.in = reinterpret_cast<const uint16_t*>(uintptr_t{0x1000});
  ep.out = reinterpret_cast<uint8_t*>(uintptr_t{0x2008});  // misaligned
  EXPECT_EQ(LaunchEncode(ep, nullptr), cudaErrorInvalidValue);
  ep.out = reinterpret_cast<uint8_t*>(uintptr_t{0x2000});
  ep.geo.head_dim = 48;  // not a multiple of 32
  EXPECT_EQ(LaunchEncode(ep, nullptr), cudaErrorInvalidValue);
  ep.geo = GeometryOf(lay);
  ep.geo.total_bytes += 64;  // geometry that is not this layout's
  EXPECT_EQ(LaunchEncode(ep, nullptr), cudaErrorInvalidValue);
  DecodeParams dp;
  dp.geo = GeometryOf(lay);
  dp.sections = reinterpret_cast<const uint8_t* const*>(uintptr_t{0x3000});
  dp.out = reinterpret_cast<uint16_t*>(uintptr_t{0x4000});
  dp.layer_begin = 1, dp.layer_end = 1, dp.head_begin = 0, dp.head_end = 2;  // empty
  EXPECT_EQ(LaunchDecode(dp, nullptr), cudaErrorInvalidValue);
  dp.layer_end = 3;  // past L
  EXPECT_EQ(LaunchDecode(dp, nullptr), cudaErrorInvalidValue);
  ValidateParams vp;
  EXPECT_EQ(LaunchValidate(vp, nullptr), cudaErrorInvalidValue);
}

TEST(CudaLaunchTest, RejectsPagedViewsWithStridesNotMultiplesOfEightElements) {
  const ChunkLayout lay =
      ComputeLayout({2, 64, 2, 64, DType::kF16}, PresetConfig(Preset::kXQuant, 2));
  PagedView good;
  good.planes = reinterpret_cast<uint16_t* const*>(uintptr_t{0x1000});
  good.block_ids = reinterpret_cast<const uint32_t*>(uintptr_t{0x2000});
  good.block_size = 16;
  good.block_stride = 16 * 128;
  good.token_stride = 64;
  good.head_stride = 16 * 64;
  EncodeParams ep;
  ep.geo = GeometryOf(lay);
  ep.out = reinterpret_cast<uint8_t*>(uintptr_t{0x3000});
  DecodeParams dp;
  dp.geo = ep.geo;
  dp.sections = reinterpret_cast<const uint8_t* const*>(uintptr_t{0x4000});
  dp.layer_begin = 0, dp.layer_end = 2, dp.head_begin = 0, dp.head_end = 2;
  auto refused = [&](PagedView v) {
    ep.paged = v;
    dp.paged = v;
    return LaunchEncode(ep, nullptr) == cudaErrorInvalidValue &&
           LaunchDecode(dp, nullptr) == cudaErrorInvalidValue;
  };
  PagedView v = good;
  v.token_stride = 68;  // 136 bytes: a head would start off a 16-byte boundary
  EXPECT_TRUE(refused(v));
  v = good;
  v.head_stride = 4;
  EXPECT_TRUE(refused(v));
  v = good;
  v.block_stride = 12;
  EXPECT_TRUE(refused(v));
  v = good;
  v.first_slot = 16;
  EXPECT_TRUE(refused(v));
  // Resolved fills only the zero strides, with the defaults of contiguous rows.
  v = good;
  v.token_stride = 0;
  v.head_stride = 0;
  const PagedView r = v.Resolved(3, 96);
  EXPECT_EQ(r.token_stride, 3u * 96);
  EXPECT_EQ(r.head_stride, 96u);
  EXPECT_EQ(good.Resolved(3, 96).token_stride, good.token_stride);
  EXPECT_EQ(good.Resolved(3, 96).head_stride, good.head_stride);
}

// --- Needs a device ---------------------------------------------------------------------

TEST_F(CudaCodecTest, PresetsMatchCpuReference) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(1);
  const uint32_t dims[] = {64, 96, 128, 256};
  for (uint32_t D : dims) {
    for (DType dt : {DType::kF16, DType::kBF16}) {
      for (Preset p : {Preset::kFp16, Preset::kKivi2, Preset::kAsymKv15, Preset::kXQuant}) {
        const uint32_t L = 1 + rng() % 6, T = 1 + rng() % 140, H = 1 + rng() % 8;
        CheckCase({L, T, H, D, dt}, PresetConfig(p, L), rng, /*adversarial=*/false);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_F(CudaCodecTest, RandomLayoutsAndConfigsMatchCpuReference) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(2);
  const uint32_t tokens[] = {1, 7, 31, 32, 33, 63, 64, 65, 100, 128, 200, 257};
  for (int it = 0; it < 60; ++it) {
    const uint32_t L = 1 + rng() % 9, T = tokens[rng() % 12], H = 1 + rng() % 8;
    const uint32_t D = 32 * (1 + rng() % (rng() % 4 ? 8 : 16));  // specialized + generic
    const DType dt = rng() % 2 ? DType::kF16 : DType::kBF16;
    const int kind = static_cast<int>(rng() % 6);
    const CodecConfig c = kind < 4 ? PresetConfig(static_cast<Preset>(kind + 1), L)
                                   : RandomConfig(L, rng);
    CheckCase({L, T, H, D, dt}, c, rng, /*adversarial=*/rng() % 2 == 0);
    if (HasFatalFailure()) return;
  }
}

TEST_F(CudaCodecTest, AdversarialInputsMatchCpuReference) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(3);
  for (int it = 0; it < 24; ++it) {
    const uint32_t L = 2 + rng() % 5, T = 32 + rng() % 100, H = 1 + rng() % 4;
    const uint32_t D = (it % 4 + 1) * 32 * (it % 2 ? 1 : 2);
    const DType dt = it % 2 ? DType::kF16 : DType::kBF16;
    const CodecConfig c = it % 3 == 0 ? PresetConfig(Preset::kXQuant, L)
                        : it % 3 == 1 ? PresetConfig(Preset::kKivi2, L)
                                      : RandomConfig(L, rng);
    CheckCase({L, T, H, D, dt}, c, rng, /*adversarial=*/true, /*slices=*/2);
    if (HasFatalFailure()) return;
  }
}

TEST_F(CudaCodecTest, LargerXQuantChunkMatchesCpuReference) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(4);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    CheckCase({32, 300, 8, 128, dt}, PresetConfig(Preset::kXQuant, 32), rng, false, 4);
    if (HasFatalFailure()) return;
  }
}

TEST_F(CudaCodecTest, BatchedEncodeAndDecodeEqualPerChunk) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(5);
  const ChunkShape shape{5, 97, 3, 128, DType::kBF16};
  const ChunkLayout lay = ComputeLayout(shape, PresetConfig(Preset::kXQuant, 5));
  constexpr uint32_t kChunks = 3;
  std::vector<uint16_t> in;
  std::vector<std::vector<uint8_t>> cpu;
  for (uint32_t c = 0; c < kChunks; ++c) {
    std::vector<uint16_t> one = MakeInput(shape, rng, c == 1);
    cpu.emplace_back(lay.total_bytes);
    ASSERT_TRUE(Encode(lay, one.data(), cpu.back().data(), Impl::kReference).ok());
    in.insert(in.end(), one.begin(), one.end());
  }
  DeviceBuffer d_in(in.size() * 2), d_out(kChunks * lay.total_bytes), d_flag(8);
  ASSERT_CUDA(cudaMemcpy(d_in.as<void>(), in.data(), in.size() * 2, cudaMemcpyHostToDevice));
  ValidateParams vp{d_in.as<uint16_t>(), in.size(), 2, d_flag.as<unsigned long long>()};
  ASSERT_CUDA(LaunchValidate(vp, stream_));
  EncodeParams ep;
  ep.geo = GeometryOf(lay);
  ep.in = d_in.as<uint16_t>();
  ep.out = d_out.as<uint8_t>();
  ep.num_chunks = kChunks;
  ep.gate = d_flag.as<unsigned long long>();
  ASSERT_CUDA(LaunchEncode(ep, stream_));
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  std::vector<uint8_t> all(kChunks * lay.total_bytes);
  ASSERT_CUDA(cudaMemcpy(all.data(), d_out.as<void>(), all.size(), cudaMemcpyDeviceToHost));
  std::vector<const uint8_t*> ptrs;
  for (uint32_t c = 0; c < kChunks; ++c) {
    std::vector<uint8_t> g(all.begin() + c * lay.total_bytes, all.begin() + (c + 1) * lay.total_bytes);
    WriteHeader(lay, g.data());
    SealChecksums(lay, g.data());
    ASSERT_TRUE(g == cpu[c]) << "chunk " << c << ": " << FirstDifference(lay, cpu[c], g);
    for (uint32_t p = 0; p < lay.num_pairs(); ++p)
      ptrs.push_back(d_out.as<uint8_t>() + c * lay.total_bytes + lay.pairs[p].offset);
  }
  DeviceBuffer d_ptrs(ptrs.size() * sizeof(void*));
  ASSERT_CUDA(cudaMemcpy(d_ptrs.as<void>(), ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice));
  const Slice sl{1, 4, 1, 3};
  const uint64_t per = DecodedBytes(shape, sl) / 2;
  DeviceBuffer d_dec(kChunks * per * 2);
  DecodeParams dp;
  dp.geo = ep.geo;
  dp.sections = d_ptrs.as<const uint8_t* const>();
  dp.num_chunks = kChunks;
  dp.layer_begin = 1, dp.layer_end = 4, dp.head_begin = 1, dp.head_end = 3;
  dp.out_dtype = 1;
  dp.out = d_dec.as<uint16_t>();
  ASSERT_CUDA(LaunchDecode(dp, stream_));
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  std::vector<uint16_t> got(kChunks * per);
  ASSERT_CUDA(cudaMemcpy(got.data(), d_dec.as<void>(), got.size() * 2, cudaMemcpyDeviceToHost));
  for (uint32_t c = 0; c < kChunks; ++c) {
    std::vector<uint16_t> want;
    ASSERT_TRUE(Decode(cpu[c].data(), cpu[c].size(), sl, DType::kF16, &want, Impl::kReference).ok());
    ASSERT_TRUE(std::equal(want.begin(), want.end(), got.begin() + c * per)) << "chunk " << c;
  }
}

TEST_F(CudaCodecTest, RejectsNonFiniteInputBeforeWriting) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(6);
  struct Bad { DType dt; uint16_t value; };
  const Bad bads[] = {{DType::kF16, 0x7C00}, {DType::kF16, 0xFC00}, {DType::kF16, 0x7E01},
                      {DType::kBF16, 0x7F80}, {DType::kBF16, 0xFFC1}, {DType::kBF16, 0x7E80},
                      {DType::kBF16, 0xFE80}};
  for (const Bad& b : bads) {
    for (Preset p : {Preset::kXQuant, Preset::kFp16}) {
      const ChunkShape shape{3, 70, 2, 64, b.dt};
      SCOPED_TRACE(::testing::Message() << DTypeName(b.dt) << " 0x" << std::hex << b.value << " "
                                        << PresetName(p));
      const ChunkLayout lay = ComputeLayout(shape, PresetConfig(p, 3));
      std::vector<uint16_t> in = MakeInput(shape, rng, false);
      // Two bad elements; the lower index must be reported. Cover quantized and tail tokens.
      uint64_t i1 = rng() % in.size(), i2 = rng() % in.size();
      in[i1] = b.value;
      in[i2] = b.value;
      const uint64_t first = std::min(i1, i2);
      std::vector<uint8_t> cpu(lay.total_bytes);
      EXPECT_EQ(Encode(lay, in.data(), cpu.data(), Impl::kReference).code(),
                absl::StatusCode::kInvalidArgument);

      DeviceBuffer d_in(in.size() * 2), d_out(lay.total_bytes), d_flag(8);
      ASSERT_CUDA(cudaMemcpy(d_in.as<void>(), in.data(), in.size() * 2, cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaMemset(d_out.as<void>(), 0xA5, lay.total_bytes));
      std::vector<uint8_t> host(lay.total_bytes);
      const absl::Status st = EncodeToHost(lay, d_in.as<uint16_t>(), d_out.as<uint8_t>(),
                                           d_flag.as<unsigned long long>(), stream_, host.data());
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
      EXPECT_EQ(st, ValidateInput(shape, in.data())) << "same message as the CPU";
      std::vector<uint8_t> after(lay.total_bytes);
      ASSERT_CUDA(cudaMemcpy(after.data(), d_out.as<void>(), after.size(), cudaMemcpyDeviceToHost));
      EXPECT_TRUE(std::all_of(after.begin(), after.end(), [](uint8_t v) { return v == 0xA5; }))
          << "the encoder wrote output for a rejected chunk";

      // The fused protocol rejects it with the same status.
      EXPECT_EQ(EncodeToHost(lay, d_in.as<uint16_t>(), d_out.as<uint8_t>(),
                             d_flag.as<unsigned long long>(), stream_, host.data(),
                             ValidityCheck::kFused),
                ValidateInput(shape, in.data()));

      // Fused check reports the same first index.
      ASSERT_CUDA(cudaMemset(d_flag.as<void>(), 0xFF, 8));
      EncodeParams ep;
      ep.geo = GeometryOf(lay);
      ep.in = d_in.as<uint16_t>();
      ep.out = d_out.as<uint8_t>();
      ep.first_bad = d_flag.as<unsigned long long>();
      ASSERT_CUDA(LaunchEncode(ep, stream_));
      ASSERT_CUDA(cudaStreamSynchronize(stream_));
      unsigned long long flag = 0;
      ASSERT_CUDA(cudaMemcpy(&flag, d_flag.as<void>(), 8, cudaMemcpyDeviceToHost));
      EXPECT_EQ(flag, first);
    }
  }
}

TEST_F(CudaCodecTest, AcceptsLargestEncodableValues) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(8);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    const ChunkShape shape{2, 64, 1, 32, dt};
    std::vector<uint16_t> in = MakeInput(shape, rng, false);
    const uint16_t hi = dt == DType::kF16 ? 0x7BFF : 0x7E7F;  // 65504, largest bf16 < 2^126
    for (size_t i = 0; i < in.size(); i += 3) in[i] = static_cast<uint16_t>(i % 2 ? hi : hi | 0x8000);
    const ChunkLayout lay = ComputeLayout(shape, PresetConfig(Preset::kXQuant, 2));
    std::vector<uint8_t> cpu(lay.total_bytes), gpu(lay.total_bytes);
    ASSERT_TRUE(Encode(lay, in.data(), cpu.data(), Impl::kReference).ok());
    DeviceBuffer d_in(in.size() * 2), d_out(lay.total_bytes), d_flag(8);
    ASSERT_CUDA(cudaMemcpy(d_in.as<void>(), in.data(), in.size() * 2, cudaMemcpyHostToDevice));
    const absl::Status st = EncodeToHost(lay, d_in.as<uint16_t>(), d_out.as<uint8_t>(),
                                         d_flag.as<unsigned long long>(), stream_, gpu.data());
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_TRUE(gpu == cpu) << FirstDifference(lay, cpu, gpu);
  }
}

TEST_F(CudaCodecTest, LaunchErrorsBecomeStatuses) {
  REQUIRE_DEVICE();
  const ChunkLayout lay = ComputeLayout({2, 64, 2, 64, DType::kF16}, PresetConfig(Preset::kXQuant, 2));
  const absl::Status st = EncodeToHost(lay, nullptr, nullptr, nullptr, stream_, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find("cudaErrorInvalidValue"), std::string::npos) << st;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, size_t{1} << 62);  // far beyond any device
  EXPECT_EQ(CudaStatus(e, "huge").code(), absl::StatusCode::kResourceExhausted);
  cudaGetLastError();  // clear the sticky-free allocation error
}

// --- Paged caches in the engines' layouts -------------------------------------------------

// Block orders of docs/api.md "Paged caches", in one buffer; sizes and strides in elements.
enum class Order {
  kRowsPadded,     // [2L][N][bs][H][D] with 8 elements after each block, default strides
  kHnd,            // vLLM HND: per plane [N][H][bs][D]
  kInterleavedKv,  // vLLM: per layer [N][H][bs][2D], K then V in each row
  kPageFirst,      // SGLang HiCache: [2][S][L][H][D]
};

struct StridedCache {
  uint32_t heads = 0, head_dim = 0, block_size = 0;
  uint64_t block_stride = 0, token_stride = 0, head_stride = 0;  // 0 = default
  std::vector<uint64_t> planes;  // offset of each plane's block 0
  uint64_t elements = 0;         // the whole buffer

  uint64_t At(uint32_t lx, uint32_t b, uint32_t slot, uint32_t h) const {
    const uint64_t ts = token_stride ? token_stride : uint64_t{heads} * head_dim;
    const uint64_t hs = head_stride ? head_stride : head_dim;
    return planes[lx] + b * block_stride + slot * ts + h * hs;
  }
};

StridedCache MakeStrided(Order order, uint32_t L, uint32_t H, uint32_t D, uint32_t bs,
                         uint32_t N) {
  StridedCache c;
  c.heads = H, c.head_dim = D, c.block_size = bs;
  const uint64_t row = uint64_t{H} * D, S = uint64_t{N} * bs;
  switch (order) {
    case Order::kRowsPadded:
      c.block_stride = bs * row + 8;
      for (uint64_t lx = 0; lx < 2ull * L; ++lx) c.planes.push_back(lx * N * c.block_stride);
      c.elements = 2ull * L * N * c.block_stride;
      break;
    case Order::kHnd:
      c.block_stride = bs * row, c.token_stride = D, c.head_stride = uint64_t{bs} * D;
      for (uint64_t lx = 0; lx < 2ull * L; ++lx) c.planes.push_back(lx * S * row);
      c.elements = 2ull * L * S * row;
      break;
    case Order::kInterleavedKv:
      c.block_stride = 2 * bs * row, c.token_stride = 2ull * D, c.head_stride = 2ull * bs * D;
      for (uint64_t l = 0; l < L; ++l) {
        c.planes.push_back(l * 2 * S * row);
        c.planes.push_back(l * 2 * S * row + D);
      }
      c.elements = 2ull * L * S * row;
      break;
    case Order::kPageFirst:
      c.block_stride = bs * L * row, c.token_stride = L * row, c.head_stride = D;
      for (uint64_t l = 0; l < L; ++l) {
        c.planes.push_back(l * row);
        c.planes.push_back(S * L * row + l * row);
      }
      c.elements = 2ull * S * L * row;
      break;
  }
  return c;
}

// Copies [planes][T][H][D] `flat` into (or out of) the cache image, tokens from first_slot.
void CopyStrided(const StridedCache& c, const std::vector<uint32_t>& ids, uint32_t first_slot,
                 uint32_t tokens, std::vector<uint16_t>& image, std::vector<uint16_t>& flat,
                 bool into_image) {
  for (uint32_t lx = 0; lx < c.planes.size(); ++lx) {
    for (uint32_t t = 0; t < tokens; ++t) {
      const uint32_t s = first_slot + t;
      for (uint32_t h = 0; h < c.heads; ++h) {
        const uint64_t at = c.At(lx, ids[s / c.block_size], s % c.block_size, h);
        const uint64_t f = ((uint64_t{lx} * tokens + t) * c.heads + h) * c.head_dim;
        for (uint32_t d = 0; d < c.head_dim; ++d) {
          if (into_image) {
            image[at + d] = flat[f + d];
          } else {
            flat[f + d] = image[at + d];
          }
        }
      }
    }
  }
}

// A strided cache in device memory with its view's device tables.
struct DeviceCache {
  DeviceCache(const StridedCache& c, const std::vector<uint32_t>& ids, uint32_t first_slot,
              const std::vector<uint16_t>& image)
      : buffer(image.size() * 2), d_planes(c.planes.size() * sizeof(void*)),
        d_ids(ids.size() * 4), host_ids(ids) {
    EXPECT_EQ(cudaMemcpy(buffer.as<void>(), image.data(), image.size() * 2,
                         cudaMemcpyHostToDevice), cudaSuccess);
    for (uint64_t off : c.planes) host_planes.push_back(buffer.as<uint16_t>() + off);
    EXPECT_EQ(cudaMemcpy(d_planes.as<void>(), host_planes.data(), d_planes.bytes(),
                         cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(d_ids.as<void>(), ids.data(), d_ids.bytes(), cudaMemcpyHostToDevice),
              cudaSuccess);
    view.planes = d_planes.as<uint16_t* const>();
    view.block_ids = d_ids.as<const uint32_t>();
    view.block_size = c.block_size;
    view.first_slot = first_slot;
    view.block_stride = c.block_stride;
    view.token_stride = c.token_stride;
    view.head_stride = c.head_stride;
  }
  std::vector<uint16_t> Download() const {
    std::vector<uint16_t> out(buffer.bytes() / 2);
    EXPECT_EQ(cudaMemcpy(out.data(), buffer.as<void>(), buffer.bytes(), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }
  PagedInput Input() const { return {view, host_planes, host_ids}; }

  DeviceBuffer buffer, d_planes, d_ids;
  std::vector<uint16_t*> host_planes;
  std::vector<uint32_t> host_ids;
  PagedView view;
};

std::vector<uint16_t> RandomImage(uint64_t elements, std::mt19937_64& rng) {
  std::vector<uint16_t> v(elements);
  for (uint16_t& x : v) x = static_cast<uint16_t>(rng());
  return v;
}

std::vector<uint32_t> RandomIds(uint32_t num_blocks, uint32_t count, std::mt19937_64& rng) {
  std::vector<uint32_t> ids(num_blocks);
  for (uint32_t i = 0; i < num_blocks; ++i) ids[i] = i;
  std::shuffle(ids.begin(), ids.end(), rng);
  ids.resize(count);
  return ids;
}

TEST_F(CudaCodecTest, PagedStridedEncodeAndDecodeMatchTheCpuByteForByte) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(9);
  const Order orders[] = {Order::kRowsPadded, Order::kHnd, Order::kInterleavedKv,
                          Order::kPageFirst};
  const uint32_t kBlocks = 8;
  int it = 0;
  for (DType dt : {DType::kF16, DType::kBF16}) {
    for (Order order : orders) {
      for (uint32_t D : {64u, 128u, 160u}) {  // 160: the generic-D kernels
        ++it;
        const uint32_t L = 3, T = 40 + rng() % 60, H = 3, bs = 16;
        const ChunkShape shape{L, T, H, D, dt};
        const CodecConfig config = it % 3 == 0   ? PresetConfig(Preset::kFp16, L)
                                   : it % 3 == 1 ? PresetConfig(Preset::kXQuant, L)
                                                 : RandomConfig(L, rng);
        SCOPED_TRACE(::testing::Message() << Describe(shape, config) << " order "
                                          << static_cast<int>(order));
        const ChunkLayout lay = ComputeLayout(shape, config);
        std::vector<uint16_t> in = MakeInput(shape, rng, it % 2 == 0);
        std::vector<uint8_t> cpu(lay.total_bytes);
        ASSERT_TRUE(Encode(lay, in.data(), cpu.data(), Impl::kReference).ok());

        // Encode from random blocks at a random first slot.
        const StridedCache sc = MakeStrided(order, L, H, D, bs, kBlocks);
        const uint32_t put_slot = rng() % bs;
        const std::vector<uint32_t> ids = RandomIds(kBlocks, (put_slot + T + bs - 1) / bs, rng);
        std::vector<uint16_t> image = RandomImage(sc.elements, rng);
        CopyStrided(sc, ids, put_slot, T, image, in, true);
        const DeviceCache src(sc, ids, put_slot, image);
        DeviceBuffer d_out(lay.total_bytes), d_flag(8);
        std::vector<uint8_t> gpu(lay.total_bytes);
        const absl::Status st = EncodeToHost(lay, src.Input(), d_out.as<uint8_t>(),
                                             d_flag.as<unsigned long long>(), stream_, gpu.data());
        ASSERT_TRUE(st.ok()) << st;
        ASSERT_TRUE(gpu == cpu) << "paged encode: " << FirstDifference(lay, cpu, gpu);
        EXPECT_TRUE(src.Download() == image) << "the encoder wrote into its input";

        // Decode the whole chunk and a slice into fresh caches of the slice's geometry.
        DeviceBuffer d_sections(lay.total_bytes);
        ASSERT_CUDA(cudaMemcpy(d_sections.as<void>(), cpu.data(), cpu.size(),
                               cudaMemcpyHostToDevice));
        std::vector<const uint8_t*> ptrs;
        for (uint32_t p = 0; p < lay.num_pairs(); ++p)
          ptrs.push_back(d_sections.as<uint8_t>() + lay.pairs[p].offset);
        DeviceBuffer d_ptrs(ptrs.size() * sizeof(void*));
        ASSERT_CUDA(cudaMemcpy(d_ptrs.as<void>(), ptrs.data(), d_ptrs.bytes(),
                               cudaMemcpyHostToDevice));
        for (const Slice& sl : {Slice{0, L, 0, H}, Slice{1, 3, 1, 3}}) {
          const DType out_dtype = rng() % 2 ? DType::kF16 : DType::kBF16;
          SCOPED_TRACE(::testing::Message() << "slice layers [" << sl.layer_begin << ", "
                                            << sl.layer_end << ") heads [" << sl.head_begin
                                            << ", " << sl.head_end << ") out "
                                            << DTypeName(out_dtype));
          std::vector<uint16_t> want;
          ASSERT_TRUE(Decode(cpu.data(), cpu.size(), sl, out_dtype, &want, Impl::kReference).ok());
          const uint32_t ls = sl.layer_end - sl.layer_begin, hs = sl.head_end - sl.head_begin;
          const StridedCache dc = MakeStrided(order, ls, hs, D, bs, kBlocks);
          const uint32_t slot = rng() % bs;
          const std::vector<uint32_t> out_ids = RandomIds(kBlocks, (slot + T + bs - 1) / bs, rng);
          std::vector<uint16_t> before = RandomImage(dc.elements, rng);
          DeviceCache dst(dc, out_ids, slot, before);
          DecodeParams dp;
          dp.geo = GeometryOf(lay);
          dp.sections = d_ptrs.as<const uint8_t* const>();
          dp.layer_begin = sl.layer_begin, dp.layer_end = sl.layer_end;
          dp.head_begin = sl.head_begin, dp.head_end = sl.head_end;
          dp.out_dtype = static_cast<uint32_t>(out_dtype);
          dp.paged = dst.view;
          ASSERT_CUDA(LaunchDecode(dp, stream_));
          ASSERT_CUDA(cudaStreamSynchronize(stream_));
          CopyStrided(dc, out_ids, slot, T, before, want, true);
          const std::vector<uint16_t> got = dst.Download();
          if (got != before) {
            size_t i = 0;
            while (got[i] == before[i]) ++i;
            FAIL() << "paged decode differs at element " << i << " of the cache: want 0x"
                   << std::hex << before[i] << " got 0x" << got[i];
          }
        }
      }
    }
  }
}

TEST_F(CudaCodecTest, PagedStridedEncodeNamesTheFirstBadElementAsTheCpuDoes) {
  REQUIRE_DEVICE();
  std::mt19937_64 rng(10);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    for (Order order : {Order::kHnd, Order::kInterleavedKv, Order::kPageFirst}) {
      const ChunkShape shape{3, 70, 2, 64, dt};
      const ChunkLayout lay = ComputeLayout(shape, PresetConfig(Preset::kXQuant, 3));
      std::vector<uint16_t> in = MakeInput(shape, rng, false);
      in[rng() % in.size()] = dt == DType::kF16 ? 0x7C00 : 0x7F80;  // +Inf
      in[rng() % in.size()] = dt == DType::kF16 ? 0xFE01 : 0xFFC1;  // NaN
      const StridedCache sc = MakeStrided(order, 3, 2, 64, 16, 8);
      const std::vector<uint32_t> ids = RandomIds(8, 6, rng);
      std::vector<uint16_t> image = RandomImage(sc.elements, rng);
      CopyStrided(sc, ids, 11, 70, image, in, true);
      const DeviceCache src(sc, ids, 11, image);
      DeviceBuffer d_out(lay.total_bytes), d_flag(8);
      std::vector<uint8_t> host(lay.total_bytes);
      const absl::Status st = EncodeToHost(lay, src.Input(), d_out.as<uint8_t>(),
                                           d_flag.as<unsigned long long>(), stream_, host.data());
      EXPECT_EQ(st, ValidateInput(shape, in.data())) << "order " << static_cast<int>(order);
    }
  }
}

}  // namespace
}  // namespace kvstash::kernels::cuda
