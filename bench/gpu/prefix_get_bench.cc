// The C++ client's side of bench/python/client_bench.py: the same operations on the same
// geometry, so the Python client can be reported as a ratio of the C++ client's time.
//
//   prefix_get_bench --addr HOST:PORT [--chunks 16] [--reps 30] [--codec xquant]
//
// Puts `chunks` chunks (Llama-3-8B geometry: L32 H8 D128 T256, fp16) from a cudaMalloc'd
// buffer registered over CUDA IPC, then times (a) a Get of one chunk into the buffer and
// (b) a prefix restore: Lookup of the chain + one multi-key Get of every chunk into the
// buffer. Prints one JSON object with the median and p90 of each, in milliseconds.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvstash/client/chunk_key.h"
#include "kvstash/client/client.h"

namespace {

using kvstash::client::ChunkKey;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "prefix_get_bench: %s\n", what.c_str());
  std::exit(1);
}

void CheckCuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) Die(std::string(what) + ": " + cudaGetErrorString(e));
}

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * (v.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) {
  std::string addr = "127.0.0.1:7450", codec = "xquant", ns = "prefix-bench-cpp";
  int chunks = 16, reps = 30;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--addr") addr = v;
    else if (a == "--chunks") chunks = std::atoi(v.c_str());
    else if (a == "--reps") reps = std::atoi(v.c_str());
    else if (a == "--codec") codec = v;
    else if (a == "--namespace") ns = v;
    else Die("unknown flag " + a);
  }
  kvstash::client::ClientOptions o;
  o.target = addr;
  auto client_or = kvstash::client::Client::Connect(o);
  if (!client_or.ok()) Die(client_or.status().ToString());
  auto& client = **client_or;
  auto preset = kvstash::kernels::ParsePreset(codec);
  if (!preset.ok()) Die(preset.status().ToString());

  const kvstash::kernels::ChunkShape shape{32, 256, 8, 128, kvstash::kernels::DType::kF16};
  const uint64_t bytes = shape.payload_bytes();
  void* buf = nullptr;
  CheckCuda(cudaMalloc(&buf, bytes * chunks), "cudaMalloc");
  {
    std::vector<uint16_t> host(bytes / 2);
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& x : host) {  // fp16 of a normal sample, built from float bits
      const float f = nd(rng);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      const uint32_t sign = (u >> 16) & 0x8000, exp = (u >> 23) & 0xff, man = (u >> 13) & 0x3ff;
      x = exp < 113 ? sign : static_cast<uint16_t>(sign | ((exp - 112) << 10) | man);
    }
    for (int c = 0; c < chunks; ++c)
      CheckCuda(cudaMemcpy(static_cast<char*>(buf) + c * bytes, host.data(), bytes,
                           cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  cudaIpcMemHandle_t h;
  CheckCuda(cudaIpcGetMemHandle(&h, buf), "cudaIpcGetMemHandle");
  cudaDeviceProp prop{};
  CheckCuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  auto region = client.RegisterCudaIpc(
      ns, std::string(reinterpret_cast<const char*>(&h), sizeof(h)),
      std::string(prop.uuid.bytes, sizeof(prop.uuid.bytes)));
  if (!region.ok()) Die(region.status().ToString());

  std::vector<int32_t> tokens(256 * chunks);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i * 7 + 1);
  const std::vector<ChunkKey> keys = kvstash::client::ChainKeys(tokens, 256, ns);
  for (int c = 0; c < chunks; ++c) {
    kvstash::client::PutChunk p;
    p.key = keys[c];
    p.shape = shape;
    p.codec = kvstash::client::Codec::FromPreset(*preset);
    p.region = &*region;
    p.region_offset = c * bytes;
    if (auto r = client.Put(ns, p); !r.ok()) Die(r.status().ToString());
  }
  kvstash::client::GetOptions g;
  g.output_region = &*region;
  std::vector<double> one, prefix;
  for (int r = 0; r < reps + 3; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    if (auto x = client.Get(ns, keys[r % chunks], g); !x.ok()) Die(x.status().ToString());
    auto t1 = std::chrono::steady_clock::now();
    auto n = client.Lookup(ns, keys);
    if (!n.ok() || *n != static_cast<uint32_t>(chunks)) Die("lookup");
    kvstash::client::GetOptions gp = g;
    gp.allow_missing = true;
    if (auto x = client.Get(ns, std::span<const ChunkKey>(keys.data(), *n), gp); !x.ok())
      Die(x.status().ToString());
    auto t2 = std::chrono::steady_clock::now();
    if (r >= 3) {
      one.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      prefix.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    }
  }
  std::printf("{\"client\":\"cpp\",\"chunks\":%d,\"chunk_bytes\":%llu,\"codec\":\"%s\","
              "\"get1_p50_ms\":%.4f,\"get1_p90_ms\":%.4f,\"prefix_p50_ms\":%.4f,"
              "\"prefix_p90_ms\":%.4f}\n",
              chunks, static_cast<unsigned long long>(bytes), codec.c_str(), Quantile(one, 0.5),
              Quantile(one, 0.9), Quantile(prefix, 0.5), Quantile(prefix, 0.9));
  (void)client.UnregisterRegion(*region);
  (void)client.Delete(ns, keys);
  cudaFree(buf);
  return 0;
}
