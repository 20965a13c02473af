#include "npy.h"

#include <cctype>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cli_util.h"

namespace kvstash::cli {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

absl::Status Bad(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("npy: ", Av(what)));
}

void SkipSpace(std::string_view s, size_t* i) {
  while (*i < s.size() && std::isspace(static_cast<unsigned char>(s[*i]))) ++*i;
}

// Finds `'key'` (or "key") followed by ':' in the dict text; returns the index just after
// the colon, or npos.
size_t FindKey(std::string_view dict, std::string_view key) {
  for (char q : {'\'', '"'}) {
    const std::string quoted = absl::StrCat(std::string(1, q), Av(key), std::string(1, q));
    size_t pos = dict.find(quoted);
    if (pos == std::string_view::npos) continue;
    pos += quoted.size();
    SkipSpace(dict, &pos);
    if (pos < dict.size() && dict[pos] == ':') return pos + 1;
  }
  return std::string_view::npos;
}

}  // namespace

uint64_t NpyHeader::elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<NpyHeader> ParseNpyHeader(std::string_view file) {
  if (file.size() < kMagicLen + 4 || std::memcmp(file.data(), kMagic, kMagicLen) != 0) {
    return Bad("bad magic (not a .npy file)");
  }
  const uint8_t major = static_cast<uint8_t>(file[6]);
  size_t header_len = 0;
  size_t dict_start = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(file[8]) | (static_cast<uint8_t>(file[9]) << 8);
    dict_start = 10;
  } else if (major == 2 || major == 3) {
    if (file.size() < 12) return Bad("truncated header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) {
      header_len |= static_cast<size_t>(static_cast<uint8_t>(file[8 + i])) << (8 * i);
    }
    dict_start = 12;
  } else {
    return Bad(absl::StrCat("unsupported format version ", major));
  }
  if (file.size() < dict_start + header_len) return Bad("truncated header");
  const std::string_view dict = file.substr(dict_start, header_len);

  NpyHeader h;
  h.data_offset = dict_start + header_len;

  // 'descr': '<f2'
  size_t i = FindKey(dict, "descr");
  if (i == std::string_view::npos) return Bad("descr missing");
  SkipSpace(dict, &i);
  if (i >= dict.size() || (dict[i] != '\'' && dict[i] != '"')) {
    return Bad("descr is not a simple type string (structured dtypes are not supported)");
  }
  const char q = dict[i];
  const size_t end = dict.find(q, i + 1);
  if (end == std::string_view::npos) return Bad("descr unterminated");
  h.descr = std::string(dict.substr(i + 1, end - i - 1));

  // 'fortran_order': False
  i = FindKey(dict, "fortran_order");
  if (i == std::string_view::npos) return Bad("fortran_order missing");
  SkipSpace(dict, &i);
  if (dict.substr(i, 4) == "True") {
    h.fortran_order = true;
  } else if (dict.substr(i, 5) == "False") {
    h.fortran_order = false;
  } else {
    return Bad("fortran_order is neither True nor False");
  }

  // 'shape': (32, 2, 256, 8, 128)
  i = FindKey(dict, "shape");
  if (i == std::string_view::npos) return Bad("shape missing");
  SkipSpace(dict, &i);
  if (i >= dict.size() || dict[i] != '(') return Bad("shape is not a tuple");
  ++i;
  while (true) {
    SkipSpace(dict, &i);
    if (i >= dict.size()) return Bad("shape unterminated");
    if (dict[i] == ')') break;
    if (!std::isdigit(static_cast<unsigned char>(dict[i]))) {
      return Bad(absl::StrCat("shape: unexpected '", std::string(1, dict[i]), "'"));
    }
    uint64_t v = 0;
    while (i < dict.size() && std::isdigit(static_cast<unsigned char>(dict[i]))) {
      if (v > (UINT64_MAX - 9) / 10) return Bad("shape: dimension too large");
      v = v * 10 + static_cast<uint64_t>(dict[i] - '0');
      ++i;
    }
    // Python 2 era files may write 3L.
    if (i < dict.size() && dict[i] == 'L') ++i;
    h.shape.push_back(v);
    SkipSpace(dict, &i);
    if (i < dict.size() && dict[i] == ',') ++i;
  }
  return h;
}

std::string NpyHeaderBytes(std::string_view descr, const std::vector<uint64_t>& shape) {
  std::string dict = absl::StrCat("{'descr': '", Av(descr), "', 'fortran_order': False, 'shape': (");
  for (size_t i = 0; i < shape.size(); ++i) {
    absl::StrAppend(&dict, shape[i], i + 1 < shape.size() || shape.size() == 1 ? "," : "");
    if (i + 1 < shape.size()) dict += " ";
  }
  dict += "), }";
  // Pad with spaces so that magic + version + length + dict + '\n' is a multiple of 64.
  size_t prefix = 10;
  if (dict.size() + 1 + prefix > 65535 + 10) prefix = 12;
  const size_t total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - prefix - dict.size() - 1, ' ');
  dict += '\n';

  std::string out(kMagic, kMagicLen);
  const size_t len = dict.size();
  if (prefix == 10) {
    out += '\x01';
    out += '\x00';
    out += static_cast<char>(len & 0xff);
    out += static_cast<char>((len >> 8) & 0xff);
  } else {
    out += '\x02';
    out += '\x00';
    for (int i = 0; i < 4; ++i) out += static_cast<char>((len >> (8 * i)) & 0xff);
  }
  out += dict;
  return out;
}

}  // namespace kvstash::cli
