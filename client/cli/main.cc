// kvstash: the command-line client of the kvstash daemon. Reference: docs/cli.md.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli_util.h"
#include "json.h"
#include "kvstash/client/chunk_key.h"
#include "kvstash/client/client.h"
#include "kvstash/kernels/format.h"
#include "npy.h"
#include "security_flags.h"

namespace kvstash::cli {
namespace {

using client::ChunkKey;
using client::KeyToHex;

constexpr char kFooter[] = R"(Exit codes:
  0  ok
  1  other error
  2  usage error or invalid argument (also the daemon's InvalidArgument)
  3  not found (get or rm of a missing key; lookup never fails for a miss)
  4  unavailable (cannot connect, or the deadline passed)
  5  resource exhausted (the daemon cannot free enough memory)
  6  refused: no or wrong token (UNAUTHENTICATED) or not allowed (PERMISSION_DENIED)
Token: --token-file FILE, $KVSTASH_TOKEN_FILE or $KVSTASH_TOKEN (there is no --token:
command lines are visible to other users).
See docs/cli.md for examples.)";

struct Globals {
  std::string addr = "127.0.0.1:7450";
  double timeout_s = 30;
  bool json = false;
  std::string ns = "default";
  SecurityFlags security;
};

// Prints the error (stderr, and a JSON object on stdout with --json) and returns the exit
// code for it.
int Fail(const Globals& g, const absl::Status& status) {
  std::cerr << "kvstash: " << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  if (g.json) {
    std::cout << JsonObject()
                     .Add("ok", false)
                     .Add("code", absl::StatusCodeToString(status.code()))
                     .Add("message", std::string_view(status.message().data(),
                                                      status.message().size()))
                     .str()
              << "\n";
  }
  return ExitCodeFor(status.code());
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot open '", path, "'"));
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat("cannot read '", path, "'"));
  return data;
}

absl::Status WriteFile(const std::string& path, std::string_view header, const void* data,
                       size_t bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::FailedPreconditionError(absl::StrCat("cannot create '", path, "'"));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write '", path, "'"));
  return absl::OkStatus();
}

// The .npy descr the CLI writes for a dtype (NumPy has no bf16: raw u2 bits).
const char* NpyDescr(kernels::DType d) { return d == kernels::DType::kBF16 ? "<u2" : "<f2"; }

// Writes 16-bit values as raw bytes, or as .npy with `shape` when the path ends in .npy.
absl::Status WriteArray(const std::string& path, const void* data, size_t bytes,
                        kernels::DType dtype, const std::vector<uint64_t>& shape) {
  std::string header;
  if (EndsWith(path, ".npy")) header = NpyHeaderBytes(NpyDescr(dtype), shape);
  return WriteFile(path, header, data, bytes);
}

std::vector<uint64_t> FullShape(const kernels::ChunkShape& s) {
  return {s.num_layers, 2, s.num_tokens, s.num_heads, s.head_dim};
}

std::string LayoutText(const kernels::ChunkShape& s) {
  return absl::StrCat("L=", s.num_layers, " T=", s.num_tokens, " H=", s.num_heads,
                      " D=", s.head_dim, " ", Av(kernels::DTypeName(s.dtype)));
}

std::string CodecText(kernels::Preset preset, const kernels::CodecConfig& c) {
  const std::string name =
      preset == kernels::Preset::kCustom ? "custom" : std::string(kernels::PresetName(preset));
  if (c.raw || preset == kernels::Preset::kFp16) return name;
  return absl::StrFormat("%s (k_q=%u v_q=%u k_m=%u v_m=%u eta1=%.4g eta2=%.4g)", name, c.k_q,
                         c.v_q, c.k_m, c.v_m, c.eta1, c.eta2);
}

std::string InfoJson(const client::ChunkInfo& info) {
  JsonObject layout;
  layout.Add("num_layers", info.shape.num_layers)
      .Add("num_tokens", info.shape.num_tokens)
      .Add("num_heads", info.shape.num_heads)
      .Add("head_dim", info.shape.head_dim);
  JsonObject config;
  config.Add("k_q", info.config.k_q)
      .Add("v_q", info.config.v_q)
      .Add("k_m", info.config.k_m)
      .Add("v_m", info.config.v_m)
      .Add("eta1", info.config.eta1)
      .Add("eta2", info.config.eta2);
  return JsonObject()
      .AddRaw("layout", layout.str())
      .Add("dtype", kernels::DTypeName(info.shape.dtype))
      .Add("preset", info.preset == kernels::Preset::kCustom
                         ? std::string_view("custom")
                         : kernels::PresetName(info.preset))
      .AddRaw("config", config.str())
      .Add("logical_bytes", info.logical_bytes)
      .Add("stored_bytes", info.stored_bytes)
      .Add("compression_ratio", info.compression_ratio())
      .Add("equivalent_bits", info.equivalent_bits)
      .Add("true_bits", info.true_bits)
      .str();
}

void PrintRow(std::string_view name, const std::string& value) {
  std::cout << absl::StrFormat("%-18s %s\n", name, value);
}

void PrintInfo(const client::ChunkInfo& info) {
  PrintRow("layout", LayoutText(info.shape));
  PrintRow("codec", CodecText(info.preset, info.config));
  PrintRow("logical", absl::StrCat(HumanBytes(info.logical_bytes), " (", info.logical_bytes,
                                   " B)"));
  PrintRow("stored", absl::StrCat(HumanBytes(info.stored_bytes), " (", info.stored_bytes, " B)"));
  PrintRow("compression", absl::StrFormat("%.2fx", info.compression_ratio()));
  PrintRow("B_eq", absl::StrFormat("%.4g bits", info.equivalent_bits));
  PrintRow("true bits", absl::StrFormat("%.4g bits", info.true_bits));
}

absl::StatusOr<std::unique_ptr<client::Client>> Connect(const Globals& g) {
  if (!(g.timeout_s > 0)) return absl::InvalidArgumentError("--timeout: must be positive");
  client::ClientOptions o;
  o.target = g.addr;
  o.default_timeout = std::chrono::milliseconds(static_cast<int64_t>(g.timeout_s * 1000 + 0.5));
  if (o.default_timeout.count() == 0) o.default_timeout = std::chrono::milliseconds(1);
  if (absl::Status s = ApplySecurityFlags(g.security, &o); !s.ok()) return s;
  return client::Client::Connect(o);
}

absl::StatusOr<kernels::DType> DTypeOption(const std::string& text) {
  return kernels::ParseDType(text);
}

// --- put ---------------------------------------------------------------------------------

struct PutArgs {
  std::string key_hex, tokens, prev_hex;
  std::string file, npy, generate, layout, save;
  std::string dtype;
  uint32_t layers = 0, heads = 0, head_dim = 0, num_tokens = 0;
  uint64_t seed = 0;
  std::string preset = "xquant";
  uint32_t kq = 0, vq = 0, km = 0, vm = 0;
  float eta1 = 0, eta2 = 0;
  CLI::Option *o_layers, *o_heads, *o_head_dim, *o_num_tokens, *o_dtype;
  CLI::Option *o_kq, *o_vq, *o_km, *o_vm, *o_eta1, *o_eta2;
};

int RunPut(const Globals& g, const PutArgs& a) {
  // Key.
  std::optional<std::vector<int32_t>> tokens;
  ChunkKey key;
  if (!a.key_hex.empty() == !a.tokens.empty()) {
    return Fail(g, absl::InvalidArgumentError("put: give exactly one of --key or --tokens"));
  }
  if (!a.key_hex.empty()) {
    if (!a.prev_hex.empty()) {
      return Fail(g, absl::InvalidArgumentError("put: --prev only goes with --tokens"));
    }
    auto k = client::KeyFromHex(a.key_hex);
    if (!k.ok()) return Fail(g, k.status());
    key = *k;
  } else {
    auto t = ParseTokenList(a.tokens);
    if (!t.ok()) return Fail(g, t.status());
    if (t->empty()) return Fail(g, absl::InvalidArgumentError("tokens: empty list"));
    ChunkKey prev;
    if (!a.prev_hex.empty()) {
      auto p = client::KeyFromHex(a.prev_hex);
      if (!p.ok()) return Fail(g, p.status());
      prev = *p;
    }
    key = client::ChainKey(prev, *t, g.ns);
    tokens = std::move(*t);
  }

  // Dtype requested on the command line, if any.
  std::optional<kernels::DType> dtype;
  if (a.o_dtype->count() > 0) {
    auto d = DTypeOption(a.dtype);
    if (!d.ok()) return Fail(g, d.status());
    dtype = *d;
  }

  // Data and geometry.
  const int sources = !a.file.empty() + !a.npy.empty() + !a.generate.empty();
  if (sources != 1) {
    return Fail(g, absl::InvalidArgumentError(
                       "put: give exactly one of --file, --npy or --generate"));
  }
  const bool overrides = a.o_layers->count() + a.o_heads->count() + a.o_head_dim->count() +
                             a.o_num_tokens->count() > 0;
  if (overrides && a.generate.empty()) {
    return Fail(g, absl::InvalidArgumentError(
                       "put: --layers/--heads/--head-dim/--num-tokens go with --generate; "
                       "use --layout L,T,H,D for files"));
  }
  kernels::ChunkShape shape;
  std::string owned;                 // file contents or generated values
  std::string_view payload;          // the 16-bit payload within `owned`
  if (!a.generate.empty()) {
    if (!a.layout.empty()) {
      return Fail(g, absl::InvalidArgumentError("put: --layout does not go with --generate"));
    }
    auto s = ModelGeometry(a.generate);
    if (!s.ok()) return Fail(g, s.status());
    shape = *s;
    if (tokens) shape.num_tokens = static_cast<uint32_t>(tokens->size());
    if (a.o_layers->count()) shape.num_layers = a.layers;
    if (a.o_heads->count()) shape.num_heads = a.heads;
    if (a.o_head_dim->count()) shape.head_dim = a.head_dim;
    if (a.o_num_tokens->count()) shape.num_tokens = a.num_tokens;
    shape.dtype = dtype.value_or(kernels::DType::kF16);
    // Validate before allocating: a typo must not allocate gigabytes.
    if (absl::Status st = kernels::ValidateShape(shape); !st.ok()) return Fail(g, st);
    std::vector<uint16_t> values = GeneratePayload(shape, a.seed);
    owned.assign(reinterpret_cast<const char*>(values.data()), values.size() * 2);
    payload = owned;
  } else if (!a.file.empty()) {
    if (a.layout.empty()) {
      return Fail(g, absl::InvalidArgumentError("put: --file needs --layout L,T,H,D"));
    }
    auto s = ParseLayout(a.layout);
    if (!s.ok()) return Fail(g, s.status());
    shape = *s;
    shape.dtype = dtype.value_or(kernels::DType::kF16);
    auto data = ReadFile(a.file);
    if (!data.ok()) return Fail(g, data.status());
    owned = std::move(*data);
    payload = owned;
    if (payload.size() != shape.payload_bytes()) {
      return Fail(g, absl::InvalidArgumentError(absl::StrCat(
                         "put: '", a.file, "' holds ", payload.size(), " bytes; layout ",
                         LayoutText(shape), " needs ", shape.payload_bytes())));
    }
  } else {
    auto data = ReadFile(a.npy);
    if (!data.ok()) return Fail(g, data.status());
    owned = std::move(*data);
    auto h = ParseNpyHeader(owned);
    if (!h.ok()) return Fail(g, h.status());
    if (h->fortran_order) {
      return Fail(g, absl::InvalidArgumentError("npy: Fortran-order arrays are not supported"));
    }
    if (h->descr == "<f2") {
      if (dtype && *dtype != kernels::DType::kF16) {
        return Fail(g, absl::InvalidArgumentError(
                           "npy: descr '<f2' is fp16; --dtype bf16 does not apply"));
      }
      shape.dtype = kernels::DType::kF16;
    } else if (h->descr == "<u2" || h->descr == "|V2" || h->descr == "<V2") {
      if (!dtype || *dtype != kernels::DType::kBF16) {
        return Fail(g, absl::InvalidArgumentError(absl::StrCat(
                           "npy: descr '", h->descr, "' holds raw 16-bit values; pass --dtype bf16")));
      }
      shape.dtype = kernels::DType::kBF16;
    } else {
      return Fail(g, absl::InvalidArgumentError(absl::StrCat(
                         "npy: descr '", h->descr, "' is not supported (want '<f2', or '<u2'/'V2' "
                         "with --dtype bf16)")));
    }
    if (!a.layout.empty()) {
      const kernels::DType dt = shape.dtype;
      auto s = ParseLayout(a.layout);
      if (!s.ok()) return Fail(g, s.status());
      shape = *s;
      shape.dtype = dt;
      if (h->elements() != shape.elements()) {
        return Fail(g, absl::InvalidArgumentError(absl::StrCat(
                           "npy: the array has ", h->elements(), " elements; layout ",
                           LayoutText(shape), " needs ", shape.elements())));
      }
    } else {
      if (h->shape.size() != 5 || h->shape[1] != 2) {
        std::vector<std::string> dims;
        for (uint64_t d : h->shape) dims.push_back(std::to_string(d));
        return Fail(g, absl::InvalidArgumentError(absl::StrCat(
                           "npy: shape (", absl::StrJoin(dims, ", "),
                           ") is not [L, 2, T, H, D]; give --layout L,T,H,D")));
      }
      for (int i : {0, 2, 3, 4}) {
        if (h->shape[i] > UINT32_MAX) {
          return Fail(g, absl::InvalidArgumentError("npy: dimension too large"));
        }
      }
      shape.num_layers = static_cast<uint32_t>(h->shape[0]);
      shape.num_tokens = static_cast<uint32_t>(h->shape[2]);
      shape.num_heads = static_cast<uint32_t>(h->shape[3]);
      shape.head_dim = static_cast<uint32_t>(h->shape[4]);
    }
    const uint64_t bytes = h->elements() * 2;
    if (owned.size() < h->data_offset + bytes) {
      return Fail(g, absl::InvalidArgumentError(absl::StrCat(
                         "npy: '", a.npy, "' is truncated: ", owned.size() - h->data_offset,
                         " data bytes, the header says ", bytes)));
    }
    payload = std::string_view(owned).substr(h->data_offset, bytes);
  }
  if (tokens && tokens->size() != shape.num_tokens) {
    return Fail(g, absl::InvalidArgumentError(absl::StrCat(
                       "put: --tokens lists ", tokens->size(), " tokens but the chunk has T=",
                       shape.num_tokens)));
  }

  // Codec.
  auto preset = kernels::ParsePreset(a.preset);
  if (!preset.ok()) return Fail(g, preset.status());
  client::Codec codec = client::Codec::FromPreset(*preset);
  const bool custom = a.o_kq->count() + a.o_vq->count() + a.o_km->count() + a.o_vm->count() +
                          a.o_eta1->count() + a.o_eta2->count() > 0;
  if (custom) {
    if (*preset == kernels::Preset::kFp16) {
      return Fail(g, absl::InvalidArgumentError(
                         "put: --kq/--vq/--km/--vm/--eta1/--eta2 do not apply to the fp16 preset"));
    }
    kernels::CodecConfig c = kernels::PresetConfig(*preset, shape.num_layers);
    if (a.o_kq->count()) c.k_q = a.kq;
    if (a.o_vq->count()) c.v_q = a.vq;
    if (a.o_km->count()) c.k_m = a.km;
    if (a.o_vm->count()) c.v_m = a.vm;
    if (a.o_eta1->count()) c.eta1 = a.eta1;
    if (a.o_eta2->count()) c.eta2 = a.eta2;
    c.raw = false;
    c.preset = kernels::Preset::kCustom;
    codec = client::Codec::Custom(c);
  }

  if (!a.save.empty()) {
    if (absl::Status st = WriteArray(a.save, payload.data(), payload.size(), shape.dtype,
                                     FullShape(shape));
        !st.ok()) {
      return Fail(g, st);
    }
  }

  auto c = Connect(g);
  if (!c.ok()) return Fail(g, c.status());
  client::PutChunk chunk;
  chunk.key = key;
  chunk.shape = shape;
  chunk.codec = codec;
  chunk.data = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(payload.data()),
                                        payload.size());
  auto r = (*c)->Put(g.ns, chunk);
  if (!r.ok()) return Fail(g, r.status());

