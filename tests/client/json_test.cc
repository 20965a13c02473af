#include "json.h"

#include <cmath>

#include "gtest/gtest.h"

namespace kvstash::cli {
namespace {

TEST(JsonTest, WritesObjectsInInsertionOrder) {
  JsonObject inner;
  inner.Add("a", uint64_t{1});
  const std::string s = JsonObject()
                            .Add("ok", true)
                            .Add("n", int64_t{-3})
                            .Add("x", 1.375)
                            .Add("s", "hi")
                            .AddRaw("o", inner.str())
                            .str();
  EXPECT_EQ(s, R"({"ok":true,"n":-3,"x":1.375,"s":"hi","o":{"a":1}})");
  EXPECT_EQ(JsonObject().str(), "{}");
}

TEST(JsonTest, EscapesStringsAndNullsNonFiniteNumbers) {
  EXPECT_EQ(JsonString("a\"b\\c\n\t\x01"), R"("a\"b\\c\n\t\u0001")");
  EXPECT_EQ(JsonNumber(NAN), "null");
  EXPECT_EQ(JsonNumber(INFINITY), "null");
  EXPECT_EQ(JsonNumber(0.1), "0.1");
  EXPECT_EQ(JsonNumber(1.0f / 6.0f), "0.16666667");
  EXPECT_EQ(JsonObject().Add("f", 0.045f).str(), R"({"f":0.045})");
}

}  // namespace
}  // namespace kvstash::cli
