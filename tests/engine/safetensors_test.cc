// safetensors: WriteSafetensors -> SafetensorsFile round trip, and every way a file can lie
// (short file, header length past EOF, offsets past the data, overlaps, shape/size mismatch,
// unknown dtype, garbage JSON) is a clear Corruption from Open(), never a crash.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "engine/safetensors.h"
#include "test_util.h"

namespace kvault::engine {
namespace {

using kvtest::TempDir;

// Writes a file by hand: `header_len` (normally header.size()), the header text, the data.
void WriteRaw(const std::string& path, uint64_t header_len, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(&header_len), 8);  // x86: little-endian
  out << header << data;
}
void WriteRaw(const std::string& path, const std::string& header, const std::string& data) {
  WriteRaw(path, header.size(), header, data);
}

// Expects Open() to fail with Corruption mentioning `needle`.
void ExpectCorrupt(const std::string& path, const std::string& needle) {
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok()) << "opened a bad file";
  EXPECT_EQ(f.status().code(), Code::kCorruption) << f.status().ToString();
  EXPECT_NE(f.status().message().find(needle), std::string::npos)
      << "message \"" << f.status().message() << "\" lacks \"" << needle << "\"";
}

std::string FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(SafetensorsTest, RoundTrip) {
  TempDir dir("st");
  const std::string path = dir.Sub("t.safetensors");
  torch::Tensor f32 = torch::arange(0, 12, torch::kFloat32).reshape({3, 4}) / 7;
  torch::Tensor f16 = torch::linspace(-2, 2, 10).to(torch::kFloat16);
  torch::Tensor bf16 = torch::linspace(-3, 3, 6).reshape({2, 3}).to(torch::kBFloat16);
  torch::Tensor i64 = torch::tensor({5, -6, 7}, torch::kInt64);
  torch::Tensor empty = torch::zeros({0, 4}, torch::kFloat32);
  torch::Tensor strided = torch::arange(0, 8, torch::kFloat32).reshape({2, 4}).t();  // non-contiguous
  ASSERT_TRUE(WriteSafetensors(path, {{"f32", f32}, {"f16", f16}, {"bf16", bf16}, {"i64", i64},
                                      {"empty", empty}, {"strided", strided}}).ok());

  // 8-byte length, then a header padded with spaces to a multiple of 8.
  const std::string bytes = FileBytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_NE(bytes.substr(8, header_len).find("\"__metadata__\""), std::string::npos);

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->tensors().size(), 6u);  // __metadata__ is not a tensor
  EXPECT_EQ((*f)->tensors().at("bf16").dtype, "BF16");
  EXPECT_EQ((*f)->tensors().at("bf16").shape, (std::vector<int64_t>{2, 3}));
  for (const auto& [name, want] : std::vector<std::pair<std::string, torch::Tensor>>{
           {"f32", f32}, {"f16", f16}, {"bf16", bf16}, {"i64", i64}, {"empty", empty}, {"strided", strided}}) {
    Result<torch::Tensor> got = (*f)->Get(name);
    ASSERT_TRUE(got.ok()) << name << ": " << got.status().ToString();
    EXPECT_EQ(got->scalar_type(), want.scalar_type()) << name;
    EXPECT_EQ(got->sizes(), want.sizes()) << name;
    EXPECT_TRUE(torch::equal(*got, want)) << name;
  }
  Result<torch::Tensor> missing = (*f)->Get("nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
}

TEST(SafetensorsTest, WriterRejectsBadNames) {
  TempDir dir("st");
  torch::Tensor t = torch::zeros({2});
  EXPECT_EQ(WriteSafetensors(dir.Sub("a"), {{"x", t}, {"x", t}}).code(), Code::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(dir.Sub("b"), {{"__metadata__", t}}).code(), Code::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(dir.Sub("c"), {{"u", torch::Tensor()}}).code(), Code::kInvalidArgument);
}