  if (g.json) {
    std::cout << JsonObject()
                     .Add("ok", true)
                     .Add("key", KeyToHex(r->key))
                     .Add("namespace", g.ns)
                     .Add("replaced", r->replaced)
                     .AddRaw("info", InfoJson(r->info))
                     .str()
              << "\n";
  } else {
    PrintRow("key", KeyToHex(r->key));
    PrintInfo(r->info);
    PrintRow("replaced", r->replaced ? "yes" : "no");
  }
  return kExitOk;
}

// --- get ---------------------------------------------------------------------------------

struct GetArgs {
  std::string key_hex, layers, heads, dtype, output, compare;
};

int RunGet(const Globals& g, const GetArgs& a) {
  auto key = client::KeyFromHex(a.key_hex);
  if (!key.ok()) return Fail(g, key.status());
  client::GetOptions opts;
  if (!a.layers.empty()) {
    auto r = ParseRange(a.layers);
    if (!r.ok()) return Fail(g, absl::InvalidArgumentError(absl::StrCat("--layers: ",
                                                                        r.status().message())));
    opts.slice.layer_begin = r->first;
    opts.slice.layer_end = r->second;
  }
  if (!a.heads.empty()) {
    auto r = ParseRange(a.heads);
    if (!r.ok()) return Fail(g, absl::InvalidArgumentError(absl::StrCat("--heads: ",
                                                                        r.status().message())));
    opts.slice.head_begin = r->first;
    opts.slice.head_end = r->second;
  }
  if (!a.dtype.empty()) {
    auto d = DTypeOption(a.dtype);
    if (!d.ok()) return Fail(g, d.status());
    opts.output_dtype = *d;
  }
  // Read the reference before the call so a bad path fails fast.
  std::string ref_owned;
  std::string_view ref;
  std::optional<kernels::DType> ref_dtype;
  if (!a.compare.empty()) {
    auto data = ReadFile(a.compare);
    if (!data.ok()) return Fail(g, data.status());
    ref_owned = std::move(*data);
    ref = ref_owned;
    if (EndsWith(a.compare, ".npy")) {
      auto h = ParseNpyHeader(ref_owned);
      if (!h.ok()) return Fail(g, h.status());
      if (h->descr == "<f2") ref_dtype = kernels::DType::kF16;
      ref = ref.substr(std::min(h->data_offset, ref.size()));
      ref = ref.substr(0, std::min<uint64_t>(ref.size(), h->elements() * 2));
    }
  }

  auto c = Connect(g);
  if (!c.ok()) return Fail(g, c.status());
  auto r = (*c)->Get(g.ns, *key, opts);
  if (!r.ok()) return Fail(g, r.status());

  const kernels::ChunkShape& s = r->info.shape;
  kernels::Slice res = opts.slice;
  if (res.layer_end == 0) res.layer_end = s.num_layers;
  if (res.head_end == 0) res.head_end = s.num_heads;
  const std::vector<uint64_t> out_shape = {res.layer_end - res.layer_begin, 2, s.num_tokens,
                                           res.head_end - res.head_begin, s.head_dim};
  if (!a.output.empty()) {
    if (absl::Status st = WriteArray(a.output, r->data.data(), r->data.size(), r->dtype, out_shape);
        !st.ok()) {
      return Fail(g, st);
    }
  }
  std::optional<ErrorMetrics> metrics;
  if (!a.compare.empty()) {
    if (ref.size() % 2 != 0) {
      return Fail(g, absl::InvalidArgumentError("compare: odd number of bytes"));
    }
    std::vector<uint16_t> ref_values(ref.size() / 2), got(r->data.size() / 2);
    std::memcpy(ref_values.data(), ref.data(), ref_values.size() * 2);
    std::memcpy(got.data(), r->data.data(), got.size() * 2);
    if (ref_values.size() == s.elements() && got.size() != s.elements()) {
      ref_values = SlicePayload(s, ref_values, res);  // a full reference for a sliced get
    }
    auto m = CompareValues(ref_values, ref_dtype.value_or(s.dtype), got, r->dtype);
    if (!m.ok()) return Fail(g, m.status());
    metrics = *m;
  }

  if (g.json) {
    JsonObject o;
    o.Add("ok", true)
        .Add("key", KeyToHex(r->key))
        .Add("namespace", g.ns)
        .Add("dtype", kernels::DTypeName(r->dtype))
        .Add("bytes", uint64_t{r->data.size()})
        .Add("layers", absl::StrCat(res.layer_begin, ":", res.layer_end))
        .Add("heads", absl::StrCat(res.head_begin, ":", res.head_end))
        .AddRaw("info", InfoJson(r->info));
    if (!a.output.empty()) o.Add("output", a.output);
    if (metrics) {
      o.Add("max_abs_error", metrics->max_abs).Add("rel_rms_error", metrics->rel_rms);
    }
    std::cout << o.str() << "\n";
  } else {
    PrintRow("key", KeyToHex(r->key));
    PrintInfo(r->info);
    PrintRow("slice", absl::StrCat("layers ", res.layer_begin, ":", res.layer_end, " heads ",
                                   res.head_begin, ":", res.head_end));
    PrintRow("returned", absl::StrCat(HumanBytes(r->data.size()), " ",
                                      Av(kernels::DTypeName(r->dtype))));
    if (!a.output.empty()) PrintRow("written to", a.output);
    if (metrics) {
      PrintRow("max abs error", absl::StrFormat("%.6g", metrics->max_abs));
      PrintRow("rel RMS error", absl::StrFormat("%.6g", metrics->rel_rms));
    }
  }
  return kExitOk;
}

