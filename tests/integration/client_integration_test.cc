// Drives the real kvstashd binary through the C++ client library.
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli_util.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "kvstash/client/chunk_key.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"

namespace kvstash::client {
namespace {

using kernels::ChunkShape;
using kernels::CodecConfig;
using kernels::DType;
using kernels::Preset;

uint64_t FreshSeed() {
  static std::random_device rd;
  return (uint64_t{rd()} << 32) | rd();
}

std::span<const uint8_t> Bytes(const std::vector<uint16_t>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * 2};
}

// What a Get must return: the CPU codec's own encode → decode of the same input (the
// codec's bound is exact: the daemon must reproduce these bytes).
std::string Oracle(const ChunkShape& shape, const CodecConfig& config,
                   const std::vector<uint16_t>& in, const kernels::Slice& slice = {},
                   DType out_dtype = DType::kUnspecified) {
  auto enc = kernels::EncodeChunk(shape, config, in);
  EXPECT_TRUE(enc.ok()) << enc.status();
  if (!enc.ok()) return {};
  std::vector<uint16_t> out;
  const absl::Status st =
      kernels::Decode(enc->data(), enc->size(), slice,
                      out_dtype == DType::kUnspecified ? shape.dtype : out_dtype, &out);
  EXPECT_TRUE(st.ok()) << st;
  return std::string(reinterpret_cast<const char*>(out.data()), out.size() * 2);
}

uint64_t EncodedBytes(const ChunkShape& shape, const CodecConfig& config) {
  auto layout = kernels::MakeLayout(shape, config);
  return layout.ok() ? layout->total_bytes : 0;
}

ChunkKey RandomKey(std::mt19937_64& rng) { return ChunkKey{rng(), rng()}; }

class ClientIntegrationTest : public ::testing::Test {
 protected:
  void StartDaemon(const std::string& capacity = "128MiB") {
    const absl::Status st = daemon_.Start(KVSTASHD_PATH, {"--host-capacity", capacity,
                                                         "--log-level", "warn"});
    ASSERT_TRUE(st.ok()) << st;
    ClientOptions o;
    o.target = daemon_.address();
    o.default_timeout = std::chrono::seconds(30);
    o.connect_timeout = std::chrono::seconds(10);
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }

  void TearDown() override {
    client_.reset();
    if (daemon_.running()) {
      EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log();
    }
  }

  // Puts a fresh random fp16 chunk under `key` and checks it reads back exactly.
  void ExpectGoodRequestWorks() {
    const ChunkShape shape{2, 32, 2, 32, DType::kF16};
    const std::vector<uint16_t> in = cli::GeneratePayload(shape, FreshSeed());
    const ChunkKey key = RandomKey(rng_);
    auto put = client_->Put(ns_, PutChunk{key, shape, Codec::FromPreset(Preset::kFp16), Bytes(in)});
    ASSERT_TRUE(put.ok()) << put.status();
    auto got = client_->Get(ns_, key);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->data, std::string(reinterpret_cast<const char*>(in.data()), in.size() * 2));
  }

  testing::DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
  std::mt19937_64 rng_{FreshSeed()};
  const std::string ns_ = "it";
};

TEST_F(ClientIntegrationTest, RoundTripsEveryPresetExactlyAsTheCodecDecodes) {
  StartDaemon();
  // T = 80: two quantized token groups and a 16-token tail.
  const ChunkShape shape{4, 80, 2, 64, DType::kF16};
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const std::vector<uint16_t> in = cli::GeneratePayload(shape, seed);
  const std::string raw(reinterpret_cast<const char*>(in.data()), in.size() * 2);

  CodecConfig custom;
  custom.k_q = 2, custom.v_q = 1, custom.k_m = 2, custom.v_m = 2;
  custom.eta1 = 0.1f, custom.eta2 = 0.02f;
  const std::vector<std::pair<Codec, CodecConfig>> codecs = {
      {Codec::FromPreset(Preset::kFp16), kernels::PresetConfig(Preset::kFp16, 4)},
      {Codec::FromPreset(Preset::kKivi2), kernels::PresetConfig(Preset::kKivi2, 4)},
      {Codec::FromPreset(Preset::kAsymKv15), kernels::PresetConfig(Preset::kAsymKv15, 4)},
      {Codec::FromPreset(Preset::kXQuant), kernels::PresetConfig(Preset::kXQuant, 4)},
      {Codec::Custom(custom), custom},
  };
  for (const auto& [codec, config] : codecs) {
    SCOPED_TRACE(::testing::Message() << "preset " << static_cast<int>(codec.preset));
    const ChunkKey key = RandomKey(rng_);
    auto put = client_->Put(ns_, PutChunk{key, shape, codec, Bytes(in)});
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->key, key);
    EXPECT_FALSE(put->replaced);
    EXPECT_EQ(put->info.shape, shape);
    EXPECT_EQ(put->info.preset, codec.preset);
    EXPECT_EQ(put->info.logical_bytes, shape.payload_bytes());
    EXPECT_EQ(put->info.stored_bytes, EncodedBytes(shape, config));
    EXPECT_DOUBLE_EQ(put->info.equivalent_bits, kernels::EquivalentBits(shape, config));

    auto got = client_->Get(ns_, key);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(got->found);
    EXPECT_EQ(got->dtype, DType::kF16);
    EXPECT_EQ(got->data, Oracle(shape, config, in));
    if (codec.preset == Preset::kFp16) {
      EXPECT_EQ(got->data, raw);
    }

    // A slice in the other dtype.
    GetOptions opt;
    opt.slice = kernels::Slice{1, 3, 1, 2};
    opt.output_dtype = DType::kBF16;
    got = client_->Get(ns_, key, opt);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->dtype, DType::kBF16);
    EXPECT_EQ(got->data.size(), 2u * 2 * 80 * 1 * 64 * 2);
    EXPECT_EQ(got->data, Oracle(shape, config, in, opt.slice, DType::kBF16));

    // Re-putting the same key replaces it.
    put = client_->Put(ns_, PutChunk{key, shape, codec, Bytes(in)});
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_TRUE(put->replaced);
  }
}

