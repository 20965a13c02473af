#include "npy.h"

#include <string>

#include "gtest/gtest.h"

namespace kvstash::cli {
namespace {

using ::std::string_literals::operator""s;

// A header exactly as NumPy's np.save writes it (format 1.0, dict padded with spaces to a
// 64-byte boundary, then '\n').
std::string NumpyV1Header(const std::string& dict) {
  std::string d = dict;
  const size_t total = (10 + d.size() + 1 + 63) / 64 * 64;
  d.append(total - 10 - d.size() - 1, ' ');
  d += '\n';
  std::string out = "\x93NUMPY\x01\x00"s;
  out += static_cast<char>(d.size() & 0xff);
  out += static_cast<char>(d.size() >> 8);
  return out + d;
}

TEST(NpyTest, ParsesNumpyVersion1Header) {
  const std::string file =
      NumpyV1Header("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2, 3, 1, 32), }") +
      std::string(2 * 2 * 2 * 3 * 32, '\0');
  auto h = ParseNpyHeader(file);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->descr, "<f2");
  EXPECT_FALSE(h->fortran_order);
  EXPECT_EQ(h->shape, (std::vector<uint64_t>{2, 2, 3, 1, 32}));
  EXPECT_EQ(h->data_offset, 128u);
  EXPECT_EQ(h->data_offset % 64, 0u);
  EXPECT_EQ(h->elements(), 2u * 2 * 3 * 32);
}

TEST(NpyTest, ParsesVersion2AndOneDimensionalShapes) {
  std::string dict = "{'descr': '|V2', 'fortran_order': False, 'shape': (7,), }\n";
  std::string file = "\x93NUMPY\x02\x00"s;
  for (int i = 0; i < 4; ++i) file += static_cast<char>((dict.size() >> (8 * i)) & 0xff);
  file += dict;
  auto h = ParseNpyHeader(file);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->descr, "|V2");
  EXPECT_EQ(h->shape, (std::vector<uint64_t>{7}));
  EXPECT_EQ(h->data_offset, 12 + dict.size());
}

TEST(NpyTest, ParsesKeysInAnyOrderAndFortranFlag) {
  auto h = ParseNpyHeader(
      NumpyV1Header("{\"shape\": (4, 5), \"fortran_order\": True, \"descr\": \"<u2\"}"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->descr, "<u2");
  EXPECT_TRUE(h->fortran_order);
  EXPECT_EQ(h->shape, (std::vector<uint64_t>{4, 5}));
}

TEST(NpyTest, ScalarShapeHasOneElement) {
  auto h = ParseNpyHeader(NumpyV1Header("{'descr': '<f2', 'fortran_order': False, 'shape': (), }"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->shape.empty());
  EXPECT_EQ(h->elements(), 1u);
}

TEST(NpyTest, RejectsBadMagicTruncationAndMissingFields) {
  EXPECT_EQ(ParseNpyHeader("NUMPY").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseNpyHeader("\x93NUMPX\x01\x00\x10\x00"s + std::string(16, ' ')).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::string truncated =
      NumpyV1Header("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }");
  truncated.resize(40);
  EXPECT_EQ(ParseNpyHeader(truncated).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseNpyHeader(NumpyV1Header("{'fortran_order': False, 'shape': (2,), }"))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseNpyHeader(NumpyV1Header("{'descr': '<f2', 'fortran_order': False}"))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseNpyHeader(NumpyV1Header("{'descr': [('a', '<f2')], 'fortran_order': False, "
                                         "'shape': (2,), }"))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseNpyHeader("\x93NUMPY\x04\x00\x10\x00"s + std::string(16, ' ')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NpyTest, WrittenHeaderParsesBackAndIsAligned) {
  for (const auto& shape : {std::vector<uint64_t>{32, 2, 256, 8, 128}, std::vector<uint64_t>{5},
                            std::vector<uint64_t>{}}) {
    const std::string header = NpyHeaderBytes("<f2", shape);
    EXPECT_EQ(header.size() % 64, 0u);
    EXPECT_EQ(header.back(), '\n');
    auto h = ParseNpyHeader(header);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->descr, "<f2");
    EXPECT_EQ(h->shape, shape);
    EXPECT_EQ(h->data_offset, header.size());
  }
  // One-element tuples keep their trailing comma, as Python writes them.
  EXPECT_NE(NpyHeaderBytes("<u2", {5}).find("(5,)"), std::string::npos);
}

}  // namespace
}  // namespace kvstash::cli
