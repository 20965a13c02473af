// GPU codec throughput: encode and decode of whole batches of chunks (>= 1 GiB of 16-bit
// input, so the 50 MB L2 does not matter), timed with CUDA events after warm-up, median of
// many repetitions. Each kernel is reported in bytes read + written per second and as a
// fraction of a cudaMemcpyDeviceToDevice moving the same read + written byte count, measured
// in the same run, next to the naive one-thread-per-group kernels.
//
//   kernel_bench [--reps N] [--min-gib G] [--json]
//
// --json adds one JSON object per line (prefixed "JSON ") after the human-readable table.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kvstash/kernels/cuda_chunk.h"
#include "kvstash/kernels/cuda_codec.h"
#include "kvstash/kernels/format.h"

namespace kvstash::bench {
cudaError_t FillRandom(uint16_t* out, uint64_t n, uint32_t channels, int dtype, uint64_t seed,
                       cudaStream_t stream);
}

namespace {

using namespace kvstash::kernels;
using namespace kvstash::kernels::cuda;

#define CHECK_CUDA(expr)                                                               \
  do {                                                                                 \
    const cudaError_t e_ = (expr);                                                     \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorName(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

struct Options {
  int reps = 30;
  double min_gib = 1.0;
  bool json = false;
};

// Median milliseconds of `reps` runs of fn, after 3 warm-up runs.
double TimeMs(const std::function<void()>& fn, int reps, cudaStream_t stream) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    fn();
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    CHECK_CUDA(cudaEventElapsedTime(&ms[i], a, b));
  }
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

struct Row {
  std::string model, preset, dtype, op;
  uint32_t T = 0, chunks = 0;
  double bytes = 0, ms = 0, copy_ms = 0;
  double gbps() const { return bytes / ms / 1e6; }
  double copy_gbps() const { return bytes / copy_ms / 1e6; }
};

struct Model {
  const char* name;
  uint32_t L, H, D;
};

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json")) opt.json = true;
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) opt.reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--min-gib") && i + 1 < argc) opt.min_gib = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--reps N] [--min-gib G] [--json]\n", argv[0]);
      return 2;
    }
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("kernel_bench: no CUDA device, nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB, %.0f GB memory\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, prop.totalGlobalMem / 1e9);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));

  const Model models[] = {{"llama3-8b", 32, 8, 128}, {"qwen2.5-7b", 28, 4, 128}};
  const uint32_t tokens[] = {256, 4096};
  struct Run { Preset preset; DType dtype; };
  const Run runs[] = {{Preset::kXQuant, DType::kF16}, {Preset::kKivi2, DType::kF16},
                      {Preset::kFp16, DType::kF16}, {Preset::kXQuant, DType::kBF16}};
  std::vector<Row> rows;

  for (const Model& m : models) {
    for (uint32_t T : tokens) {
      for (const Run& run : runs) {
        const ChunkShape shape{m.L, T, m.H, m.D, run.dtype};
        const ChunkLayout lay = ComputeLayout(shape, PresetConfig(run.preset, m.L));
        const CudaGeometry geo = GeometryOf(lay);
        const uint64_t in_bytes = shape.payload_bytes();
        const uint32_t C = static_cast<uint32_t>(
            std::max<double>(1.0, std::ceil(opt.min_gib * (1ull << 30) / in_bytes)));
        const uint64_t sec_bytes = lay.total_bytes - lay.header_bytes;

        uint16_t *d_in, *d_dec;
        uint8_t *d_out, *d_copy;
        unsigned long long* d_flag;
        const uint8_t** d_ptrs;
        CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_in), C * in_bytes));
        CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_dec), C * in_bytes));
        CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_out), C * lay.total_bytes));
        CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_flag), 8));
        CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_ptrs), C * lay.num_pairs() * sizeof(void*)));
        // The copy baseline moves (read + written) / 2 bytes; the largest is the decode's.
        const uint64_t copy_max = (C * in_bytes + C * sec_bytes) / 2 + 16;
        CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_copy), 2 * copy_max));
        CHECK_CUDA(kvstash::bench::FillRandom(d_in, C * shape.elements(), m.H * m.D,
                                              static_cast<int>(run.dtype), 12345, stream));
        CHECK_CUDA(cudaMemsetAsync(d_copy, 0x3C, 2 * copy_max, stream));
        std::vector<const uint8_t*> ptrs;
        for (uint32_t c = 0; c < C; ++c)
          for (uint32_t p = 0; p < lay.num_pairs(); ++p)
            ptrs.push_back(d_out + c * lay.total_bytes + lay.pairs[p].offset);
        CHECK_CUDA(cudaMemcpy(const_cast<const uint8_t**>(d_ptrs), ptrs.data(), ptrs.size() * sizeof(void*),
                              cudaMemcpyHostToDevice));

        EncodeParams ep;
        ep.geo = geo;
        ep.in = d_in;
        ep.out = d_out;
        ep.num_chunks = C;
        ValidateParams vp{d_in, C * shape.elements(), geo.dtype, d_flag};
        DecodeParams dp;
        dp.geo = geo;
        dp.sections = d_ptrs;
        dp.num_chunks = C;
        dp.layer_begin = 0, dp.layer_end = m.L, dp.head_begin = 0, dp.head_end = m.H;
        dp.out_dtype = geo.dtype;
        dp.out = d_dec;

        const double enc_bytes = static_cast<double>(C) * (in_bytes + sec_bytes);
        const double dec_bytes = enc_bytes;
        auto copy_ms = [&](double bytes) {
          const uint64_t n = static_cast<uint64_t>(bytes / 2) & ~uint64_t{15};
          return TimeMs([&] { CHECK_CUDA(cudaMemcpyAsync(d_copy + copy_max, d_copy, n,
                                                         cudaMemcpyDeviceToDevice, stream)); },
                        opt.reps, stream);
        };
        const double copy = copy_ms(enc_bytes);
        auto add = [&](const char* op, const std::function<void()>& fn, double bytes) {
          Row r;
          r.model = m.name, r.preset = std::string(PresetName(run.preset));
          r.dtype = std::string(DTypeName(run.dtype)), r.op = op;
          r.T = T, r.chunks = C, r.bytes = bytes, r.copy_ms = copy;
          r.ms = TimeMs(fn, opt.reps, stream);
          rows.push_back(r);
          std::printf("%-11s T=%-5u %-10s %-5s %-24s %8.3f ms %7.0f GB/s  %5.1f%% of copy (%4.0f GB/s)\n",
                      r.model.c_str(), T, r.preset.c_str(), r.dtype.c_str(), op, r.ms, r.gbps(),
                      100.0 * r.gbps() / r.copy_gbps(), r.copy_gbps());
          std::fflush(stdout);
        };
        const bool full = run.dtype == DType::kF16;  // bf16: the main paths only
        add("encode(validate+gated)", [&] {
          CHECK_CUDA(LaunchValidate(vp, stream));
          ep.gate = d_flag, ep.first_bad = nullptr;
          CHECK_CUDA(LaunchEncode(ep, stream));
        }, enc_bytes);
        add("encode(fused-check)", [&] {
          CHECK_CUDA(cudaMemsetAsync(d_flag, 0xFF, 8, stream));
          ep.gate = nullptr, ep.first_bad = d_flag;
          CHECK_CUDA(LaunchEncode(ep, stream));
        }, enc_bytes);
        if (full) {
          add("encode(no-check)", [&] {
            ep.gate = nullptr, ep.first_bad = nullptr;
            CHECK_CUDA(LaunchEncode(ep, stream));
          }, enc_bytes);
          add("validate-only", [&] { CHECK_CUDA(LaunchValidate(vp, stream)); },
              static_cast<double>(C) * in_bytes);
          rows.back().copy_ms = copy_ms(rows.back().bytes);
          add("encode-naive", [&] {
            ep.gate = nullptr, ep.first_bad = nullptr;
            CHECK_CUDA(LaunchEncodeNaive(ep, stream));
          }, enc_bytes);
        }
        // Sections written by the last encode are valid input for decode.
        ep.gate = nullptr, ep.first_bad = nullptr;
        CHECK_CUDA(LaunchEncode(ep, stream));
        add("decode", [&] { CHECK_CUDA(LaunchDecode(dp, stream)); }, dec_bytes);
        if (full) add("decode-naive", [&] { CHECK_CUDA(LaunchDecodeNaive(dp, stream)); }, dec_bytes);
        CHECK_CUDA(cudaStreamSynchronize(stream));
        CHECK_CUDA(cudaGetLastError());
        CHECK_CUDA(cudaFree(d_in));
        CHECK_CUDA(cudaFree(d_dec));
        CHECK_CUDA(cudaFree(d_out));
        CHECK_CUDA(cudaFree(d_flag));
        CHECK_CUDA(cudaFree(const_cast<uint8_t**>(d_ptrs)));
        CHECK_CUDA(cudaFree(d_copy));
      }
    }
  }

  std::printf("\n| model | T | preset | dtype | op | chunks | GB/s (read+written) | %% of D2D copy | copy GB/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %u | %s | %s | %s | %u | %.0f | %.1f%% | %.0f |\n", r.model.c_str(), r.T,
                r.preset.c_str(), r.dtype.c_str(), r.op.c_str(), r.chunks, r.gbps(),
                100.0 * r.gbps() / r.copy_gbps(), r.copy_gbps());
  }
  if (opt.json) {
    for (const Row& r : rows) {
      std::printf("JSON {\"model\":\"%s\",\"T\":%u,\"preset\":\"%s\",\"dtype\":\"%s\",\"op\":\"%s\","
                  "\"chunks\":%u,\"bytes\":%.0f,\"ms\":%.4f,\"gbps\":%.1f,\"copy_gbps\":%.1f,"
                  "\"fraction_of_copy\":%.4f}\n",
                  r.model.c_str(), r.T, r.preset.c_str(), r.dtype.c_str(), r.op.c_str(), r.chunks,
                  r.bytes, r.ms, r.gbps(), r.copy_gbps(), r.gbps() / r.copy_gbps());
    }
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}