TEST_F(ClientIntegrationTest, RoundTripsBf16ChunksInOneMultiChunkPut) {
  StartDaemon();
  ChunkShape shape{3, 64, 2, 32, DType::kBF16};
  const std::vector<uint16_t> a = cli::GeneratePayload(shape, FreshSeed());
  const std::vector<uint16_t> b = cli::GeneratePayload(shape, FreshSeed());
  const ChunkKey ka = RandomKey(rng_), kb = RandomKey(rng_);
  const std::vector<PutChunk> chunks = {
      {ka, shape, Codec::FromPreset(Preset::kXQuant), Bytes(a)},
      {kb, shape, Codec::FromPreset(Preset::kKivi2), Bytes(b)}};
  auto put = client_->Put(ns_, chunks);
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_EQ(put->size(), 2u);
  EXPECT_EQ((*put)[0].key, ka);
  EXPECT_EQ((*put)[1].key, kb);
  EXPECT_EQ((*put)[0].info.shape.dtype, DType::kBF16);

  const std::vector<ChunkKey> keys = {kb, ka};
  auto got = client_->Get(ns_, keys);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 2u);
  EXPECT_EQ((*got)[0].key, kb);
  EXPECT_EQ((*got)[0].dtype, DType::kBF16);
  EXPECT_EQ((*got)[0].data, Oracle(shape, kernels::PresetConfig(Preset::kKivi2, 3), b));
  EXPECT_EQ((*got)[1].data, Oracle(shape, kernels::PresetConfig(Preset::kXQuant, 3), a));
}

TEST_F(ClientIntegrationTest, LookupReportsPresentPrefixOfPartlyStoredChain) {
  StartDaemon();
  std::vector<int32_t> tokens(4 * 32);
  std::uniform_int_distribution<int32_t> tok(0, 150000);
  for (int32_t& t : tokens) t = tok(rng_);
  const std::vector<ChunkKey> chain = ChainKeys(tokens, 32, ns_);
  ASSERT_EQ(chain.size(), 4u);
  const ChunkShape shape{2, 32, 2, 32, DType::kF16};
  const std::vector<uint16_t> in = cli::GeneratePayload(shape, FreshSeed());

  auto lookup = client_->Lookup(ns_, chain);
  ASSERT_TRUE(lookup.ok()) << lookup.status();
  EXPECT_EQ(*lookup, 0u);
  // Store chunks 0, 1 and 3: the prefix stops at the gap.
  for (int i : {0, 1, 3}) {
    ASSERT_TRUE(
        client_->Put(ns_, PutChunk{chain[i], shape, Codec::FromPreset(Preset::kXQuant), Bytes(in)})
            .ok());
  }
  lookup = client_->Lookup(ns_, chain);
  ASSERT_TRUE(lookup.ok()) << lookup.status();
  EXPECT_EQ(*lookup, 2u);
  // Same keys, other namespace: nothing.
  lookup = client_->Lookup("elsewhere", chain);
  ASSERT_TRUE(lookup.ok()) << lookup.status();
  EXPECT_EQ(*lookup, 0u);
  // Keys derived in another namespace differ, so a namespace cannot read another's chain.
  EXPECT_NE(ChainKeys(tokens, 32, "elsewhere")[0], chain[0]);

  // Get with allow_missing reports the gap; without it the call fails.
  GetOptions opt;
  opt.allow_missing = true;
  auto got = client_->Get(ns_, chain, opt);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 4u);
  EXPECT_TRUE((*got)[1].found);
  EXPECT_FALSE((*got)[2].found);
  EXPECT_TRUE((*got)[2].data.empty());
  EXPECT_TRUE((*got)[3].found);
  opt.allow_missing = false;
  EXPECT_EQ(client_->Get(ns_, chain, opt).status().code(), absl::StatusCode::kNotFound);

  // Delete counts both outcomes.
  const std::vector<ChunkKey> del = {chain[0], chain[2]};
  auto d = client_->Delete(ns_, del);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->deleted, 1u);
  EXPECT_EQ(d->not_found, 1u);
  lookup = client_->Lookup(ns_, chain);
  ASSERT_TRUE(lookup.ok());
  EXPECT_EQ(*lookup, 0u);
}