// --- lookup, rm, stats -------------------------------------------------------------------

absl::StatusOr<std::vector<ChunkKey>> ParseKeys(const std::vector<std::string>& hex) {
  std::vector<ChunkKey> keys;
  for (const std::string& h : hex) {
    auto k = client::KeyFromHex(h);
    if (!k.ok()) return k.status();
    keys.push_back(*k);
  }
  return keys;
}

struct LookupArgs {
  std::vector<std::string> keys;
  std::string tokens;
  uint32_t chunk_tokens = 256;
};

int RunLookup(const Globals& g, const LookupArgs& a) {
  std::vector<ChunkKey> keys;
  if (!a.keys.empty() == !a.tokens.empty()) {
    return Fail(g, absl::InvalidArgumentError("lookup: give keys or --tokens, not both"));
  }
  if (!a.tokens.empty()) {
    if (a.chunk_tokens == 0) {
      return Fail(g, absl::InvalidArgumentError("--chunk-tokens: must be positive"));
    }
    auto t = ParseTokenList(a.tokens);
    if (!t.ok()) return Fail(g, t.status());
    keys = client::ChainKeys(*t, a.chunk_tokens, g.ns);
  } else {
    auto k = ParseKeys(a.keys);
    if (!k.ok()) return Fail(g, k.status());
    keys = std::move(*k);
  }
  uint32_t present = 0;
  if (!keys.empty()) {
    auto c = Connect(g);
    if (!c.ok()) return Fail(g, c.status());
    auto r = (*c)->Lookup(g.ns, keys);
    if (!r.ok()) return Fail(g, r.status());
    present = *r;
  }
  if (g.json) {
    JsonObject o;
    o.Add("ok", true).Add("namespace", g.ns).Add("present_prefix", present)
        .Add("keys", uint64_t{keys.size()});
    if (!a.tokens.empty()) {
      o.Add("chunk_tokens", a.chunk_tokens)
          .Add("present_tokens", uint64_t{present} * a.chunk_tokens);
    }
    std::cout << o.str() << "\n";
  } else {
    std::cout << "present prefix: " << present << " of " << keys.size() << " chunks";
    if (!a.tokens.empty()) {
      std::cout << " (" << uint64_t{present} * a.chunk_tokens << " tokens)";
    }
    std::cout << "\n";
  }
  return kExitOk;
}

