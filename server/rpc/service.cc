#include "server/rpc/service.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "kvstash/kernels/codec.h"
#include "kvstash/kernels/format.h"
#include "kvstash/kernels/half.h"
#include "server/rpc/paged.h"
#include "server/rpc/status.h"
#include "spdlog/spdlog.h"

#ifndef KVSTASH_VERSION
#define KVSTASH_VERSION "unknown"
#endif

namespace kvstash::rpc {

namespace {

using kernels::ChunkShape;
using kernels::CodecConfig;
using kernels::DType;

// fmt cannot format absl::string_view (not absl::string_view in this Abseil).
std::string Str(absl::string_view s) { return std::string(s); }

std::string KeyString(const v1::ChunkKey& key) {
  return absl::StrCat(absl::Hex(key.hi(), absl::kZeroPad16), absl::Hex(key.lo(), absl::kZeroPad16));
}

store::ChunkKey ToStoreKey(const v1::ChunkKey& key) { return {key.hi(), key.lo()}; }

// True when `message` starts with a field path ("shape.head_dim: ...", "data[3]: ...").
bool LooksFieldNamed(absl::string_view message) {
  size_t i = 0;
  while (i < message.size() &&
         (std::isalnum(static_cast<unsigned char>(message[i])) || message[i] == '_'))
    ++i;
  if (message.substr(0, i) == "store") return false;  // the store's own voice, not a field
  return i > 0 && i < message.size() && (message[i] == ':' || message[i] == '.' || message[i] == '[');
}

// The engine names fields after its own structs; the wire calls them differently.
std::string EngineToWireFields(absl::string_view message) {
  struct Rename {
    absl::string_view from, to;
  };
  static constexpr Rename kRenames[] = {
      {"shape.dtype", "dtype"},   {"shape.", "layout."},   {"config.", "codec.custom."},
      {"layer_range", "layers"}, {"head_range", "heads"},     {"input:", "data:"},
  };
  for (const Rename& r : kRenames) {
    if (message.substr(0, r.from.size()) == r.from)
      return absl::StrCat(r.to, message.substr(r.from.size()));
  }
  return std::string(message);
}

// Keeps the code; puts `prefix` (e.g. "chunks[2]") before the engine's message, joined by
// '.' when that message names a field and by ": " otherwise.
absl::Status WithPrefix(absl::string_view prefix, const absl::Status& status) {
  const absl::string_view message = status.message();
  const std::string joined = LooksFieldNamed(message)
                                 ? absl::StrCat(prefix, ".", EngineToWireFields(message))
                                 : absl::StrCat(prefix, ": ", message);
  return absl::Status(status.code(), joined);
}

absl::Status ValidateNamespace(const std::string& ns, absl::string_view field,
                               const ServiceOptions& options) {
  if (ns.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty"));
  if (ns.size() > options.max_namespace_bytes)
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", ns.size(),
                                                   " bytes, longer than the limit of ",
                                                   options.max_namespace_bytes));
  return absl::OkStatus();
}

absl::Status ValidateKeys(const google::protobuf::RepeatedPtrField<v1::ChunkKey>& keys) {
  if (keys.empty()) return absl::InvalidArgumentError("keys: empty");
  return absl::OkStatus();
}

absl::Status ValidateRange(const v1::Range& range, absl::string_view field) {
  if (range.end() != 0 && range.begin() >= range.end())
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": [", range.begin(), ", ", range.end(), ") is empty"));
  return absl::OkStatus();
}

ChunkShape ToShape(const v1::Layout& layout, v1::DType dtype) {
  ChunkShape s;
  s.num_layers = layout.num_layers();
  s.num_tokens = layout.num_tokens();
  s.num_heads = layout.num_heads();
  s.head_dim = layout.head_dim();
  s.dtype = static_cast<DType>(dtype);
  return s;
}

// REQUIRES: the chunk passed ValidatePutRequest.
CodecConfig ToCodecConfig(const v1::Codec& codec, uint32_t num_layers) {
  if (codec.kind_case() == v1::Codec::kPreset)
    return kernels::PresetConfig(static_cast<kernels::Preset>(codec.preset()), num_layers);
  const v1::CodecConfig& c = codec.custom();
  CodecConfig out;
  out.raw = false;
  out.k_q = c.k_q();
  out.v_q = c.v_q();
  out.k_m = c.k_m();
  out.v_m = c.v_m();
  out.eta1 = c.eta1();
  out.eta2 = c.eta2();
  out.preset = kernels::Preset::kCustom;
  return out;
}

void ToProto(const store::ChunkInfo& in, v1::ChunkInfo* out) {
  v1::Layout* layout = out->mutable_layout();
  layout->set_num_layers(in.shape.num_layers);
  layout->set_num_tokens(in.shape.num_tokens);
  layout->set_num_heads(in.shape.num_heads);
  layout->set_head_dim(in.shape.head_dim);
  out->set_dtype(static_cast<v1::DType>(in.shape.dtype));
  out->set_preset(in.config.preset == kernels::Preset::kCustom
                      ? v1::PRESET_UNSPECIFIED
                      : static_cast<v1::Preset>(in.config.preset));
  v1::CodecConfig* config = out->mutable_config();
  config->set_k_q(in.config.k_q);
  config->set_v_q(in.config.v_q);
  config->set_k_m(in.config.k_m);
  config->set_v_m(in.config.v_m);
  config->set_eta1(in.config.eta1);
  config->set_eta2(in.config.eta2);
  out->set_logical_bytes(in.logical_bytes);
  out->set_stored_bytes(in.stored_bytes);
  out->set_equivalent_bits(in.equivalent_bits);
  out->set_true_bits(in.true_bits);
}