TEST_F(ClientIntegrationTest, EvictsOldChunksUnderMemoryPressure) {
  StartDaemon("8MiB");
  // fp16 chunks of 1 MiB: 24 of them cannot fit in 8 MiB.
  const ChunkShape shape{2, 128, 8, 128, DType::kF16};
  ASSERT_EQ(shape.payload_bytes(), 1u << 20);
  const std::vector<uint16_t> in = cli::GeneratePayload(shape, FreshSeed());
  std::vector<ChunkKey> keys;
  for (int i = 0; i < 24; ++i) {
    keys.push_back(RandomKey(rng_));
    auto put =
        client_->Put(ns_, PutChunk{keys.back(), shape, Codec::FromPreset(Preset::kFp16), Bytes(in)});
    ASSERT_TRUE(put.ok()) << "chunk " << i << ": " << put.status();
  }
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->evictions, 0u);
  EXPECT_LE(stats->used_bytes, stats->capacity_bytes);
  EXPECT_LT(stats->chunks, 24u);
  EXPECT_EQ(stats->capacity_bytes, 8u << 20);
  // The earliest chunks are gone, the latest one is there.
  EXPECT_EQ(client_->Get(ns_, keys[0]).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Get(ns_, keys[1]).status().code(), absl::StatusCode::kNotFound);
  auto last = client_->Get(ns_, keys.back());
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->data, std::string(reinterpret_cast<const char*>(in.data()), in.size() * 2));

  // A chunk larger than the whole pool cannot be made to fit.
  const ChunkShape huge{2, 2048, 8, 128, DType::kF16};  // 16 MiB
  const std::vector<uint16_t> big(huge.elements(), 0x3c00);
  EXPECT_EQ(client_->Put(ns_, PutChunk{RandomKey(rng_), huge, Codec::FromPreset(Preset::kFp16),
                                       Bytes(big)})
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  ExpectGoodRequestWorks();
}

TEST_F(ClientIntegrationTest, ConcurrentPutsAndGetsFromFourThreadsReadBackExactly) {
  StartDaemon();
  const ChunkShape shape{4, 64, 2, 64, DType::kF16};
  const CodecConfig config = kernels::PresetConfig(Preset::kXQuant, shape.num_layers);
  constexpr int kThreads = 4, kPerThread = 12;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  const uint64_t base_seed = FreshSeed();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<ChunkKey> keys;
      std::vector<std::string> expected;
      for (int i = 0; i < kPerThread; ++i) {
        const std::vector<uint16_t> in = cli::GeneratePayload(shape, base_seed + t * 1000 + i);
        keys.push_back(ChunkKey{base_seed + t, static_cast<uint64_t>(i)});
        expected.push_back(Oracle(shape, config, in));
        auto put = client_->Put(ns_, PutChunk{keys.back(), shape, Codec::FromPreset(Preset::kXQuant),
                                              Bytes(in)});
        if (!put.ok()) {
          ADD_FAILURE() << put.status();
          ++failures;
          continue;
        }
        // Read back a random earlier chunk of this thread while the others write.
        const int j = static_cast<int>((base_seed + i * 7 + t) % (i + 1));
        auto got = client_->Get(ns_, keys[j]);
        if (!got.ok() || got->data != expected[j]) {
          ADD_FAILURE() << "thread " << t << " chunk " << j << ": " << got.status();
          ++failures;
        }
      }
      auto got = client_->Get(ns_, keys);
      if (!got.ok()) {
        ADD_FAILURE() << got.status();
        ++failures;
        return;
      }
      for (int i = 0; i < kPerThread; ++i) {
        if ((*got)[i].data != expected[i]) {
          ADD_FAILURE() << "thread " << t << " chunk " << i << " differs";
          ++failures;
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->chunks, uint64_t{kThreads * kPerThread});
  EXPECT_EQ(stats->evictions, 0u);
}

TEST_F(ClientIntegrationTest, Stores32MiBXQuantChunkAtEquivalentBitsOnePointThreeSevenFive) {
  StartDaemon();
  const ChunkShape shape{32, 256, 8, 128, DType::kF16};
  ASSERT_EQ(shape.payload_bytes(), 32u << 20);
  const std::vector<uint16_t> in = cli::GeneratePayload(shape, FreshSeed());
  const ChunkKey key = RandomKey(rng_);
  auto put = client_->Put(ns_, PutChunk{key, shape, Codec::FromPreset(Preset::kXQuant), Bytes(in)});
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_DOUBLE_EQ(put->info.equivalent_bits, 1.375);
  EXPECT_NEAR(put->info.true_bits, 2.375, 0.01);
  EXPECT_EQ(put->info.config.v_m, 16u);

  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->chunks, 1u);
  EXPECT_EQ(stats->logical_bytes, 32u << 20);
  EXPECT_DOUBLE_EQ(stats->equivalent_bits, 1.375);
  EXPECT_NEAR(stats->true_bits, 2.375, 0.01);
  EXPECT_NEAR(stats->compression_ratio(), 16.0 / 2.375, 0.05);
  EXPECT_GE(stats->max_message_bytes, 32u << 20);

  auto got = client_->Get(ns_, key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->data.size(), 32u << 20);
  EXPECT_TRUE(got->data == Oracle(shape, kernels::PresetConfig(Preset::kXQuant, 32), in));
}