int RunRm(const Globals& g, const std::vector<std::string>& hex) {
  auto keys = ParseKeys(hex);
  if (!keys.ok()) return Fail(g, keys.status());
  auto c = Connect(g);
  if (!c.ok()) return Fail(g, c.status());
  auto r = (*c)->Delete(g.ns, *keys);
  if (!r.ok()) return Fail(g, r.status());
  if (g.json) {
    std::cout << JsonObject()
                     .Add("ok", r->not_found == 0)
                     .Add("namespace", g.ns)
                     .Add("deleted", r->deleted)
                     .Add("not_found", r->not_found)
                     .str()
              << "\n";
  } else {
    std::cout << "deleted " << r->deleted << ", not found " << r->not_found << "\n";
  }
  return r->not_found > 0 ? kExitNotFound : kExitOk;
}

int RunStats(const Globals& g) {
  auto c = Connect(g);
  if (!c.ok()) return Fail(g, c.status());
  auto r = (*c)->Stats();
  if (!r.ok()) return Fail(g, r.status());
  const client::StoreStats& s = *r;
  if (g.json) {
    std::cout << JsonObject()
                     .Add("ok", true)
                     .Add("capacity_bytes", s.capacity_bytes)
                     .Add("used_bytes", s.used_bytes)
                     .Add("page_bytes", s.page_bytes)
                     .Add("chunks", s.chunks)
                     .Add("logical_bytes", s.logical_bytes)
                     .Add("stored_bytes", s.stored_bytes)
                     .Add("compression_ratio", s.compression_ratio())
                     .Add("equivalent_bits", s.equivalent_bits)
                     .Add("true_bits", s.true_bits)
                     .Add("hits", s.hits)
                     .Add("misses", s.misses)
                     .Add("evictions", s.evictions)
                     .Add("puts", s.puts)
                     .Add("gets", s.gets)
                     .Add("deletes", s.deletes)
                     .Add("version", s.version)
                     .Add("codec_path", s.codec_path)
                     .Add("max_message_bytes", s.max_message_bytes)
                     .Add("quota_evictions", s.quota_evictions)
                     .Add("namespaces", static_cast<uint64_t>(s.namespaces.size()))
                     .Add("namespaces_omitted", s.namespaces_omitted)
                     .str()
              << "\n";
    return kExitOk;
  }
  const double used_pct = s.capacity_bytes ? 100.0 * s.used_bytes / s.capacity_bytes : 0.0;
  PrintRow("address", g.addr);
  PrintRow("version", s.version);
  PrintRow("codec path", s.codec_path);
  PrintRow("capacity", HumanBytes(s.capacity_bytes));
  PrintRow("used", absl::StrFormat("%s (%.1f%%)", HumanBytes(s.used_bytes), used_pct));
  PrintRow("page size", HumanBytes(s.page_bytes));
  PrintRow("chunks", absl::StrCat(s.chunks));
  PrintRow("logical", HumanBytes(s.logical_bytes));
  PrintRow("stored", HumanBytes(s.stored_bytes));
  PrintRow("compression", absl::StrFormat("%.2fx", s.compression_ratio()));
  PrintRow("B_eq", absl::StrFormat("%.4g bits", s.equivalent_bits));
  PrintRow("true bits", absl::StrFormat("%.4g bits", s.true_bits));
  PrintRow("hits", absl::StrCat(s.hits));
  PrintRow("misses", absl::StrCat(s.misses));
  PrintRow("evictions", absl::StrCat(s.evictions));
  PrintRow("puts/gets/deletes", absl::StrCat(s.puts, " / ", s.gets, " / ", s.deletes));
  PrintRow("max message", HumanBytes(s.max_message_bytes));
  for (const client::NamespaceStats& n : s.namespaces)
    PrintRow(absl::StrCat("namespace ", n.name),
             absl::StrCat(n.chunks, " chunks, ", HumanBytes(n.allocated_bytes), " allocated",
                          n.quota_bytes ? absl::StrCat(" of ", HumanBytes(n.quota_bytes)) : "",
                          ", ", n.quota_evictions + n.capacity_evictions, " evicted"));
  if (s.namespaces_omitted > 0)
    PrintRow("namespaces omitted", absl::StrCat(s.namespaces_omitted));
  return kExitOk;
}