absl::Status ValidatePutChunk(const v1::PutChunk& chunk, const std::string& p,
                              const ServiceOptions& options) {
  if (absl::Status s = ValidateNamespace(chunk.namespace_(), absl::StrCat(p, ".namespace"), options);
      !s.ok())
    return s;
  if (!chunk.has_key()) return absl::InvalidArgumentError(absl::StrCat(p, ".key: unset"));
  if (!chunk.has_layout()) return absl::InvalidArgumentError(absl::StrCat(p, ".layout: unset"));

  if (chunk.dtype() == v1::DTYPE_UNSPECIFIED)
    return absl::InvalidArgumentError(
        absl::StrCat(p, ".dtype: unspecified (want DTYPE_FP16 or DTYPE_BF16)"));
  if (!v1::DType_IsValid(chunk.dtype()))
    return absl::InvalidArgumentError(
        absl::StrCat(p, ".dtype: unknown value ", static_cast<int>(chunk.dtype())));

  const ChunkShape shape = ToShape(chunk.layout(), chunk.dtype());
  if (absl::Status s = kernels::ValidateShape(shape); !s.ok()) return WithPrefix(p, s);

  const v1::Codec& codec = chunk.codec();
  switch (codec.kind_case()) {
    case v1::Codec::KIND_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrCat(p, ".codec: neither preset nor custom set"));
    case v1::Codec::kPreset:
      if (codec.preset() == v1::PRESET_UNSPECIFIED)
        return absl::InvalidArgumentError(absl::StrCat(
            p, ".codec.preset: unspecified (want PRESET_FP16, PRESET_KIVI_2, "
               "PRESET_ASYMKV_1_5 or PRESET_XQUANT)"));
      if (!v1::Preset_IsValid(codec.preset()))
        return absl::InvalidArgumentError(absl::StrCat(p, ".codec.preset: unknown value ",
                                                       static_cast<int>(codec.preset())));
      break;
    case v1::Codec::kCustom:
      break;
  }
  const CodecConfig config = ToCodecConfig(codec, shape.num_layers);
  if (absl::Status s = kernels::ValidateConfig(shape, config); !s.ok()) {
    if (codec.kind_case() == v1::Codec::kPreset)  // a preset is valid for every shape
      return absl::InternalError(absl::StrCat(p, ".codec.preset: ", s.message()));
    return WithPrefix(p, s);
  }

  const uint64_t expected = shape.payload_bytes();
  if (chunk.has_data_paged()) {
    if (!chunk.data().empty() || chunk.has_data_region())
      return absl::InvalidArgumentError(absl::StrCat(
          p, ".data_paged: set together with data or data_region (give one)"));
    return absl::OkStatus();  // checked against its regions by ResolvePaged
  }
  if (chunk.has_data_region()) {
    if (!chunk.data().empty())
      return absl::InvalidArgumentError(
          absl::StrCat(p, ".data: set together with data_region (give one)"));
    if (chunk.data_region().length() != expected)
      return absl::InvalidArgumentError(absl::StrCat(
          p, ".data_region.length: ", chunk.data_region().length(), " bytes, expected ",
          expected, " for this layout and dtype"));
    return absl::OkStatus();
  }
  if (chunk.data().size() != expected)
    return absl::InvalidArgumentError(absl::StrCat(p, ".data: ", chunk.data().size(),
                                                   " bytes, expected ", expected,
                                                   " for this layout and dtype"));
  return absl::OkStatus();
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

absl::StatusOr<RegionPin> PinRef(RegionRegistry* regions, std::string_view ns,
                                 const v1::RegionRef& ref, const std::string& field) {
  if (regions == nullptr)
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": shared-memory regions are not available in this service"));
  return regions->Acquire(ns, ref.region_id(), ref.token(), ref.offset(), ref.length(), field);
}

constexpr uint64_t AlignUp64(uint64_t x) { return (x + 63) & ~uint64_t{63}; }

// Wire bytes of a length-delimited field of `n` bytes whose tag takes one byte (field
// numbers below 16, as every GetResponse and GetResult field).
uint64_t FramedBytes(uint64_t n) {
  return 1 + google::protobuf::io::CodedOutputStream::VarintSize64(n) + n;
}

// A chunk whose payload is in a region, checked before anything is allocated for it: the
// store must be able to hold it (its encoded size within the largest tier; the store would
// refuse it only after the payload was gathered), and a payload copied out of shared
// memory (`copied`) must be within the per-request budget, max_message_bytes, as a payload
// in the message is. A paged layout names a chunk of any size in a small request (every
// block id 0 fits a one-row plane), so neither bound may be left to the client.
// `capacity` caches the store's capacity for the request.
absl::Status CheckRegionSource(store::Store& store, const ServiceOptions& options,
                               const ChunkShape& shape, const CodecConfig& config, bool copied,
                               const std::string& p, std::optional<uint64_t>* capacity) {
  absl::StatusOr<kernels::ChunkLayout> layout = kernels::MakeLayout(shape, config);
  if (!layout.ok()) return WithPrefix(p, layout.status());
  if (!capacity->has_value()) {
    const store::StoreStats st = store.Stats();
    uint64_t bytes = st.capacity_bytes;
    for (const store::GpuTierStats& g : st.gpus) bytes = std::max(bytes, g.capacity_bytes);
    *capacity = bytes;
  }
  if (layout->total_bytes > **capacity)
    return absl::ResourceExhaustedError(absl::StrCat(
        p, ": the chunk encodes to ", layout->total_bytes,
        " bytes, more than the store holds (", **capacity, " bytes)"));
  if (copied && shape.payload_bytes() > options.max_message_bytes)
    return absl::ResourceExhaustedError(absl::StrCat(
        p, ": the payload is ", shape.payload_bytes(),
        " bytes, over the per-request budget for a payload copied out of shared memory "
        "(max_message_bytes, ", options.max_message_bytes, "); split the chunk by tokens"));
  return absl::OkStatus();
}

}  // namespace

// --- Validation ---------------------------------------------------------------------------

absl::Status ValidatePutRequest(const v1::PutRequest& request, const ServiceOptions& options) {
  if (request.chunks().empty()) return absl::InvalidArgumentError("chunks: empty");
  for (int i = 0; i < request.chunks_size(); ++i) {
    if (absl::Status s = ValidatePutChunk(request.chunks(i), absl::StrCat("chunks[", i, "]"), options);
        !s.ok())
      return s;
  }
  return absl::OkStatus();
}

absl::Status ValidateGetRequest(const v1::GetRequest& request, const ServiceOptions& options) {
  if (absl::Status s = ValidateNamespace(request.namespace_(), "namespace", options); !s.ok())
    return s;
  if (absl::Status s = ValidateKeys(request.keys()); !s.ok()) return s;
  if (absl::Status s = ValidateRange(request.layers(), "layers"); !s.ok()) return s;
  if (absl::Status s = ValidateRange(request.heads(), "heads"); !s.ok()) return s;
  if (!v1::DType_IsValid(request.output_dtype()))
    return absl::InvalidArgumentError(
        absl::StrCat("output_dtype: unknown value ", static_cast<int>(request.output_dtype())));
  return absl::OkStatus();
}

absl::Status ValidateLookupRequest(const v1::LookupRequest& request,
                                   const ServiceOptions& options) {
  if (absl::Status s = ValidateNamespace(request.namespace_(), "namespace", options); !s.ok())
    return s;
  return ValidateKeys(request.keys());
}

absl::Status ValidateDeleteRequest(const v1::DeleteRequest& request,
                                   const ServiceOptions& options) {
  if (absl::Status s = ValidateNamespace(request.namespace_(), "namespace", options); !s.ok())
    return s;
  return ValidateKeys(request.keys());
}

// --- Handlers -----------------------------------------------------------------------------

