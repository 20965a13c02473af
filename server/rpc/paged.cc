#include "server/rpc/paged.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvstash::rpc {

store::DeviceTensor ResolvedPaged::Window(uint64_t t0, uint64_t tokens) const {
  store::DeviceTensor w;
  w.tier = tier;
  w.planes = planes;
  w.block_size = block_size;
  w.heads = heads;
  w.head_dim = head_dim;
  w.block_stride = block_stride;
  w.token_stride = token_stride;
  w.head_stride = head_stride;
  const uint64_t s0 = first_slot + t0;
  w.first_slot = static_cast<uint32_t>(s0 % block_size);
  const uint64_t first = s0 / block_size;
  const uint64_t count = (w.first_slot + tokens + block_size - 1) / block_size;
  w.block_ids.assign(block_ids.begin() + first, block_ids.begin() + first + count);
  return w;
}

namespace {

// The checks of `paged` that need no geometry: block_size, first_slot, 16-byte strides.
absl::Status CheckBlocks(const v1::PagedLayout& paged, const std::string& f) {
  if (paged.block_size() == 0)
    return absl::InvalidArgumentError(absl::StrCat(f, ".block_size: must be positive"));
  if (paged.first_slot() >= paged.block_size())
    return absl::InvalidArgumentError(absl::StrCat(f, ".first_slot: ", paged.first_slot(),
                                                   " is not below block_size ",
                                                   paged.block_size()));
  const std::pair<const char*, uint64_t> strides[] = {{"block_stride", paged.block_stride()},
                                                      {"token_stride", paged.token_stride()},
                                                      {"head_stride", paged.head_stride()}};
  for (const auto& [name, stride] : strides) {
    if (stride % 16 != 0)
      return absl::InvalidArgumentError(
          absl::StrCat(f, ".", name, ": ", stride, " bytes is not a multiple of 16"));
  }
  return absl::OkStatus();
}

using u128 = unsigned __int128;

// Pins every plane (16-byte offsets; Acquire's ownership and range checks), each of which
// must hold `need` bytes (one past the last byte block `max_id` can occupy; 0 = no bound),
// all in one kind of region.
absl::StatusOr<std::vector<RegionPin>> PinPlanes(RegionRegistry* regions, std::string_view ns,
                                                 const v1::PagedLayout& paged,
                                                 const std::string& f, u128 need,
                                                 uint32_t max_id) {
  if (regions == nullptr)
    return absl::FailedPreconditionError(
        absl::StrCat(f, ": regions are not available in this service"));
  std::vector<RegionPin> pins;
  pins.reserve(paged.planes_size());
  for (int i = 0; i < paged.planes_size(); ++i) {
    const std::string pf = absl::StrCat(f, ".planes[", i, "]");
    const v1::RegionRef& ref = paged.planes(i);
    if (ref.offset() % 16 != 0)
      return absl::InvalidArgumentError(
          absl::StrCat(pf, ".offset: ", ref.offset(), " is not a multiple of 16"));
    absl::StatusOr<RegionPin> pin = regions->Acquire(ns, ref.region_id(), ref.token(),
                                                     ref.offset(), ref.length(), pf);
    if (!pin.ok()) return pin.status();
    if (need > pin->size())
      return absl::InvalidArgumentError(absl::StrCat(
          pf, ".length: ", pin->size(), " bytes, but block ", max_id, " of block_ids ends at byte ",
          static_cast<uint64_t>(std::min<u128>(need, UINT64_MAX)),
          " of the plane (block_stride, token_stride and head_stride place its last element "
          "there)"));
    if (i > 0 && pin->tier() != pins[0].tier())
      return absl::InvalidArgumentError(absl::StrCat(
          pf, ".region_id: every plane must be in the same kind of region (shared memory, or "
              "CUDA IPC on one device) as planes[0]"));
    pins.push_back(*std::move(pin));
  }
  return pins;
}

}  // namespace

absl::Status CheckPagedRefs(RegionRegistry* regions, std::string_view ns,
                            const v1::PagedLayout& paged, const std::string& field) {
  const std::string& f = field;
  if (paged.planes_size() == 0 || paged.planes_size() % 2 != 0)
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".planes: ", paged.planes_size(), " refs, expected 2 per layer"));
  if (absl::Status s = CheckBlocks(paged, f); !s.ok()) return s;
  return PinPlanes(regions, ns, paged, f, 0, 0).status();
}

