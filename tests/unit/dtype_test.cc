#include "worker/engine/formats/dtype.h"

#include <gtest/gtest.h>

namespace fm {
namespace {

TEST(DType, NamesRoundTripAndSizes) {
  for (int i = 0; i <= static_cast<int>(DType::kF8E5M2); ++i) {
    DType t = static_cast<DType>(i);
    auto parsed = ParseDTypeName(DTypeName(t));
    ASSERT_TRUE(parsed.has_value()) << DTypeName(t);
    EXPECT_EQ(*parsed, t);
  }
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_FALSE(ParseDTypeName("F12").has_value());
  EXPECT_FALSE(ParseDTypeName("f32").has_value());
}

}  // namespace
}  // namespace fm