absl::Status HandlePut(store::Store& store, const ServiceOptions& options,
                       const v1::PutRequest& request, v1::PutResponse* response,
                       RegionRegistry* regions) {
  if (absl::Status s = ValidatePutRequest(request, options); !s.ok()) return s;
  const int n = request.chunks_size();

  // Every region is pinned (checked: token, namespace, bounds, size) before anything is
  // stored, and stays mapped until the call ends even if it is unregistered meanwhile.
  // A source in device memory (CUDA IPC) is read by the encode kernels in place, and so is
  // a data_region in shared memory: the store asks (PutOptions::verify_source) whether the
  // region faulted during the encoder's read (a file truncated under the request: SIGBUS,
  // caught by the registry's guard) before it publishes anything, so no stored chunk holds
  // bytes the file lost. A paged cache in shared memory is gathered into the daemon's
  // memory first, one chunk at a time, and stored from that copy only when no plane
  // faulted; that copy is the only buffer a Put sizes from its request, so it is bounded
  // before it is allocated (CheckRegionSource). A chunk is whole even when the client
  // writes the range concurrently (it then gets what the encoder read).
  std::vector<RegionPin> pins(n);
  std::vector<std::optional<ResolvedPaged>> paged(n);
  std::vector<std::optional<store::DeviceTensor>> device(n);
  std::vector<char> from_shm(n, 0);
  std::optional<uint64_t> capacity;
  for (int i = 0; i < n; ++i) {
    const v1::PutChunk& c = request.chunks(i);
    const std::string p = absl::StrCat("chunks[", i, "]");
    const ChunkShape shape = ToShape(c.layout(), c.dtype());
    if (c.has_data_paged()) {
      absl::StatusOr<ResolvedPaged> r =
          ResolvePaged(regions, c.namespace_(), c.data_paged(), shape.num_layers,
                       shape.num_tokens, shape.num_heads, shape.head_dim,
                       absl::StrCat(p, ".data_paged"));
      if (!r.ok()) return r.status();
      paged[i] = *std::move(r);
      if (paged[i]->on_device()) {
        device[i] = paged[i]->Window(0, shape.num_tokens);
      } else {
        from_shm[i] = 1;
      }
    } else if (c.has_data_region()) {
      absl::StatusOr<RegionPin> pin =
          PinRef(regions, c.namespace_(), c.data_region(), absl::StrCat(p, ".data_region"));
      if (!pin.ok()) return pin.status();
      pins[i] = std::move(*pin);
      if (pins[i].on_device()) {
        if (c.data_region().offset() % 16 != 0)
          return absl::InvalidArgumentError(absl::StrCat(
              p, ".data_region.offset: ", c.data_region().offset(),
              " is not a multiple of 16 (required in device memory)"));
        store::DeviceTensor d;
        d.tier = pins[i].tier();
        d.data = pins[i].data();
        d.capacity = pins[i].size();
        device[i] = std::move(d);
      } else {
        from_shm[i] = 1;
      }
    } else {
      continue;  // the payload is in the message, which gRPC already bounded
    }
    if (absl::Status s = CheckRegionSource(store, options, shape,
                                           ToCodecConfig(c.codec(), shape.num_layers),
                                           from_shm[i] != 0 && paged[i].has_value(), p,
                                           &capacity);
        !s.ok())
      return s;
  }

  // The gathered copy of a paged cache in shared memory (one buffer, reused chunk after
  // chunk; not zero-filled: every byte is written), checked for faults after the copy.
  std::unique_ptr<uint8_t[]> staging;
  uint64_t staging_bytes = 0;
  auto copy_in = [&](int i) -> absl::StatusOr<std::span<const uint8_t>> {
    const v1::PutChunk& c = request.chunks(i);
    const ChunkShape shape = ToShape(c.layout(), c.dtype());
    const uint64_t bytes = shape.payload_bytes();
    const std::string p = absl::StrCat("chunks[", i, "]");
    if (bytes > staging_bytes) {
      staging.reset();
      staging_bytes = 0;
      staging.reset(new (std::nothrow) uint8_t[bytes]);
      if (staging == nullptr)
        return absl::ResourceExhaustedError(absl::StrCat(
            p, ": the daemon cannot allocate ", bytes,
            " bytes to copy the payload out of shared memory"));
      staging_bytes = bytes;
    }
    GatherHost(paged[i]->Window(0, shape.num_tokens), shape.num_layers, shape.num_tokens,
               staging.get());
    for (const RegionPin& pin : paged[i]->pins) {
      if (absl::Status s = pin.CheckNotFaulted(absl::StrCat(p, ".data_paged")); !s.ok())
        return s;
    }
    return std::span<const uint8_t>(staging.get(), bytes);
  };
  // Names what stays stored when chunk i fails after chunks [0, i) were stored.
  auto after_stored = [](const absl::Status& s, int i) {
    if (i == 0) return s;
    return absl::Status(s.code(), absl::StrCat(s.message(), " (chunks [0, ", i,
                                               ") of this request are stored)"));
  };

  // Values are checked here too so that a NaN in chunk 5 stores nothing at all. A lone
  // chunk needs no pre-scan: the store validates before it changes anything. Device
  // sources are checked by the encode kernels only (docs/api.md: earlier chunks stay).
  // A data_region is scanned in place (a fault there is seen by the copy's check); a paged
  // cache is gathered for the scan and again to be stored.
  if (n > 1) {
    for (int i = 0; i < n; ++i) {
      if (device[i]) continue;
      const v1::PutChunk& c = request.chunks(i);
      const ChunkShape shape = ToShape(c.layout(), c.dtype());
      std::span<const uint8_t> payload = Bytes(c.data());
      if (paged[i]) {
        absl::StatusOr<std::span<const uint8_t>> copied = copy_in(i);
        if (!copied.ok()) return copied.status();
        payload = *copied;
      } else if (from_shm[i]) {
        payload = {pins[i].data(), pins[i].size()};
      }
      if (absl::Status s = kernels::ValidateInput(
              shape, reinterpret_cast<const uint16_t*>(payload.data()));
          !s.ok())
        return WithPrefix(absl::StrCat("chunks[", i, "]"), s);
      if (from_shm[i] && !paged[i]) {
        if (absl::Status s = pins[i].CheckNotFaulted(absl::StrCat("chunks[", i, "].data_region"));
            !s.ok())
          return s;
      }
    }
  }

  response->mutable_results()->Reserve(n);
  for (int i = 0; i < n; ++i) {
    const v1::PutChunk& c = request.chunks(i);
    const ChunkShape shape = ToShape(c.layout(), c.dtype());
    const CodecConfig config = ToCodecConfig(c.codec(), shape.num_layers);
    std::span<const uint8_t> payload = Bytes(c.data());
    store::PutOptions put_options;
    if (from_shm[i] && !paged[i]) {
      // Zero-copy: the encoder reads the mapping; the store asks whether the region faulted
      // during that read before it charges, allocates or publishes anything.
      payload = {pins[i].data(), pins[i].size()};
      const RegionPin* pin = &pins[i];
      put_options.verify_source = [pin, i] {
        return pin->CheckNotFaulted(absl::StrCat("chunks[", i, "].data_region"));
      };
    } else if (from_shm[i]) {
      absl::StatusOr<std::span<const uint8_t>> copied = copy_in(i);
      if (!copied.ok()) return after_stored(copied.status(), i);
      payload = *copied;
    }
    absl::StatusOr<store::ChunkInfo> info =
        device[i] ? store.PutDevice(c.namespace_(), ToStoreKey(c.key()), shape, config, *device[i])
                  : store.Put(c.namespace_(), ToStoreKey(c.key()), shape, config, payload,
                              put_options);
    if (!info.ok())
      return after_stored(WithPrefix(absl::StrCat("chunks[", i, "]"), info.status()), i);
    v1::PutResult* result = response->add_results();
    *result->mutable_key() = c.key();
    ToProto(*info, result->mutable_info());
    result->set_replaced(info->replaced);
  }
  return absl::OkStatus();
}

