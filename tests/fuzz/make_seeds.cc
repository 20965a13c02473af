// Writes the fuzzers' seed corpora: valid (and a few nearly valid) inputs of every kind
// each harness takes, so fuzzing starts deep instead of at the parsers' first check.
//
//   fuzz_make_seeds OUT_DIR SOURCE_DIR   (OUT_DIR = tests/fuzz/corpus, checked in; SOURCE_DIR
//                                        = the repository, for deploy/kvstashd.toml)
//
// Deterministic: the same source writes the same files.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash/v1/kvstash.pb.h"

namespace kvstash::fuzz {
namespace {

namespace fs = std::filesystem;
using kernels::ChunkShape;
using kernels::DType;
using kernels::Preset;

fs::path out_dir;

void Write(const std::string& corpus, const std::string& name, const std::string& bytes) {
  const fs::path dir = out_dir / corpus;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}

std::string WithByte(uint8_t b, const std::string& rest) { return std::string(1, char(b)) + rest; }

std::string Bytes(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

void SetShape(v1::PutChunk* c, const ChunkShape& s) {
  c->mutable_layout()->set_num_layers(s.num_layers);
  c->mutable_layout()->set_num_tokens(s.num_tokens);
  c->mutable_layout()->set_num_heads(s.num_heads);
  c->mutable_layout()->set_head_dim(s.head_dim);
  c->set_dtype(static_cast<v1::DType>(s.dtype));
}

v1::PutChunk* AddChunk(v1::PutRequest* r, uint64_t lo, const ChunkShape& s, Preset p) {
  v1::PutChunk* c = r->add_chunks();
  c->set_namespace_(kNamespace);
  c->mutable_key()->set_hi(7);
  c->mutable_key()->set_lo(lo);
  SetShape(c, s);
  c->mutable_codec()->set_preset(static_cast<v1::Preset>(p));
  return c;
}

void SetRef(v1::RegionRef* ref, uint64_t offset, uint64_t length) {
  ref->set_region_id(1);
  ref->set_token(kTokenPlaceholder);
  ref->set_offset(offset);
  ref->set_length(length);
}

void AddFixedKeys(google::protobuf::RepeatedPtrField<v1::ChunkKey>* keys) {
  for (const FixedChunk& f : kFixedChunks) {
    v1::ChunkKey* k = keys->Add();
    k->set_hi(0);
    k->set_lo(f.key_lo);
  }
}

void RequestSeeds() {
  const char* c = "request";
  {  // one chunk per preset, inline
    int i = 0;
    for (auto [s, p] : {std::pair{ChunkShape{1, 32, 1, 32, DType::kF16}, Preset::kFp16},
                        {ChunkShape{2, 33, 1, 32, DType::kF16}, Preset::kXQuant},
                        {ChunkShape{1, 40, 1, 32, DType::kBF16}, Preset::kKivi2},
                        {ChunkShape{2, 32, 2, 32, DType::kF16}, Preset::kAsymKv15}}) {
      v1::PutRequest r;
      AddChunk(&r, 100 + i, s, p)->set_data(Bytes(Payload(s, i)));
      Write(c, "put-" + std::to_string(i++), WithByte(kPut, r.SerializeAsString()));
    }
  }
  {  // a custom configuration
    const ChunkShape s{2, 32, 1, 32, DType::kF16};
    v1::PutRequest r;
    v1::PutChunk* ch = AddChunk(&r, 110, s, Preset::kCustom);
    v1::CodecConfig* cc = ch->mutable_codec()->mutable_custom();
    cc->set_k_q(2), cc->set_v_q(0), cc->set_k_m(2), cc->set_v_m(0);
    cc->set_eta1(0.1f), cc->set_eta2(0.05f);
    ch->set_data(Bytes(Payload(s, 5)));
    Write(c, "put-custom", WithByte(kPut, r.SerializeAsString()));
  }
  {  // two chunks, the second with a NaN: nothing may be stored
    const ChunkShape s{1, 32, 1, 32, DType::kF16};
    v1::PutRequest r;
    AddChunk(&r, 120, s, Preset::kFp16)->set_data(Bytes(Payload(s, 6)));
    std::vector<uint16_t> bad = Payload(s, 7);
    bad[17] = 0x7E00;
    AddChunk(&r, 121, s, Preset::kKivi2)->set_data(Bytes(bad));
    Write(c, "put-two-nan", WithByte(kPut, r.SerializeAsString()));
  }
  {  // from region 1
    const ChunkShape s{1, 32, 1, 32, DType::kF16};
    v1::PutRequest r;
    SetRef(AddChunk(&r, 130, s, Preset::kFp16)->mutable_data_region(), 4096, s.payload_bytes());
    Write(c, "put-region", WithByte(kPut, r.SerializeAsString()));
  }
  {  // gathered from a paged cache in region 1: 32 tokens in blocks 3 and 1 of 16
    const ChunkShape s{1, 32, 1, 32, DType::kF16};
    v1::PutRequest r;
    v1::PagedLayout* p = AddChunk(&r, 140, s, Preset::kXQuant)->mutable_data_paged();
    SetRef(p->add_planes(), 0, 32768);
    SetRef(p->add_planes(), 32768, 32768);
    p->set_block_size(16);
    p->set_block_stride(16 * 64);
    p->add_block_ids(3);
    p->add_block_ids(1);
    Write(c, "put-paged", WithByte(kPut, r.SerializeAsString()));
  }
  {  // refused: head_dim 33
    v1::PutRequest r;
    AddChunk(&r, 150, {1, 32, 1, 33, DType::kF16}, Preset::kFp16)->set_data(std::string(4224, '\0'));
    Write(c, "put-bad-head-dim", WithByte(kPut, r.SerializeAsString()));
  }
  {
    v1::GetRequest g;
    g.set_namespace_(kNamespace);
    AddFixedKeys(g.mutable_keys());
    Write(c, "get-all", WithByte(kGet, g.SerializeAsString()));
    g.mutable_layers()->set_begin(1);
    g.mutable_heads()->set_end(1);
    g.set_output_dtype(v1::DTYPE_BF16);
    Write(c, "get-slice-bf16", WithByte(kGet, g.SerializeAsString()));
  }
  {
    v1::GetRequest g;
    g.set_namespace_(kNamespace);
    AddFixedKeys(g.mutable_keys());
    SetRef(g.mutable_output_region(), 64, kRegionBytes - 64);
    Write(c, "get-region", WithByte(kGet, g.SerializeAsString()));
  }
  {  // fixed chunk 1 (2 layers, 33 tokens) into a paged cache: 3 blocks of 16
    v1::GetRequest g;
    g.set_namespace_(kNamespace);
    v1::ChunkKey* k = g.add_keys();
    k->set_lo(1);
    v1::PagedLayout* p = g.mutable_output_paged();
    for (int i = 0; i < 4; ++i) SetRef(p->add_planes(), i * 8192, 8192);
    p->set_block_size(16);
    p->set_block_stride(1024);
    p->add_block_ids(2);
    p->add_block_ids(0);
    p->add_block_ids(5);
    Write(c, "get-paged", WithByte(kGet, g.SerializeAsString()));
  }
  {
    v1::GetRequest g;
    g.set_namespace_(kNamespace);
    AddFixedKeys(g.mutable_keys());
    g.add_keys()->set_lo(999);
    g.set_allow_missing(true);
    Write(c, "get-missing", WithByte(kGet, g.SerializeAsString()));
  }
  {
    v1::LookupRequest l;
    l.set_namespace_(kNamespace);
    AddFixedKeys(l.mutable_keys());
    l.add_keys()->set_lo(4);
    Write(c, "lookup", WithByte(kLookup, l.SerializeAsString()));
    v1::DeleteRequest d;
    d.set_namespace_(kNamespace);
    d.add_keys()->set_lo(2);
    d.add_keys()->set_lo(99);
    Write(c, "delete", WithByte(kDelete, d.SerializeAsString()));
  }
  {
    int i = 0;
    for (auto [path, size] : {std::pair<const char*, uint64_t>{"@ROOT@/r0", 4096},
                              {"@ROOT@/dir/inner", 4096}, {"@ROOT@/link", 4096},
                              {"@ROOT@/escape", 64}, {"@ROOT@/../etc/passwd", 64},
                              {"@ROOT@/small", 4096}, {"@ROOT@/fifo", 64}, {"@ROOT@/dir", 64}}) {
      v1::RegisterRegionRequest r;
      r.set_namespace_(kNamespace);
      r.set_path(path);
      r.set_size(size);
      r.set_lease_seconds(i * 1000);
      Write(c, "register-" + std::to_string(i++), WithByte(kRegisterRegion, r.SerializeAsString()));
    }
  }
  {
    v1::UnregisterRegionRequest u;
    u.set_region_id(1);
    u.set_token(kTokenPlaceholder);
    Write(c, "unregister", WithByte(kUnregisterRegion, u.SerializeAsString()));
    Write(c, "renew", WithByte(kRenewRegion, u.SerializeAsString()));
    Write(c, "stats", WithByte(kStats, ""));
  }
}

void ChunkSeeds() {
  const char* c = "chunk";
  int i = 0;
  for (auto [s, p] : {std::pair{ChunkShape{1, 32, 1, 32, DType::kF16}, Preset::kFp16},
                      {ChunkShape{3, 40, 1, 32, DType::kF16}, Preset::kXQuant},
                      {ChunkShape{2, 33, 2, 32, DType::kBF16}, Preset::kKivi2},
                      {ChunkShape{2, 64, 1, 64, DType::kF16}, Preset::kAsymKv15},
                      {ChunkShape{4, 5, 1, 32, DType::kF16}, Preset::kXQuant}}) {
    auto enc = kernels::EncodeChunk(s, kernels::PresetConfig(p, s.num_layers), Payload(s, i));
    if (!enc.ok()) std::abort();
    const std::string chunk(enc->begin(), enc->end());
    const std::string n = std::to_string(i++);
    Write(c, "decode-" + n, std::string("\x00\x00\x00\x00\x00", 5) + chunk);
    Write(c, "reseal-" + n, std::string("\x01\x01\x00\x00\x00", 5) + chunk);   // layer 1 on
    Write(c, "reseal-bf16-" + n, std::string("\x05\x00\x01\x00\x01", 5) + chunk);
    Write(c, "partial-" + n, std::string("\x02\x00\x00\x00\x00\x03", 6) + chunk);
  }
  // Encoder inputs: shape and config bytes, then values (some NaN/Inf).
  const std::string values = Bytes(Payload({1, 64, 1, 32, DType::kF16}, 3));
  Write(c, "encode-fp16", std::string("\x03\x00\x00\x00\x00", 5) +
                              std::string("\x01\x1f\x00\x00\x02\x00\x00\x00\x00\x00", 10) + values);
  Write(c, "encode-xquant", std::string("\x03\x00\x00\x00\x00", 5) +
                                std::string("\x03\x3f\x01\x01\x08\x00\x00\x00\x00\x00", 10) + values);
  Write(c, "encode-custom", std::string("\x03\x00\x00\x00\x00", 5) +
                                std::string("\x02\x21\x00\x00\x00\x02\x00\x02\x01\x35", 10) + values);
  Write(c, "encode-bf16-nan", std::string("\x07\x00\x00\x00\x00", 5) +
                                  std::string("\x00\x20\x00\x00\x05\x00\x00\x00\x00\x00", 10) +
                                  std::string("\x80\x7f\x00\x3c", 4) + values);
}

void PagedSeeds() {
  const char* c = "paged";
  // Geometry: mode 0, layers-1, tokens-1 (u16), heads-1, head_dim/32-1, split (u16).
  auto geometry = [](uint8_t layers, uint16_t tokens, uint8_t heads, uint8_t dims, uint16_t split) {
    std::string g(8, '\0');
    g[1] = char(layers - 1);
    const uint16_t t = tokens - 1;
    std::memcpy(&g[2], &t, 2);
    g[4] = char(heads - 1);
    g[5] = char(dims - 1);
    std::memcpy(&g[6], &split, 2);
    return g;
  };
  {  // 1 layer, 40 tokens of 2 heads of 32 in blocks of 16 of region A
    v1::PagedLayout p;
    for (int i = 0; i < 2; ++i) {
      v1::RegionRef* r = p.add_planes();
      r->set_region_id(1), r->set_token(kTokenPlaceholder), r->set_offset(i * 16384);
      r->set_length(16384);
    }
    p.set_block_size(16);
    p.set_block_stride(16 * 128);
    for (uint32_t b : {4, 0, 2}) p.add_block_ids(b);
    p.set_first_slot(3);
    Write(c, "resolve-default", geometry(1, 40, 2, 1, 17) + p.SerializeAsString());
    // Head-major blocks (vLLM-like strides): token_stride 64, head_stride 16 * 64.
    p.set_token_stride(64);
    p.set_head_stride(16 * 64);
    Write(c, "resolve-head-major", geometry(1, 40, 2, 1, 5) + p.SerializeAsString());
  }
  {  // 2 layers over regions A and B (B is 4 KiB + 16: one block of 16 tokens of 1 x 64)
    v1::PagedLayout p;
    for (int i = 0; i < 4; ++i) {
      v1::RegionRef* r = p.add_planes();
      const bool b = i % 2 == 1;
      r->set_region_id(b ? 2 : 1), r->set_token(b ? "@TOKEN2@" : kTokenPlaceholder);
      r->set_offset(b ? 16 : i * 4096), r->set_length(4096);
    }
    p.set_block_size(16);
    p.set_block_stride(0);
    p.add_block_ids(0);
    Write(c, "resolve-two-regions", geometry(2, 16, 1, 1, 8) + p.SerializeAsString());
  }
  // Acquire: mode 1, flags, offset, length.
  auto acquire = [](uint8_t flags, uint64_t offset, uint64_t length) {
    std::string a(18, '\0');
    a[0] = 1;
    a[1] = char(flags);
    std::memcpy(&a[2], &offset, 8);
    std::memcpy(&a[10], &length, 8);
    return a;
  };
  Write(c, "acquire-all", acquire(0, 0, 64 << 10));
  Write(c, "acquire-end", acquire(1, 4096, 16));
  Write(c, "acquire-wrap", acquire(0, 16, ~uint64_t{0} - 8));
  Write(c, "acquire-wrong-token", acquire(4, 0, 16));
}

void ConfigSeeds(const fs::path& source) {
  const char* c = "config";
  std::ifstream in(source / "deploy/kvstashd.toml", std::ios::binary);
  std::stringstream full;
  full << in.rdbuf();
  if (full.str().empty()) std::abort();
  Write(c, "toml-deploy", WithByte(0, full.str()));
  Write(c, "toml-small", WithByte(0, "[server]\nlisten = \"[::1]:0\"\nshutdown_deadline = \"1500ms\"\n"
                                     "[host]\ncapacity = \"64 MiB\"\npage_bytes = 4096\n"
                                     "[gpu]\ndevices = [0, 1]\nenabled = false\n"));
  Write(c, "toml-bad", WithByte(0, "[host]\ncapacity = -1\n[nope]\nx = 1\n"));
  Write(c, "values", WithByte(1, "64KiB\n10s\n127.0.0.1:7450\n[::1]:0\n2GB\n18446744073709551615\n1h\n"));
  Write(c, "argv", WithByte(2, "--host-capacity\n64MiB\n--listen\n127.0.0.1:0\n--shutdown-deadline\n"
                               "2m\n--gpu\noff\n--print-config\n"));
}

}  // namespace
}  // namespace kvstash::fuzz

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s OUT_DIR SOURCE_DIR\n", argv[0]);
    return 2;
  }
  kvstash::fuzz::out_dir = argv[1];
  kvstash::fuzz::RequestSeeds();
  kvstash::fuzz::ChunkSeeds();
  kvstash::fuzz::PagedSeeds();
  kvstash::fuzz::ConfigSeeds(argv[2]);
  return 0;
}
