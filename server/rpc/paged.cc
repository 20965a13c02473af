#include "server/rpc/paged.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvstash::rpc {

store::DeviceTensor ResolvedPaged::Window(uint64_t t0, uint64_t tokens) const {
  store::DeviceTensor w;
  w.tier = tier;
  w.planes = planes;
  w.block_size = block_size;
  w.block_stride = block_stride;
  w.row_bytes = row_bytes;
  const uint64_t s0 = first_slot + t0;
  w.first_slot = static_cast<uint32_t>(s0 % block_size);
  const uint64_t first = s0 / block_size;
  const uint64_t count = (w.first_slot + tokens + block_size - 1) / block_size;
  w.block_ids.assign(block_ids.begin() + first, block_ids.begin() + first + count);
  return w;
}

absl::StatusOr<ResolvedPaged> ResolvePaged(RegionRegistry* regions, std::string_view ns,
                                           const v1::PagedLayout& paged, uint32_t layers,
                                           uint64_t tokens, uint64_t row_bytes,
                                           const std::string& field) {
  const std::string& f = field;
  if (static_cast<uint64_t>(paged.planes_size()) != 2ull * layers)
    return absl::InvalidArgumentError(absl::StrCat(f, ".planes: ", paged.planes_size(),
                                                   " refs, expected 2 per layer (",
                                                   2ull * layers, ")"));
  if (paged.block_size() == 0)
    return absl::InvalidArgumentError(absl::StrCat(f, ".block_size: must be positive"));
  if (paged.first_slot() >= paged.block_size())
    return absl::InvalidArgumentError(absl::StrCat(f, ".first_slot: ", paged.first_slot(),
                                                   " is not below block_size ",
                                                   paged.block_size()));
  const uint64_t block_bytes = uint64_t{paged.block_size()} * row_bytes;
  if (paged.block_stride() % 16 != 0 || paged.block_stride() < block_bytes)
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".block_stride: ", paged.block_stride(), " bytes; must be a multiple of 16 and at least ",
        block_bytes, " (block_size x heads x head_dim x 2)"));
  const uint64_t want_ids = (paged.first_slot() + tokens + paged.block_size() - 1) / paged.block_size();
  if (static_cast<uint64_t>(paged.block_ids_size()) != want_ids)
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".block_ids: ", paged.block_ids_size(), " ids, but ", tokens, " tokens from slot ",
        paged.first_slot(), " fill ", want_ids, " blocks of ", paged.block_size()));

  if (regions == nullptr)
    return absl::FailedPreconditionError(
        absl::StrCat(f, ": regions are not available in this service"));
  ResolvedPaged r;
  r.block_size = paged.block_size();
  r.first_slot = paged.first_slot();
  r.block_stride = paged.block_stride();
  r.row_bytes = row_bytes;
  r.block_ids.assign(paged.block_ids().begin(), paged.block_ids().end());
  const uint32_t max_id =
      r.block_ids.empty() ? 0 : *std::max_element(r.block_ids.begin(), r.block_ids.end());
  // The highest block's last byte; every plane must hold it (nothing when no token is).
  const unsigned __int128 need =
      r.block_ids.empty() ? 0
                          : static_cast<unsigned __int128>(max_id) * r.block_stride + block_bytes;
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
          static_cast<uint64_t>(std::min<unsigned __int128>(need, UINT64_MAX)), " of the plane"));
    if (i == 0) {
      r.tier = pin->tier();
    } else if (pin->tier() != r.tier) {
      return absl::InvalidArgumentError(absl::StrCat(
          pf, ".region_id: every plane must be in the same kind of region (shared memory, or "
              "CUDA IPC on one device) as planes[0]"));
    }
    r.planes.push_back(pin->data());
    r.pins.push_back(*std::move(pin));
  }
  return r;
}

namespace {

template <class Copy>
void ForEachRow(const store::DeviceTensor& w, uint32_t layers, uint32_t tokens, Copy copy) {
  for (uint32_t lx = 0; lx < 2 * layers; ++lx) {
    for (uint32_t t = 0; t < tokens; ++t) {
      const uint64_t s = uint64_t{w.first_slot} + t;
      uint8_t* row = w.planes[lx] + uint64_t{w.block_ids[s / w.block_size]} * w.block_stride +
                     s % w.block_size * w.row_bytes;
      copy(row, (uint64_t{lx} * tokens + t) * w.row_bytes);
    }
  }
}

}  // namespace

void GatherHost(const store::DeviceTensor& w, uint32_t layers, uint32_t tokens, uint8_t* out) {
  ForEachRow(w, layers, tokens,
             [&](const uint8_t* row, uint64_t at) { std::memcpy(out + at, row, w.row_bytes); });
}

void ScatterHost(const store::DeviceTensor& w, uint32_t layers, uint32_t tokens,
                 const uint8_t* in) {
  ForEachRow(w, layers, tokens,
             [&](uint8_t* row, uint64_t at) { std::memcpy(row, in + at, w.row_bytes); });
}

}  // namespace kvstash::rpc