absl::Status HandleGet(store::Store& store, const ServiceOptions& options,
                       const v1::GetRequest& request, v1::GetResponse* response,
                       RegionRegistry* regions) {
  if (absl::Status s = ValidateGetRequest(request, options); !s.ok()) return s;
  if (request.has_output_region() && request.has_output_paged())
    return absl::InvalidArgumentError(
        "output_paged: set together with output_region (give one)");
  const bool to_region = request.has_output_region();
  const bool to_paged = request.has_output_paged();
  const std::string& ns = request.namespace_();
  const int n = request.keys_size();

  // The smallest the response can be (every key missing, each result echoing its key),
  // from the request alone: a Get over the limit whatever is stored is refused before any
  // per-key state is allocated.
  {
    uint64_t least = 0;
    for (const v1::ChunkKey& key : request.keys())
      least += FramedBytes(FramedBytes(key.ByteSizeLong()));  // GetResult{key}
    if (least > options.max_message_bytes)
      return absl::ResourceExhaustedError(absl::StrCat(
          "response would be at least ", least, " bytes for ", n, " keys, ",
          least - options.max_message_bytes, " bytes over max_message_bytes (",
          options.max_message_bytes, "); ask for fewer keys per Get"));
  }

  RegionPin out_pin;
  if (to_region) {
    absl::StatusOr<RegionPin> pin =
        PinRef(regions, ns, request.output_region(), "output_region");
    if (!pin.ok()) return pin.status();
    out_pin = std::move(*pin);
  }
  const uint64_t region_begin = request.output_region().offset();
  const kernels::Slice slice{request.layers().begin(), request.layers().end(),
                             request.heads().begin(), request.heads().end()};
  // Unset: each chunk's own, resolved by the store from the version it reads, so that a
  // result's info, dtype and bytes always come from one version of its chunk.
  const DType requested = static_cast<DType>(request.output_dtype());

  // Pass 1: size the response from the chunks' shapes before decoding a byte, so an
  // oversized Get fails fast instead of after seconds of decoding. Each result is sized
  // exactly as pass 2 builds it (all but its data, built here in `probe`), so the check is
  // neither optimistic nor refuses a response that fits; only a chunk replaced between
  // the passes can change it (checked again at the end).
  std::vector<std::optional<store::ChunkInfo>> described(n);
  std::vector<uint64_t> result_bytes(n, 0);
  uint64_t total = 0;
  uint64_t region_used = 0;  // with output_region: bytes from its offset to the last end
  uint64_t paged_tokens = 0;  // with output_paged: its geometry, from the first result
  uint32_t paged_layers = 0, paged_heads = 0, paged_head_dim = 0;
  uint64_t largest = 0;       // bytes of the largest decoded slice
  v1::GetResult probe;
  for (int i = 0; i < n; ++i) {
    const v1::ChunkKey& key = request.keys(i);
    probe.Clear();
    *probe.mutable_key() = key;
    absl::StatusOr<store::ChunkInfo> info = store.Describe(ns, ToStoreKey(key));
    if (!info.ok()) {
      if (info.status().code() != absl::StatusCode::kNotFound)
        return WithPrefix(absl::StrCat("keys[", i, "]"), info.status());
      if (!request.allow_missing())
        return absl::NotFoundError(absl::StrCat("keys[", i, "]: chunk ", KeyString(key),
                                                " not found in namespace '", ns, "'"));
      total += FramedBytes(probe.ByteSizeLong());
      continue;
    }
    const ChunkShape& shape = info->shape;
    const uint32_t layer_end = slice.layer_end == 0 ? shape.num_layers : slice.layer_end;
    const uint32_t head_end = slice.head_end == 0 ? shape.num_heads : slice.head_end;
    if (slice.layer_begin >= shape.num_layers || layer_end > shape.num_layers)
      return absl::InvalidArgumentError(absl::StrCat(
          "layers: [", slice.layer_begin, ", ", layer_end, ") is outside the ",
          shape.num_layers, " layers of the chunk at keys[", i, "]"));
    if (slice.head_begin >= shape.num_heads || head_end > shape.num_heads)
      return absl::InvalidArgumentError(absl::StrCat(
          "heads: [", slice.head_begin, ", ", head_end, ") is outside the ", shape.num_heads,
          " heads of the chunk at keys[", i, "]"));
    absl::StatusOr<kernels::Slice> resolved = kernels::ResolveSlice(shape, slice);
    if (!resolved.ok()) return WithPrefix(absl::StrCat("keys[", i, "]"), resolved.status());
    const uint64_t bytes = kernels::DecodedBytes(shape, *resolved);
    result_bytes[i] = bytes;
    largest = std::max(largest, bytes);
    probe.set_found(true);
    ToProto(*info, probe.mutable_info());
    probe.set_dtype(static_cast<v1::DType>(requested == DType::kUnspecified ? shape.dtype
                                                                            : requested));
    uint64_t data_field = 0;  // the data field's bytes when the data travels in the message
    if (to_paged) {
      const uint32_t hs = resolved->head_end - resolved->head_begin;
      const uint32_t ls = resolved->layer_end - resolved->layer_begin;
      if (paged_layers != 0 &&
          (ls != paged_layers || hs != paged_heads || shape.head_dim != paged_head_dim))
        return absl::InvalidArgumentError(absl::StrCat(
            "output_paged: the slice of keys[", i, "] has ", ls, " layers of ", hs,
            " heads of ", shape.head_dim, ", an earlier one ", paged_layers, " of ",
            paged_heads, " of ", paged_head_dim, "; one paged cache takes one geometry"));
      paged_layers = ls;
      paged_heads = hs;
      paged_head_dim = shape.head_dim;
      probe.set_first_token(paged_tokens);
      paged_tokens += shape.num_tokens;
    } else if (to_region) {
      probe.set_region_offset(region_begin + AlignUp64(region_used));
      region_used = AlignUp64(region_used) + bytes;
    } else if (bytes > 0) {
      data_field = FramedBytes(bytes);
    }
    total += FramedBytes(probe.ByteSizeLong() + data_field);
    described[i] = *info;
  }
  std::optional<ResolvedPaged> out_paged;
  if (to_paged && paged_tokens > 0) {
    absl::StatusOr<ResolvedPaged> r =
        ResolvePaged(regions, ns, request.output_paged(), paged_layers, paged_tokens,
                     paged_heads, paged_head_dim, "output_paged");
    if (!r.ok()) return r.status();
    out_paged = *std::move(r);
    // In shared memory each result is decoded into a staging buffer of the daemon's, then
    // scattered: bounded like a result in the message.
    if (!out_paged->on_device() && largest > options.max_message_bytes)
      return absl::ResourceExhaustedError(absl::StrCat(
          "output_paged: a result decodes to ", largest,
          " bytes, staged in the daemon's memory before it is scattered into shared "
          "memory: over the per-request budget of max_message_bytes (",
          options.max_message_bytes, "); ask for a layer range (layers)"));
  } else if (to_paged) {
    // No key found: nothing will be written, but the layout and the ownership of its
    // regions are checked all the same.
    if (absl::Status s = CheckPagedRefs(regions, ns, request.output_paged(), "output_paged");
        !s.ok())
      return s;
  }
  if (to_region && region_used > out_pin.size())
    return absl::InvalidArgumentError(absl::StrCat(
        "output_region.length: ", out_pin.size(), " bytes, but the ", n,
        " results need ", region_used,
        " (each starts at a multiple of 64 bytes)"));
  if (total > options.max_message_bytes)
    return absl::ResourceExhaustedError(absl::StrCat(
        "response would be ", total, " bytes for ", n, " keys, ",
        total - options.max_message_bytes, " bytes over max_message_bytes (",
        options.max_message_bytes, "); ask for fewer keys per Get or a layer range (layers)"));

  // Pass 2: decode each slice straight into its result's bytes field (or the region).
  // Host outputs are decoded in key order as they are planned (their offsets depend on
  // the sizes before them). Device outputs (CUDA IPC regions and paged caches) have
  // their windows fixed by pass 1, so they are decoded concurrently afterwards, each on
  // its own GPU worker stream: a prefix restore of many chunks from the host tier overlaps
  // the chunks' PCIe copies, checksums and decodes instead of running them one by one.
  response->mutable_results()->Reserve(n);
  uint64_t cursor = 0;      // output_region: bytes used from its offset
  uint64_t token_at = 0;    // output_paged: tokens placed
  // Bytes the results' data may still take: a chunk replaced since pass 1 by a larger one
  // gets no memory (ResourceExhausted) rather than an allocation of its size.
  uint64_t data_left = options.max_message_bytes;
  // output_paged in shared memory: `largest` bytes to decode a result into before it is
  // scattered; kept by the worker thread for the next Get up to kKeptScatterBytes.
  constexpr uint64_t kKeptScatterBytes = 64ull << 20;
  thread_local std::unique_ptr<uint8_t[]> kept_scatter;
  thread_local uint64_t kept_scatter_bytes = 0;
  std::unique_ptr<uint8_t[]> own_scatter;  // a larger one, freed with the call
  uint8_t* scatter = nullptr;
  std::vector<std::optional<absl::StatusOr<store::ChunkInfo>>> infos(n);
  struct DeviceRead {
    int index;
    store::DeviceTensor window;
  };
  std::vector<DeviceRead> device_reads;
  for (int i = 0; i < n; ++i) {
    const v1::ChunkKey& key = request.keys(i);
    v1::GetResult* result = response->add_results();
    *result->mutable_key() = key;
    // A key missing in pass 1 is still asked for (it counts as a miss, or was stored
    // meanwhile and then reports its dtype below).
    store::OutputAllocator alloc = [result, &data_left](uint64_t bytes) -> uint8_t* {
      if (bytes > data_left) return nullptr;
      data_left -= bytes;
      std::string* data = result->mutable_data();
      data->resize(bytes);
      return reinterpret_cast<uint8_t*>(data->data());
    };
    if (to_region) {
      // Consecutive 64-byte-aligned offsets; a chunk replaced by a larger one since pass 1
      // gets null (ResourceExhausted from the store) rather than a write past the range.
      alloc = [&, result](uint64_t bytes) -> uint8_t* {
        const uint64_t at = AlignUp64(cursor);  // relative to output_region.offset
        if (bytes > out_pin.size() || at > out_pin.size() - bytes) return nullptr;
        cursor = at + bytes;
        result->set_region_offset(region_begin + at);
        return out_pin.data() + at;
      };
    }
    std::optional<absl::StatusOr<store::ChunkInfo>>& info = infos[i];
    std::optional<store::DeviceTensor> window;
    const uint32_t tokens = described[i] ? described[i]->shape.num_tokens : 0;
    if (out_paged && described[i]) {
      // The chunk was there in pass 1: its tokens take their slots whether or not it is
      // still there now.
      window = out_paged->Window(token_at, tokens);
      result->set_first_token(token_at);
      token_at += tokens;
    } else if (to_paged) {
      window = store::DeviceTensor();  // absent in pass 1: takes no slots
    } else if (to_region && out_pin.on_device()) {
      const uint64_t at = AlignUp64(cursor);
      window = store::DeviceTensor();
      window->tier = out_pin.tier();
      window->data = out_pin.data() + std::min(at, out_pin.size());
      window->capacity = at < out_pin.size() ? out_pin.size() - at : 0;
      if (described[i]) {
        cursor = at + result_bytes[i];
        result->set_region_offset(region_begin + at);
      }
    }
    if (!window) {
      info = store.Get(ns, ToStoreKey(key), slice, requested, alloc);
    } else if (to_paged && !described[i]) {
      info = absl::NotFoundError("absent in pass 1");
    } else if (window->tier >= 0) {
      device_reads.push_back({i, *std::move(window)});  // decoded below, concurrently
    } else {
      // Shared-memory paged cache: decode, then scatter the rows into the blocks.
      const uint64_t rows_bytes = uint64_t{paged_layers} * 2 * tokens * window->row_bytes();
      if (scatter == nullptr && largest <= kept_scatter_bytes) scatter = kept_scatter.get();
      if (scatter == nullptr) {
        std::unique_ptr<uint8_t[]> buffer(new (std::nothrow) uint8_t[largest]);
        if (buffer == nullptr)
          return absl::ResourceExhaustedError(absl::StrCat(
              "output_paged: the daemon cannot allocate ", largest,
              " bytes to stage a result"));
        scatter = buffer.get();
        if (largest <= kKeptScatterBytes) {
          kept_scatter = std::move(buffer);
          kept_scatter_bytes = largest;
        } else {
          own_scatter = std::move(buffer);
        }
      }
      info = store.Get(ns, ToStoreKey(key), slice, requested, [&](uint64_t bytes) -> uint8_t* {
        if (bytes != rows_bytes || bytes > largest) return nullptr;  // another geometry
        return scatter;
      });
      if (info->ok()) ScatterHost(*window, paged_layers, tokens, scatter);
    }
  }
  // First the store batches what it can (a restore of host-tier chunks into a CUDA IPC
  // region or a paged cache on the GPU: one worker, the copies of all chunks in flight at
  // once on two copy streams, decodes behind them); the rest run concurrently below. Each
  // device read writes its own disjoint window (a key absent in pass 1 has none and is
  // not asked for; one deleted since keeps its slots, unwritten) and its own infos[] slot.
  if (device_reads.size() > 1) {
    std::vector<store::ChunkKey> keys;
    std::vector<DType> dtypes;
    std::vector<store::DeviceTensor> windows;
    std::vector<std::optional<absl::StatusOr<store::ChunkInfo>>> batched(device_reads.size());
    for (const DeviceRead& d : device_reads) {
      keys.push_back(ToStoreKey(request.keys(d.index)));
      dtypes.push_back(requested);
      windows.push_back(d.window);
    }
    store.GetDeviceMany(ns, keys, slice, dtypes, windows, batched);
    std::vector<DeviceRead> rest;
    for (size_t j = 0; j < device_reads.size(); ++j) {
      if (batched[j]) {
        infos[device_reads[j].index] = *std::move(batched[j]);
      } else {
        rest.push_back(std::move(device_reads[j]));
      }
    }
    device_reads = std::move(rest);
  }
  // At most kMaxDeviceReadThreads threads per Get (the GPU tier bounds the streams they
  // share).
  {
    constexpr size_t kMaxDeviceReadThreads = 16;
    std::atomic<size_t> next{0};
    auto run = [&] {
      for (size_t j = next++; j < device_reads.size(); j = next++) {
        const DeviceRead& d = device_reads[j];
        infos[d.index] = store.GetDevice(ns, ToStoreKey(request.keys(d.index)), slice,
                                         requested, d.window);
      }
    };
    const size_t threads = std::min(device_reads.size(), kMaxDeviceReadThreads);
    std::vector<std::thread> helpers;
    for (size_t t = 1; t < threads; ++t) helpers.emplace_back(run);
    run();
    for (std::thread& t : helpers) t.join();
  }
  // A region whose file lost pages under the decode got some of its output nowhere.
  if (to_region) {
    if (absl::Status s = out_pin.CheckNotFaulted("output_region"); !s.ok()) return s;
  }
  if (out_paged) {
    for (const RegionPin& pin : out_paged->pins) {
      if (absl::Status s = pin.CheckNotFaulted("output_paged"); !s.ok()) return s;
    }
  }
  for (int i = 0; i < n; ++i) {
    const v1::ChunkKey& key = request.keys(i);
    v1::GetResult* result = response->mutable_results(i);
    const absl::StatusOr<store::ChunkInfo>& info = *infos[i];
    if (!info.ok()) {
      if (info.status().code() == absl::StatusCode::kNotFound) {
        if (!request.allow_missing())  // deleted or evicted since pass 1
          return absl::NotFoundError(absl::StrCat("keys[", i, "]: chunk ", KeyString(key),
                                                  " not found in namespace '", ns, "'"));
        result->set_found(false);
        result->clear_data();
        continue;
      }
      return WithPrefix(absl::StrCat("keys[", i, "]"), info.status());
    }
    result->set_found(true);
    ToProto(*info, result->mutable_info());
    // The version read decided the dtype when none was asked for (the store's Get).
    result->set_dtype(static_cast<v1::DType>(requested == DType::kUnspecified
                                                 ? info->shape.dtype
                                                 : requested));
  }

  // A chunk replaced by a larger one between the passes could still push us over.
  const uint64_t actual = response->ByteSizeLong();
  if (actual > options.max_message_bytes)
    return absl::ResourceExhaustedError(absl::StrCat(
        "response is ", actual, " bytes, ", actual - options.max_message_bytes,
        " bytes over max_message_bytes (", options.max_message_bytes,
        "); ask for fewer keys per Get or a layer range (layers)"));
  return absl::OkStatus();
}