int Main(int argc, char** argv) {
  CLI::App app{"kvstash: client of the kvstash KV-cache store daemon"};
  app.footer(kFooter);
  app.require_subcommand(1);
  app.fallthrough();

  Globals g;
  app.add_option("--addr", g.addr, "Daemon address HOST:PORT, or unix:/PATH (Unix socket)")
      ->envname("KVSTASH_ADDR")
      ->capture_default_str();
  app.add_option("--timeout", g.timeout_s, "Deadline of each call, seconds")
      ->capture_default_str();
  app.add_flag("--json", g.json, "Print one JSON object per command on stdout");
  app.add_option("-n,--namespace", g.ns, "Key namespace")->capture_default_str();
  AddSecurityFlags(app, &g.security);

  // put
  PutArgs pa;
  CLI::App* put = app.add_subcommand("put", "Store one chunk");
  put->add_option("--key", pa.key_hex, "Chunk key, 32 hex digits");
  put->add_option("--tokens", pa.tokens,
                  "Token ids of the chunk (1,2,3 or 0-255): derives the key with the chain "
                  "function; T = number of tokens");
  put->add_option("--prev", pa.prev_hex, "Key of the previous chunk of the chain (with --tokens)");
  put->add_option("--file", pa.file, "Raw 16-bit payload [L][2][T][H][D] (needs --layout)");
  put->add_option("--npy", pa.npy, ".npy payload: '<f2' (fp16), '<u2'/'V2' with --dtype bf16");
  put->add_option("--generate", pa.generate,
                  "Synthetic payload for a model: llama-3-8b, mistral-7b, qwen2.5-7b");
  put->add_option("--layout", pa.layout, "Geometry L,T,H,D of a raw file or flat .npy");
  pa.o_dtype = put->add_option("--dtype", pa.dtype, "Payload dtype: fp16 (default) or bf16");
  pa.o_layers = put->add_option("--layers", pa.layers, "--generate: number of layers");
  pa.o_heads = put->add_option("--heads", pa.heads, "--generate: number of KV heads");
  pa.o_head_dim = put->add_option("--head-dim", pa.head_dim, "--generate: head dimension");
  pa.o_num_tokens =
      put->add_option("--num-tokens", pa.num_tokens,
                      "--generate: tokens per chunk (default 256, or the --tokens count)");
  put->add_option("--seed", pa.seed, "--generate: random seed")->capture_default_str();
  put->add_option("--save", pa.save, "Also write the payload to FILE (.npy by extension)");
  put->add_option("--preset", pa.preset, "Codec preset: fp16, kivi-2, asymkv-1.5, xquant")
      ->capture_default_str();
  pa.o_kq = put->add_option("--kq", pa.kq, "Custom codec: layers [0,kq) use 2-bit keys");
  pa.o_vq = put->add_option("--vq", pa.vq, "Custom codec: layers [0,vq) use 2-bit values");
  pa.o_km = put->add_option("--km", pa.km, "Custom codec: odd layers >= km share key codes");
  pa.o_vm = put->add_option("--vm", pa.vm, "Custom codec: odd layers >= vm share value codes");
  pa.o_eta1 = put->add_option("--eta1", pa.eta1, "Custom codec: 1-bit calibration [0,0.5)");
  pa.o_eta2 = put->add_option("--eta2", pa.eta2, "Custom codec: 2-bit calibration [0,0.5)");

  // get
  GetArgs ga;
  CLI::App* get = app.add_subcommand("get", "Fetch and decode one chunk");
  get->add_option("--key", ga.key_hex, "Chunk key, 32 hex digits")->required();
  get->add_option("--layers", ga.layers, "Layer range A:B (B exclusive; A: = to the last)");
  get->add_option("--heads", ga.heads, "Head range A:B");
  get->add_option("--dtype", ga.dtype, "Output dtype fp16 or bf16 (default: the chunk's)");
  get->add_option("-o,--output", ga.output, "Write the data to FILE (raw, or .npy by extension)");
  get->add_option("--compare", ga.compare,
                  "Print max abs / relative RMS error against an original raw (or .npy) file");

  // lookup
  LookupArgs la;
  CLI::App* lookup = app.add_subcommand("lookup", "How many leading chunks of a chain are stored");
  lookup->add_option("keys", la.keys, "Chain of keys, 32 hex digits each");
  lookup->add_option("--tokens", la.tokens, "Token ids; keys are derived per --chunk-tokens");
  lookup->add_option("--chunk-tokens", la.chunk_tokens, "Tokens per chunk")
      ->capture_default_str();

  // rm
  std::vector<std::string> rm_keys;
  CLI::App* rm = app.add_subcommand("rm", "Delete chunks");
  rm->add_option("keys", rm_keys, "Keys, 32 hex digits each")->required();

  CLI::App* stats = app.add_subcommand("stats", "Daemon statistics");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }

  if (put->parsed()) return RunPut(g, pa);
  if (get->parsed()) return RunGet(g, ga);
  if (lookup->parsed()) return RunLookup(g, la);
  if (rm->parsed()) return RunRm(g, rm_keys);
  if (stats->parsed()) return RunStats(g);
  return kExitUsage;
}

}  // namespace
}  // namespace kvstash::cli

int main(int argc, char** argv) { return kvstash::cli::Main(argc, argv); }