TEST_F(ClientIntegrationTest, RejectsBadRequestsWithExactCodesAndKeepsServing) {
  StartDaemon();
  const ChunkShape shape{2, 32, 2, 64, DType::kF16};
  std::vector<uint16_t> in = cli::GeneratePayload(shape, FreshSeed());
  const Codec xq = Codec::FromPreset(Preset::kXQuant);

  // Payload one element short.
  {
    std::span<const uint8_t> short_data = Bytes(in).first(in.size() * 2 - 2);
    auto r = client_->Put(ns_, PutChunk{RandomKey(rng_), shape, xq, short_data});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    ExpectGoodRequestWorks();
  }
  // head_dim 100 is not a multiple of 32.
  {
    const ChunkShape bad{2, 32, 2, 100, DType::kF16};
    const std::vector<uint16_t> data(bad.elements(), 0x3c00);
    auto r = client_->Put(ns_, PutChunk{RandomKey(rng_), bad, xq, Bytes(data)});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_NE(r.status().message().find("head_dim"), absl::string_view::npos) << r.status();
    ExpectGoodRequestWorks();
  }
  // Unknown key.
  {
    auto r = client_->Get(ns_, RandomKey(rng_));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
    ExpectGoodRequestWorks();
  }
  // Empty namespace.
  {
    auto r = client_->Put("", PutChunk{RandomKey(rng_), shape, xq, Bytes(in)});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_EQ(client_->Get("", RandomKey(rng_)).status().code(),
              absl::StatusCode::kInvalidArgument);
    ExpectGoodRequestWorks();
  }
  // A NaN in the payload (fp16 0x7e00), anywhere.
  {
    std::vector<uint16_t> nan = in;
    nan[nan.size() / 3 + 5] = 0x7e00;
    auto r = client_->Put(ns_, PutChunk{RandomKey(rng_), shape, xq, Bytes(nan)});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    ExpectGoodRequestWorks();
  }
  // A slice outside the chunk.
  {
    const ChunkKey key = RandomKey(rng_);
    ASSERT_TRUE(client_->Put(ns_, PutChunk{key, shape, xq, Bytes(in)}).ok());
    GetOptions opt;
    opt.slice.layer_begin = 1;
    opt.slice.layer_end = 5;
    EXPECT_EQ(client_->Get(ns_, key, opt).status().code(), absl::StatusCode::kInvalidArgument);
    ExpectGoodRequestWorks();
  }
  // A custom configuration that cannot be raw is refused before it is sent.
  {
    CodecConfig raw = kernels::PresetConfig(Preset::kFp16, 2);
    auto r = client_->Put(ns_, PutChunk{RandomKey(rng_), shape, Codec::Custom(raw), Bytes(in)});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  }
  EXPECT_TRUE(client_->Stats().ok());
}

TEST(ClientConnectTest, UnreachableDaemonIsUnavailable) {
  // Port 1 on loopback: nobody listens there, so connecting is refused at once.
  ClientOptions o;
  o.target = "127.0.0.1:1";
  o.default_timeout = std::chrono::seconds(5);
  auto c = Client::Connect(o);  // lazy: succeeds
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Stats().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*c)->target(), "127.0.0.1:1");
  o.connect_timeout = std::chrono::milliseconds(300);
  EXPECT_EQ(Client::Connect(o).status().code(), absl::StatusCode::kUnavailable);
  o.target = "";
  EXPECT_EQ(Client::Connect(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvstash::client
