// Throughput of the CPU codec in GB/s of 16-bit data (the uncompressed side: encode input,
// decode output), next to memcpy of the same bytes in the same process.
//
//   codec_bench [--benchmark_filter=...]
//
// Counters: bytes_per_second (16-bit bytes / wall second) and vs_memcpy, the ratio of that
// rate to memcpy's rate for a buffer of the same size, measured once per size (median of
// five rounds) the first time a benchmark of that size runs. Google Benchmark prints it
// with a "/s" suffix because it is implemented as a rate counter; it is a plain ratio. Decode
// includes ParseHeader and every section checksum, into a preallocated buffer.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"

namespace kvstash::kernels {
namespace {

struct Geometry {
  const char* name;
  ChunkShape shape;
};
const Geometry kGeometries[] = {
    {"7b", {.num_layers = 32, .num_tokens = 256, .num_heads = 8, .head_dim = 128}},   // 32 MiB
    {"small", {.num_layers = 4, .num_tokens = 64, .num_heads = 8, .head_dim = 128}},  // 1 MiB
};

// KV-cache-like fp16 data: per-channel offsets and spreads, Gaussian noise.
std::vector<uint16_t> MakeInput(const ChunkShape& s) {
  std::mt19937_64 rng(42);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> off(s.head_dim), spread(s.head_dim);
  for (uint32_t d = 0; d < s.head_dim; ++d)
    off[d] = 2 * n(rng), spread[d] = 0.2f + std::abs(n(rng));
  std::vector<uint16_t> in(s.elements());
  for (uint64_t e = 0; e < in.size(); ++e) {
    const uint32_t d = e % s.head_dim;
    in[e] = FloatToHalfSat(off[d] + spread[d] * n(rng), static_cast<int>(s.dtype));
  }
  return in;
}

// memcpy bandwidth (bytes/s) for `bytes`: the median of five timed rounds, warm buffers.
double MemcpyRate(uint64_t bytes) {
  static std::map<uint64_t, double> cache;
  if (auto it = cache.find(bytes); it != cache.end()) return it->second;
  std::vector<uint8_t> a(bytes, 1), b(bytes, 2);
  std::vector<double> rates;
  for (int round = 0; round < 5; ++round) {
    const int reps = static_cast<int>(std::max<uint64_t>(1, (256ull << 20) / bytes));
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) {
      std::memcpy(b.data(), a.data(), bytes);
      benchmark::ClobberMemory();
    }
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rates.push_back(static_cast<double>(bytes) * reps / sec);
  }
  std::sort(rates.begin(), rates.end());
  return cache[bytes] = rates[rates.size() / 2];
}

void SetCounters(benchmark::State& state, uint64_t bytes) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  // A rate counter divides by the elapsed time: (memcpy seconds for the same bytes) / (our
  // seconds) is our rate over memcpy's.
  state.counters["vs_memcpy"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * bytes / MemcpyRate(bytes),
                         benchmark::Counter::kIsRate);
}

void BM_Memcpy(benchmark::State& state, ChunkShape shape) {
  const uint64_t bytes = shape.payload_bytes();
  std::vector<uint8_t> a(bytes, 1), b(bytes, 2);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::ClobberMemory();
  }
  SetCounters(state, bytes);
}

void BM_Encode(benchmark::State& state, ChunkShape shape, Preset preset, Impl impl) {
  const ChunkLayout lay = ComputeLayout(shape, PresetConfig(preset, shape.num_layers));
  const std::vector<uint16_t> in = MakeInput(shape);
  std::vector<uint8_t> out(lay.total_bytes, 0);
  for (auto _ : state) {
    const absl::Status st = Encode(lay, in.data(), out.data(), impl);
    if (!st.ok()) state.SkipWithError(std::string(st.message()).c_str());
    benchmark::ClobberMemory();
  }
  SetCounters(state, shape.payload_bytes());
  state.counters["true_bits"] = TrueBits(lay);
}

void BM_Decode(benchmark::State& state, ChunkShape shape, Preset preset, Impl impl) {
  const std::vector<uint16_t> in = MakeInput(shape);
  absl::StatusOr<std::vector<uint8_t>> chunk =
      EncodeChunk(shape, PresetConfig(preset, shape.num_layers), in);
  if (!chunk.ok()) {
    state.SkipWithError("encode failed");
    return;
  }
  std::vector<uint16_t> out(shape.elements(), 0);
  for (auto _ : state) {
    absl::StatusOr<ParsedHeader> hdr = ParseHeader(chunk->data(), chunk->size(), true);
    std::vector<const uint8_t*> sections(hdr->layout.num_pairs());
    for (uint32_t p = 0; p < sections.size(); ++p)
      sections[p] = chunk->data() + hdr->layout.pairs[p].offset;
    const absl::Status st =
        DecodeSections(*hdr, sections.data(), Slice{0, shape.num_layers, 0, shape.num_heads},
                       shape.dtype, out.data(), impl);
    if (!st.ok()) state.SkipWithError(std::string(st.message()).c_str());
    benchmark::ClobberMemory();
  }
  SetCounters(state, shape.payload_bytes());
}

void RegisterAll() {
  const std::pair<const char*, Preset> presets[] = {
      {"xquant", Preset::kXQuant}, {"kivi-2", Preset::kKivi2}, {"fp16", Preset::kFp16}};
  for (const Geometry& g : kGeometries) {
    const std::string gname = g.name;
    benchmark::RegisterBenchmark(("memcpy/" + gname).c_str(), BM_Memcpy, g.shape)->UseRealTime();
    for (Impl impl : {Impl::kFast, Impl::kReference}) {
      const std::string iname = impl == Impl::kFast ? "fast" : "reference";
      for (const auto& [pname, preset] : presets) {
        const std::string suffix = std::string(pname) + "/" + gname + "/" + iname;
        auto* e = benchmark::RegisterBenchmark(("encode/" + suffix).c_str(), BM_Encode, g.shape,
                                               preset, impl);
        auto* d = benchmark::RegisterBenchmark(("decode/" + suffix).c_str(), BM_Decode, g.shape,
                                               preset, impl);
        e->UseRealTime()->Unit(benchmark::kMillisecond);
        d->UseRealTime()->Unit(benchmark::kMillisecond);
        if (impl == Impl::kReference) {  // slow; a few iterations are enough
          e->MinTime(0.2);
          d->MinTime(0.2);
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvstash::kernels

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  kvstash::kernels::RegisterAll();
  benchmark::AddCustomContext("fast_path", kvstash::kernels::FastPathName());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