absl::Status HandleLookup(store::Store& store, const ServiceOptions& options,
                          const v1::LookupRequest& request, v1::LookupResponse* response) {
  if (absl::Status s = ValidateLookupRequest(request, options); !s.ok()) return s;
  std::vector<store::ChunkKey> chain;
  chain.reserve(request.keys_size());
  for (const v1::ChunkKey& k : request.keys()) chain.push_back(ToStoreKey(k));
  response->set_present_prefix(static_cast<uint32_t>(store.Lookup(request.namespace_(), chain)));
  return absl::OkStatus();
}

absl::Status HandleDelete(store::Store& store, const ServiceOptions& options,
                          const v1::DeleteRequest& request, v1::DeleteResponse* response) {
  if (absl::Status s = ValidateDeleteRequest(request, options); !s.ok()) return s;
  uint32_t deleted = 0, not_found = 0;
  for (int i = 0; i < request.keys_size(); ++i) {
    absl::Status s = store.Delete(request.namespace_(), ToStoreKey(request.keys(i)));
    if (s.ok()) {
      ++deleted;
    } else if (s.code() == absl::StatusCode::kNotFound) {
      ++not_found;
    } else {
      return WithPrefix(absl::StrCat("keys[", i, "]"), s);
    }
  }
  response->set_deleted(deleted);
  response->set_not_found(not_found);
  return absl::OkStatus();
}