absl::StatusOr<ResolvedPaged> ResolvePaged(RegionRegistry* regions, std::string_view ns,
                                           const v1::PagedLayout& paged, uint32_t layers,
                                           uint64_t tokens, uint32_t heads, uint32_t head_dim,
                                           const std::string& field) {
  const std::string& f = field;
  if (static_cast<uint64_t>(paged.planes_size()) != 2ull * layers)
    return absl::InvalidArgumentError(absl::StrCat(f, ".planes: ", paged.planes_size(),
                                                   " refs, expected 2 per layer (",
                                                   2ull * layers, ")"));
  if (absl::Status s = CheckBlocks(paged, f); !s.ok()) return s;
  // Strides only need 16-byte alignment (so the kernels' 16-byte accesses stay aligned):
  // the engines' layouts interleave blocks, tokens and heads in many ways (docs/api.md), so
  // no order between them is required. Only a token whose heads overlap, or a block whose
  // tokens overlap, is refused: no engine lays a cache out so.
  const uint64_t head_bytes = 2ull * head_dim;
  if (paged.token_stride() != 0 && paged.block_size() > 1 && paged.token_stride() < head_bytes)
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".token_stride: ", paged.token_stride(), " bytes; must be 0 (rows of ", heads,
        " heads x ", head_dim, " x 2 bytes) or a multiple of 16 of at least ", head_bytes,
        " (head_dim x 2)"));
  if (paged.head_stride() != 0 && heads > 1 && paged.head_stride() < head_bytes)
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".head_stride: ", paged.head_stride(), " bytes; must be 0 (", head_bytes,
        ", adjacent heads) or a multiple of 16 of at least ", head_bytes, " (head_dim x 2)"));
  const uint64_t want_ids = (paged.first_slot() + tokens + paged.block_size() - 1) / paged.block_size();
  if (static_cast<uint64_t>(paged.block_ids_size()) != want_ids)
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".block_ids: ", paged.block_ids_size(), " ids, but ", tokens, " tokens from slot ",
        paged.first_slot(), " fill ", want_ids, " blocks of ", paged.block_size()));

  ResolvedPaged r;
  r.block_size = paged.block_size();
  r.first_slot = paged.first_slot();
  r.heads = heads;
  r.head_dim = head_dim;
  r.block_stride = paged.block_stride();
  r.token_stride = paged.token_stride() != 0 ? paged.token_stride() : heads * head_bytes;
  r.head_stride = paged.head_stride() != 0 ? paged.head_stride() : head_bytes;
  r.block_ids.assign(paged.block_ids().begin(), paged.block_ids().end());
  const uint32_t max_id =
      r.block_ids.empty() ? 0 : *std::max_element(r.block_ids.begin(), r.block_ids.end());
  // One past the last byte any slot of the highest block can hold (its last slot's last
  // head's last element); every plane must hold it (nothing when no token is). 128-bit:
  // the stride products of a hostile request can exceed 64 bits.
  const u128 need = r.block_ids.empty()
                        ? 0
                        : u128{max_id} * r.block_stride +
                              u128{r.block_size - 1} * r.token_stride +
                              u128{heads - 1} * r.head_stride + head_bytes;
  absl::StatusOr<std::vector<RegionPin>> pins = PinPlanes(regions, ns, paged, f, need, max_id);
  if (!pins.ok()) return pins.status();
  r.pins = *std::move(pins);
  r.tier = r.pins.empty() ? -1 : r.pins[0].tier();
  for (const RegionPin& pin : r.pins) r.planes.push_back(pin.data());
  return r;
}

namespace {

// Calls copy(paged bytes, offset in the contiguous [layers][2][tokens][heads][D] buffer,
// bytes) for every token of the window: once per token when its heads are adjacent, else
// once per head.
template <class Copy>
void ForEachRun(const store::DeviceTensor& w, uint32_t layers, uint32_t tokens, Copy copy) {
  const uint64_t row = w.row_bytes(), head = 2ull * w.head_dim;
  const uint64_t ts = w.token_stride != 0 ? w.token_stride : row;
  const uint64_t hs = w.head_stride != 0 ? w.head_stride : head;
  const bool whole_rows = hs == head;
  for (uint32_t lx = 0; lx < 2 * layers; ++lx) {
    for (uint32_t t = 0; t < tokens; ++t) {
      const uint64_t s = uint64_t{w.first_slot} + t;
      uint8_t* tok = w.planes[lx] + uint64_t{w.block_ids[s / w.block_size]} * w.block_stride +
                     s % w.block_size * ts;
      const uint64_t at = (uint64_t{lx} * tokens + t) * row;
      if (whole_rows) {
        copy(tok, at, row);
      } else {
        for (uint32_t h = 0; h < w.heads; ++h) copy(tok + h * hs, at + h * head, head);
      }
    }
  }
}

}  // namespace

void GatherHost(const store::DeviceTensor& w, uint32_t layers, uint32_t tokens, uint8_t* out) {
  ForEachRun(w, layers, tokens, [&](const uint8_t* paged, uint64_t at, uint64_t n) {
    std::memcpy(out + at, paged, n);
  });
}

void ScatterHost(const store::DeviceTensor& w, uint32_t layers, uint32_t tokens,
                 const uint8_t* in) {
  ForEachRun(w, layers, tokens, [&](uint8_t* paged, uint64_t at, uint64_t n) {
    std::memcpy(paged, in + at, n);
  });
}

}  // namespace kvstash::rpc
