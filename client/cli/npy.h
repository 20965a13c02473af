// Reading and writing NumPy .npy files (format versions 1.0, 2.0 and 3.0) for the CLI.
// Only what the CLI needs: little-endian 16-bit arrays in C order.
//
// Pure functions: thread-safe.
#ifndef KVSTASH_CLIENT_CLI_NPY_H_
#define KVSTASH_CLIENT_CLI_NPY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvstash::cli {

struct NpyHeader {
  std::string descr;            // e.g. "<f2", "<u2", "|V2"
  bool fortran_order = false;
  std::vector<uint64_t> shape;  // empty for a scalar
  size_t data_offset = 0;       // bytes from the file start to the array data

  uint64_t elements() const;
};

// Parses the magic, version and header dict of `file` (at least the header bytes).
// InvalidArgument naming what is wrong: "npy: bad magic", "npy: descr missing", ...
absl::StatusOr<NpyHeader> ParseNpyHeader(std::string_view file);

// The header of a version 1.0 file (2.0 if the dict needs it) for a C-order array;
// padded with spaces and a newline to a multiple of 64 bytes, as NumPy writes it.
std::string NpyHeaderBytes(std::string_view descr, const std::vector<uint64_t>& shape);

}  // namespace kvstash::cli

#endif  // KVSTASH_CLIENT_CLI_NPY_H_