void HandleStats(const store::Store& store, const ServiceOptions& options,
                 v1::StatsResponse* response) {
  const store::StoreStats s = store.Stats();
  response->set_capacity_bytes(s.capacity_bytes);
  response->set_used_bytes(s.used_bytes);
  response->set_page_bytes(s.page_bytes);
  response->set_chunks(s.chunks);
  response->set_logical_bytes(s.logical_bytes);
  response->set_stored_bytes(s.stored_bytes);
  response->set_hits(s.hits);
  response->set_misses(s.misses);
  response->set_evictions(s.evictions);
  response->set_puts(s.puts);
  response->set_gets(s.gets);
  response->set_deletes(s.deletes);
  const double elements = static_cast<double>(s.elements);
  response->set_equivalent_bits(s.elements ? s.equivalent_bit_elements / elements : 0.0);
  response->set_true_bits(s.elements ? 8.0 * static_cast<double>(s.stored_bytes) / elements
                                     : 0.0);
  response->set_version(KVSTASH_VERSION);
  response->set_codec_path(kernels::FastPathName());
  response->set_max_message_bytes(options.max_message_bytes);
  response->set_quota_evictions(s.quota_evictions);
  // Largest first (PerNamespaceStats' order), capped so the reply stays small whatever
  // namespaces clients invent; the count of the rest is reported.
  constexpr size_t kMaxNamespaces = 4096;
  const std::vector<store::NamespaceStats> namespaces = store.PerNamespaceStats();
  const size_t shown = std::min(namespaces.size(), kMaxNamespaces);
  response->mutable_namespaces()->Reserve(static_cast<int>(shown));
  for (size_t i = 0; i < shown; ++i) {
    const store::NamespaceStats& n = namespaces[i];
    v1::NamespaceStats* out = response->add_namespaces();
    out->set_namespace_(n.name);
    out->set_chunks(n.chunks);
    out->set_allocated_bytes(n.allocated_bytes);
    out->set_stored_bytes(n.stored_bytes);
    out->set_logical_bytes(n.logical_bytes);
    out->set_quota_evictions(n.quota_evictions);
    out->set_capacity_evictions(n.capacity_evictions);
    out->set_quota_bytes(n.quota_bytes);
  }
  response->set_namespaces_omitted(static_cast<uint32_t>(namespaces.size() - shown));
}

void RestrictStats(const auth::Principal& principal, v1::StatsResponse* response) {
  v1::StatsResponse kept;
  kept.set_capacity_bytes(response->capacity_bytes());
  kept.set_page_bytes(response->page_bytes());
  kept.set_version(response->version());
  kept.set_codec_path(response->codec_path());
  kept.set_max_message_bytes(response->max_message_bytes());
  for (const v1::NamespaceStats& ns : response->namespaces())
    if (principal.Covers(ns.namespace_())) *kept.add_namespaces() = ns;
  response->Swap(&kept);
}

absl::Status HandleRegisterRegion(RegionRegistry& regions, const ServiceOptions& options,
                                  const v1::RegisterRegionRequest& request,
                                  v1::RegisterRegionResponse* response) {
  if (absl::Status s = ValidateNamespace(request.namespace_(), "namespace", options); !s.ok())
    return s;
  absl::StatusOr<RegionRegistry::Registered> r;
  if (request.has_cuda_ipc()) {
    if (!request.path().empty())
      return absl::InvalidArgumentError("path: set together with cuda_ipc (give one)");
    r = regions.RegisterCudaIpc(request.namespace_(), request.cuda_ipc().handle(),
                                request.cuda_ipc().device_uuid(), request.size(),
                                request.lease_seconds());
  } else {
    r = regions.Register(request.namespace_(), request.path(), request.size(),
                         request.lease_seconds());
  }
  if (!r.ok()) return r.status();
  response->set_region_id(r->region_id);
  response->set_token(r->token);
  response->set_size(r->size);
  response->set_lease_seconds(r->lease_seconds);
  response->set_pinned(r->pinned);
  return absl::OkStatus();
}