TEST(SafetensorsTest, MisalignedDataIsCopied) {
  // A 3-byte-longer header (legal, unpadded) leaves F32 data misaligned in the mapping.
  TempDir dir("st");
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";  // 54 bytes
  float values[2] = {1.5f, -2.25f};
  WriteRaw(dir.Sub("m"), header, std::string(reinterpret_cast<const char*>(values), 8));
  auto f = SafetensorsFile::Open(dir.Sub("m"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  Result<torch::Tensor> t = (*f)->Get("a");
  ASSERT_TRUE(t.ok());
  EXPECT_FLOAT_EQ((*t)[0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ((*t)[1].item<float>(), -2.25f);
}

TEST(SafetensorsTest, MissingFile) {
  auto f = SafetensorsFile::Open("/nonexistent/kvault/x.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kNotFound);
}

TEST(SafetensorsTest, TruncatedFiles) {
  TempDir dir("st");
  const std::string path = dir.Sub("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", torch::ones({4, 4})}}).ok());
  const std::string bytes = FileBytes(path);

  std::ofstream(dir.Sub("short"), std::ios::binary) << bytes.substr(0, 5);
  ExpectCorrupt(dir.Sub("short"), "too short");
  std::ofstream(dir.Sub("empty"), std::ios::binary);
  ExpectCorrupt(dir.Sub("empty"), "too short");
  // Cut inside the header: its length now runs past EOF.
  std::ofstream(dir.Sub("in_header"), std::ios::binary) << bytes.substr(0, 20);
  ExpectCorrupt(dir.Sub("in_header"), "header length");
  // Cut inside the data: the tensor's end is past the data section.
  std::ofstream(dir.Sub("in_data"), std::ios::binary) << bytes.substr(0, bytes.size() - 1);
  ExpectCorrupt(dir.Sub("in_data"), "past the data section");
}

TEST(SafetensorsTest, HeaderLengthPastEof) {
  TempDir dir("st");
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  WriteRaw(dir.Sub("long"), header.size() + 100, header, "abcd");
  ExpectCorrupt(dir.Sub("long"), "header length");
  WriteRaw(dir.Sub("huge"), ~0ull, header, "abcd");  // would overflow 8 + N
  ExpectCorrupt(dir.Sub("huge"), "header length");
}

TEST(SafetensorsTest, LyingOffsets) {
  TempDir dir("st");
  const std::string data(32, '\0');
  WriteRaw(dir.Sub("end"), R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}})", data);
  ExpectCorrupt(dir.Sub("end"), "past the data section");
  WriteRaw(dir.Sub("huge_end"), R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[18446744073709551612,18446744073709551616]}})", data);
  ExpectCorrupt(dir.Sub("huge_end"), "data_offsets");
  WriteRaw(dir.Sub("reversed"), R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", data);
  ExpectCorrupt(dir.Sub("reversed"), "begin > end");
  WriteRaw(dir.Sub("overlap"), R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                                   "b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}})", data);
  ExpectCorrupt(dir.Sub("overlap"), "overlap");
  WriteRaw(dir.Sub("size"), R"({"a":{"dtype":"F32","shape":[3,3],"data_offsets":[0,32]}})", data);
  ExpectCorrupt(dir.Sub("size"), "does not match");
  WriteRaw(dir.Sub("dtype_size"), R"({"a":{"dtype":"F16","shape":[8],"data_offsets":[0,32]}})", data);
  ExpectCorrupt(dir.Sub("dtype_size"), "does not match");
  // A shape whose element count overflows 64 bits must not wrap around to "matching".
  WriteRaw(dir.Sub("overflow"), R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", data);
  ExpectCorrupt(dir.Sub("overflow"), "does not match");
  WriteRaw(dir.Sub("neg"), R"({"a":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", data);
  ExpectCorrupt(dir.Sub("neg"), "negative");
  WriteRaw(dir.Sub("offsets"), R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0]}})", data);
  ExpectCorrupt(dir.Sub("offsets"), "data_offsets");
  // Adjacent (touching) tensors and empty tensors sharing an offset are fine.
  WriteRaw(dir.Sub("ok"), R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                              "b":{"dtype":"F32","shape":[4],"data_offsets":[16,32]},
                              "c":{"dtype":"F32","shape":[0],"data_offsets":[16,16]},
                              "__metadata__":{"format":"pt"}})", data);
  auto f = SafetensorsFile::Open(dir.Sub("ok"));
  EXPECT_TRUE(f.ok()) << f.status().ToString();
}

TEST(SafetensorsTest, BadHeaderContent) {
  TempDir dir("st");
  const std::string data(16, '\0');
  WriteRaw(dir.Sub("dtype"), R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", data);
  ExpectCorrupt(dir.Sub("dtype"), "unknown dtype \"F128\"");
  WriteRaw(dir.Sub("garbage"), "{\"a\": [1, 2,, }", data);
  ExpectCorrupt(dir.Sub("garbage"), "not valid JSON");
  WriteRaw(dir.Sub("binary"), std::string("\xff\xfe\x00\x01garbage", 11), data);
  ExpectCorrupt(dir.Sub("binary"), "not valid JSON");
  WriteRaw(dir.Sub("array"), "[1, 2, 3]", data);
  ExpectCorrupt(dir.Sub("array"), "not a JSON object");
  WriteRaw(dir.Sub("entry"), R"({"a": 5})", data);
  ExpectCorrupt(dir.Sub("entry"), "not an object");
  WriteRaw(dir.Sub("noshape"), R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", data);
  ExpectCorrupt(dir.Sub("noshape"), "\"shape\"");
  WriteRaw(dir.Sub("strshape"), R"({"a":{"dtype":"F32","shape":["4"],"data_offsets":[0,16]}})", data);
  ExpectCorrupt(dir.Sub("strshape"), "shape");
  WriteRaw(dir.Sub("nodtype"), R"({"a":{"dtype":32,"shape":[4],"data_offsets":[0,16]}})", data);
  ExpectCorrupt(dir.Sub("nodtype"), "\"dtype\"");
}

}  // namespace
}  // namespace kvault::engine