absl::StatusOr<FidelityError> ProbeFidelity(store::Store& store, std::string_view ns,
                                            const store::ChunkKey& key,
                                            const ChunkShape& shape,
                                            std::span<const uint8_t> original) {
  if (original.size() != shape.payload_bytes())
    return absl::InvalidArgumentError(absl::StrCat("original: ", original.size(),
                                                   " bytes, expected ", shape.payload_bytes()));
  std::vector<uint16_t> decoded;
  store::OutputAllocator alloc = [&decoded](uint64_t bytes) -> uint8_t* {
    decoded.resize(bytes / 2);
    return reinterpret_cast<uint8_t*>(decoded.data());
  };
  absl::StatusOr<store::ChunkInfo> info = store.Get(ns, key, kernels::Slice{}, shape.dtype, alloc);
  if (!info.ok()) return info.status();
  if (info->shape != shape || decoded.size() * 2 != original.size())
    return absl::NotFoundError("the chunk was replaced by one of another shape");

  // [L][2][T][H][D]: per layer, a block of T·H·D keys, then one of values.
  const uint64_t block = uint64_t{shape.num_tokens} * shape.num_heads * shape.head_dim;
  const int dtype = static_cast<int>(shape.dtype);
  double err2[2] = {0, 0}, norm2[2] = {0, 0};
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    for (int t = 0; t < 2; ++t) {
      const uint64_t base = (uint64_t{l} * 2 + t) * block;
      for (uint64_t i = 0; i < block; ++i) {
        uint16_t raw;
        std::memcpy(&raw, original.data() + 2 * (base + i), 2);
        const double x = kernels::HalfToFloat(raw, dtype);
        const double y = kernels::HalfToFloat(decoded[base + i], dtype);
        err2[t] += (x - y) * (x - y);
        norm2[t] += x * x;
      }
    }
  }
  const auto relative = [](double e2, double n2) {
    if (n2 > 0) return std::sqrt(e2 / n2);
    return e2 > 0 ? 1.0 : 0.0;  // an all-zero tensor: any error is total
  };
  return FidelityError{relative(err2[0], norm2[0]), relative(err2[1], norm2[1])};
}

// --- KvStashService -----------------------------------------------------------------------

KvStashService::KvStashService(store::Store* store, const ServiceOptions& options,
                               metrics::Metrics* metrics, const CallAuthenticator* auth)
    : store_(store),
      options_(options),
      metrics_(metrics),
      auth_(auth),
      regions_(options.regions, store, nullptr,
               [metrics](size_t shm, size_t cuda_ipc) {
                 if (metrics == nullptr) return;
                 metrics->SetRegisteredRegions(metrics::Transport::kShm, static_cast<double>(shm));
                 metrics->SetRegisteredRegions(metrics::Transport::kCudaIpc,
                                               static_cast<double>(cuda_ipc));
               }),
      pool_(options.worker_threads) {}

KvStashService::~KvStashService() = default;

KvStashService::Call KvStashService::Begin(metrics::Method method,
                                           const google::protobuf::Message& request,
                                           metrics::Transport transport) {
  Call call{method, Clock::now(), 0, transport};
  if (metrics_ != nullptr) {
    metrics_->AddInFlight(transport, 1);
    call.bytes_in = request.ByteSizeLong();
  }
  return call;
}

metrics::Transport KvStashService::TransportOf(const v1::RegionRef* ref) const {
  if (ref == nullptr) return metrics::Transport::kGrpc;
  return regions_.OnDevice(ref->region_id()) ? metrics::Transport::kCudaIpc
                                             : metrics::Transport::kShm;
}

bool KvStashService::RefuseIfDraining(grpc::ServerUnaryReactor* reactor, const Call& call) {
  if (!draining_.load(std::memory_order_acquire)) return false;
  Finish(reactor, call, nullptr, absl::UnavailableError("kvstashd is shutting down"));
  return true;
}

std::optional<auth::Principal> KvStashService::Admit(grpc::CallbackServerContext* context,
                                                     grpc::ServerUnaryReactor* reactor,
                                                     const Call& call, absl::string_view ns,
                                                     uint32_t rights, absl::string_view field) {
  if (RefuseIfDraining(reactor, call)) return std::nullopt;
  if (auth_ == nullptr || !auth_->enabled()) return auth::Principal{};
  absl::StatusOr<auth::Principal> who =
      field.empty() ? auth_->Authenticate(context) : auth_->Check(context, ns, rights, field);
  if (!who.ok()) {
    Finish(reactor, call, nullptr, who.status());
    return std::nullopt;
  }
  return *std::move(who);
}

std::function<void()> KvStashService::AfterPut(const v1::PutRequest& request,
                                               const v1::PutResponse& response) {
  if (metrics_ == nullptr) return nullptr;
  for (const v1::PutResult& r : response.results()) {
    const v1::ChunkInfo& info = r.info();
    const ChunkShape shape = ToShape(info.layout(), info.dtype());
    metrics_->ObservePutChunk(kernels::PresetName(static_cast<kernels::Preset>(info.preset())),
                              shape.elements(), info.stored_bytes(), info.equivalent_bits());
  }
  const uint64_t every = options_.fidelity_probe_every;
  if (every == 0 || request.chunks_size() == 0 || response.results_size() == 0) return nullptr;
  // A payload in a client's region may change after the reply: nothing stable to compare.
  if (request.chunks(0).has_data_region() || request.chunks(0).has_data_paged()) return nullptr;
  if (puts_ok_.fetch_add(1, std::memory_order_relaxed) % every != every - 1) return nullptr;

  // The probe outlives the call, so it takes what it needs: the first chunk's identity,
  // and its payload swapped out of the request. gRPC owns the request as a mutable object
  // and reads nothing of it after the handler, so the swap costs neither a copy nor
  // correctness; it saves holding up the reply with a memcpy of the payload.
  auto& chunk = const_cast<v1::PutChunk&>(request.chunks(0));
  auto payload = std::make_shared<std::string>();
  payload->swap(*chunk.mutable_data());
  const std::string ns = chunk.namespace_();
  const store::ChunkKey key = ToStoreKey(chunk.key());
  const ChunkShape shape = ToShape(chunk.layout(), chunk.dtype());
  const std::string key_text = KeyString(chunk.key());
  const std::string preset(
      kernels::PresetName(static_cast<kernels::Preset>(response.results(0).info().preset())));
  return [this, payload, ns, key, key_text, shape, preset] {
    absl::StatusOr<FidelityError> err = ProbeFidelity(*store_, ns, key, shape, Bytes(*payload));
    if (err.ok()) {
      metrics_->ObserveFidelity(preset, err->key, err->value);
      metrics_->CountProbe("ok");
    } else if (err.status().code() == absl::StatusCode::kNotFound) {
      metrics_->CountProbe("gone");
    } else {
      spdlog::warn("fidelity probe of chunk {} failed: {}", key_text,
                   Str(err.status().message()));
      metrics_->CountProbe("error");
    }
  };
}

void KvStashService::Finish(grpc::ServerUnaryReactor* reactor, const Call& call,
                            const google::protobuf::Message* response,
                            const absl::Status& status) {
  const char* method = metrics::MethodName(call.method).data();  // static, NUL-terminated
  if (metrics_ != nullptr) {
    const double seconds = std::chrono::duration<double>(Clock::now() - call.start).count();
    const uint64_t bytes_out = status.ok() && response != nullptr ? response->ByteSizeLong() : 0;
    const std::string code = absl::StatusCodeToString(status.code());
    metrics_->ObserveRequest(call.method, call.transport, code, seconds, call.bytes_in,
                             bytes_out);
    metrics_->AddInFlight(call.transport, -1);
  }
  switch (status.code()) {
    case absl::StatusCode::kOk:
      break;
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kUnknown:
      spdlog::error("{} failed: {}", method, Str(status.message()));
      break;
    case absl::StatusCode::kResourceExhausted:
      spdlog::warn("{} failed: {}", method, Str(status.message()));
      break;
    default:  // the client's mistake; it gets the message
      spdlog::debug("{} failed: {}", method, Str(status.message()));
      break;
  }
  reactor->Finish(ToGrpcStatus(status));
}

grpc::ServerUnaryReactor* KvStashService::Put(grpc::CallbackServerContext* context,
                                              const v1::PutRequest* request,
                                              v1::PutResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const v1::RegionRef* ref = nullptr;  // the first region the payloads come from
  for (const v1::PutChunk& c : request->chunks()) {
    if (ref != nullptr) break;
    if (c.has_data_region()) ref = &c.data_region();
    if (c.has_data_paged() && c.data_paged().planes_size() > 0) ref = &c.data_paged().planes(0);
  }
  const Call call = Begin(metrics::Method::kPut, *request, TransportOf(ref));
  std::optional<auth::Principal> who = Admit(context, reactor, call, "", 0, "");
  if (!who) return reactor;
  if (auth_ != nullptr && auth_->enabled()) {
    for (int i = 0; i < request->chunks_size(); ++i) {
      absl::Status s = auth_->authenticator()->Authorize(
          *who, request->chunks(i).namespace_(), auth::kWrite,
          absl::StrCat("chunks[", i, "].namespace"));
      if (!s.ok()) {
        Finish(reactor, call, nullptr, s);
        return reactor;
      }
    }
  }
  // request, response and context stay valid until the reactor is finished.
  pool_.Submit([this, context, request, response, reactor, call] {
    if (context->IsCancelled()) {  // the client gave up while the call was queued
      Finish(reactor, call, nullptr, absl::CancelledError("cancelled while queued"));
      return;
    }
    const Clock::time_point start = Clock::now();
    const absl::Status status = HandlePut(*store_, options_, *request, response, &regions_);
    if (metrics_ != nullptr)
      metrics_->ObserveCodec(metrics::CodecOp::kEncode,
                             std::chrono::duration<double>(Clock::now() - start).count());
    std::function<void()> probe;
    if (status.ok()) probe = AfterPut(*request, *response);
    Finish(reactor, call, response, status);
    // After Finish: the reply is on its way and request/response may be gone already.
    if (probe) probe();
  });
  return reactor;
}

grpc::ServerUnaryReactor* KvStashService::Get(grpc::CallbackServerContext* context,
                                              const v1::GetRequest* request,
                                              v1::GetResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const v1::RegionRef* ref =
      request->has_output_region() ? &request->output_region()
      : request->has_output_paged() && request->output_paged().planes_size() > 0
          ? &request->output_paged().planes(0)
          : nullptr;
  const Call call = Begin(metrics::Method::kGet, *request, TransportOf(ref));
  if (!Admit(context, reactor, call, request->namespace_(), auth::kRead)) return reactor;
  pool_.Submit([this, context, request, response, reactor, call] {
    if (context->IsCancelled()) {
      Finish(reactor, call, nullptr, absl::CancelledError("cancelled while queued"));
      return;
    }
    const Clock::time_point start = Clock::now();
    const absl::Status status = HandleGet(*store_, options_, *request, response, &regions_);
    if (metrics_ != nullptr)
      metrics_->ObserveCodec(metrics::CodecOp::kDecode,
                             std::chrono::duration<double>(Clock::now() - start).count());
    Finish(reactor, call, response, status);
  });
  return reactor;
}

grpc::ServerUnaryReactor* KvStashService::Lookup(grpc::CallbackServerContext* context,
                                                 const v1::LookupRequest* request,
                                                 v1::LookupResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Call call = Begin(metrics::Method::kLookup, *request);
  if (!Admit(context, reactor, call, request->namespace_(), auth::kRead)) return reactor;
  const absl::Status status = HandleLookup(*store_, options_, *request, response);
  if (status.ok() && metrics_ != nullptr) metrics_->ObserveLookup(response->present_prefix());
  Finish(reactor, call, response, status);
  return reactor;
}

grpc::ServerUnaryReactor* KvStashService::Delete(grpc::CallbackServerContext* context,
                                                 const v1::DeleteRequest* request,
                                                 v1::DeleteResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Call call = Begin(metrics::Method::kDelete, *request);
  if (!Admit(context, reactor, call, request->namespace_(), auth::kWrite)) return reactor;
  Finish(reactor, call, response, HandleDelete(*store_, options_, *request, response));
  return reactor;
}

grpc::ServerUnaryReactor* KvStashService::Stats(grpc::CallbackServerContext* context,
                                                const v1::StatsRequest* request,
                                                v1::StatsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Call call = Begin(metrics::Method::kStats, *request);
  const std::optional<auth::Principal> who = Admit(context, reactor, call, "", 0, "");
  if (!who) return reactor;
  regions_.Sweep();  // expired regions leave the gauge even when no region call comes
  HandleStats(*store_, options_, response);
  // Only an admin sees the whole store; a tenant sees its own namespaces.
  if (!who->Has(auth::kAdmin)) RestrictStats(*who, response);
  Finish(reactor, call, response, absl::OkStatus());
  return reactor;
}

grpc::ServerUnaryReactor* KvStashService::RegisterRegion(
    grpc::CallbackServerContext* context, const v1::RegisterRegionRequest* request,
    v1::RegisterRegionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Call call = Begin(metrics::Method::kRegisterRegion, *request, metrics::Transport::kShm);
  // A region is bound to its namespace; using it for Put or Get needs write or read there.
  if (!Admit(context, reactor, call, request->namespace_(), 0)) return reactor;
  Finish(reactor, call, response, HandleRegisterRegion(regions_, options_, *request, response));
  return reactor;
}

grpc::ServerUnaryReactor* KvStashService::UnregisterRegion(
    grpc::CallbackServerContext* context, const v1::UnregisterRegionRequest* request,
    v1::UnregisterRegionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Call call = Begin(metrics::Method::kUnregisterRegion, *request, metrics::Transport::kShm);
  // The region's 128-bit token proves ownership; the caller must still be a tenant.
  if (!Admit(context, reactor, call, "", 0, "")) return reactor;
  Finish(reactor, call, response, regions_.Unregister(request->region_id(), request->token()));
  return reactor;
}

grpc::ServerUnaryReactor* KvStashService::RenewRegion(grpc::CallbackServerContext* context,
                                                      const v1::RenewRegionRequest* request,
                                                      v1::RenewRegionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Call call = Begin(metrics::Method::kRenewRegion, *request, metrics::Transport::kShm);
  if (!Admit(context, reactor, call, "", 0, "")) return reactor;
  absl::StatusOr<uint32_t> lease = regions_.Renew(request->region_id(), request->token());
  if (lease.ok()) response->set_lease_seconds(*lease);
  Finish(reactor, call, response, lease.status());
  return reactor;
}

}  // namespace kvstash::rpc
