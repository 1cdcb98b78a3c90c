// GgufFile: round trips through a test writer (every metadata type, nested arrays, several
// tensor types), every kind of bad file (bad magic/version, truncation at every byte, lying
// counts and lengths, bad offsets, overlaps, unknown types, bad dims, duplicates), a fuzz run
// over the header of a real model and over a small file, and the real SmolLM2 file itself.
#include "gguf/gguf_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gguf/dequantize.h"
#include "gguf_writer.h"
#include "smollm2_locator.h"

namespace kvault::gguf {
namespace {

using testing::EncArray;
using testing::EncStr;
using testing::EncStrArray;
using testing::EncU32;
using testing::EncU64;
using testing::GgufWriter;
using testing::TensorSpec;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kSanitizerSlowdown = 8;
#else
constexpr int kSanitizerSlowdown = 1;
#endif

// Fuzz iterations are scaled down under sanitizers; KVAULT_GGUF_FUZZ_SCALE=N multiplies them
// (a longer run by hand).
int FuzzIterations(int base) {
  int scale = 1;
  if (const char* env = std::getenv("KVAULT_GGUF_FUZZ_SCALE"); env != nullptr) scale = std::max(1, std::atoi(env));
  return std::max(1, base * scale / kSanitizerSlowdown);
}

constexpr uint32_t kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ8_0 = 8, kQ4_K = 12, kQ8_K = 15;

std::string Bytes(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((seed + i * 31) & 0xff);
  return s;
}

void Put64(std::string& s, uint64_t at, uint64_t v) {
  ASSERT_LE(at + 8, s.size());
  std::memcpy(s.data() + at, &v, 8);
}
void Put32(std::string& s, uint64_t at, uint32_t v) {
  ASSERT_LE(at + 4, s.size());
  std::memcpy(s.data() + at, &v, 4);
}

// A file with one key of every scalar type, strings, arrays (of strings, nested, empty) and
// tensors of several types.
GgufWriter FullWriter() {
  GgufWriter w;
  w.Str("general.architecture", "llama")
      .U8("t.u8", 200)
      .I8("t.i8", -100)
      .U16("t.u16", 60000)
      .I16("t.i16", -30000)
      .U32("t.u32", 4000000000u)
      .I32("t.i32", -2000000000)
      .F32("t.f32", 1.5f)
      .Bool("t.bool", true)
      .Bool("t.false", false)
      .Str("t.str", std::string("h\xc3\xa9llo\0x", 8))
      .Str("t.empty", "")
      .U64("t.u64", 0xfedcba9876543210ull)
      .I64("t.i64", -(int64_t{1} << 62))
      .F64("t.f64", -2.25)
      .StrArray("t.strs", {"a", "", "ccc"})
      .Array("t.u32s", testing::kTU32, 3, EncU32(1) + EncU32(2) + EncU32(0xffffffffu))
      .Array("t.f32s", testing::kTF32, 2, testing::Enc(0.5f) + testing::Enc(-4.0f))
      .Array("t.i64s", testing::kTI64, 2, testing::Enc<int64_t>(-7) + testing::Enc<int64_t>(9))
      .Array("t.empty_arr", testing::kTU8, 0, "")
      .Array("t.nested", testing::kTArray, 2,
             EncArray(testing::kTI16, 2, testing::Enc<int16_t>(-1) + testing::Enc<int16_t>(2)) +
                 EncArray(testing::kTString, 1, EncStr("x")))
      .Array("t.u64_big", testing::kTU64, 1, EncU64(~0ull));
  w.Tensor("a.f32", {4, 2}, kF32, Bytes(32, 1));
  w.Tensor("b.f16", {3}, kF16, Bytes(6, 2));
  w.Tensor("c.q8_0", {64, 2}, kQ8_0, Bytes(4 * 34, 3));
  w.Tensor("d.q4_k", {256}, kQ4_K, Bytes(144, 4));
  return w;
}

void CheckFull(const GgufFile& f, const std::string& file_bytes) {
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.file_size(), file_bytes.size());
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.metadata().size(), 22u);

  EXPECT_EQ(f.GetString("general.architecture").value(), "llama");
  EXPECT_EQ(f.GetUint("t.u8").value(), 200u);
  EXPECT_EQ(f.Find("t.i8")->i, -100);
  EXPECT_EQ(f.Find("t.i8")->type, ValueType::kInt8);
  EXPECT_EQ(f.GetUint("t.u16").value(), 60000u);
  EXPECT_EQ(f.Find("t.i16")->i, -30000);
  EXPECT_EQ(f.GetUint("t.u32").value(), 4000000000u);
  EXPECT_EQ(f.Find("t.i32")->i, -2000000000);
  EXPECT_EQ(f.GetFloat("t.f32").value(), 1.5);
  EXPECT_TRUE(f.GetBool("t.bool").value());
  EXPECT_FALSE(f.GetBool("t.false").value());
  EXPECT_EQ(f.GetString("t.str").value(), std::string("h\xc3\xa9llo\0x", 8));
  EXPECT_EQ(f.GetString("t.empty").value(), "");
  EXPECT_EQ(f.GetUint("t.u64").value(), 0xfedcba9876543210ull);
  EXPECT_EQ(f.Find("t.i64")->i, -(int64_t{1} << 62));
  EXPECT_EQ(f.GetFloat("t.f64").value(), -2.25);
  EXPECT_EQ(f.GetStringArray("t.strs").value(), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(f.GetIntArray("t.u32s").value(), (std::vector<int64_t>{1, 2, 0xffffffffll}));
  EXPECT_EQ(f.GetFloatArray("t.u32s").value(), (std::vector<double>{1, 2, 4294967295.0}));
  EXPECT_EQ(f.GetFloatArray("t.f32s").value(), (std::vector<double>{0.5, -4.0}));
  EXPECT_EQ(f.GetIntArray("t.i64s").value(), (std::vector<int64_t>{-7, 9}));
  EXPECT_TRUE(f.GetIntArray("t.empty_arr").value().empty());
  const Value* nested = f.Find("t.nested");
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->type, ValueType::kArray);
  EXPECT_EQ(nested->element_type, ValueType::kArray);
  ASSERT_EQ(nested->array.size(), 2u);
  EXPECT_EQ(nested->array[0].element_type, ValueType::kInt16);
  ASSERT_EQ(nested->array[0].array.size(), 2u);
  EXPECT_EQ(nested->array[0].array[0].i, -1);
  EXPECT_EQ(nested->array[0].array[1].i, 2);
  EXPECT_EQ(nested->array[1].element_type, ValueType::kString);
  ASSERT_EQ(nested->array[1].array.size(), 1u);
  EXPECT_EQ(nested->array[1].array[0].s, "x");

  ASSERT_EQ(f.tensors().size(), 4u);
  struct Want {
    const char* name;
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t n_elements, n_bytes;
    uint8_t seed;
  };
  const Want want[] = {{"a.f32", {4, 2}, kF32, 8, 32, 1},
                       {"b.f16", {3}, kF16, 3, 6, 2},
                       {"c.q8_0", {64, 2}, kQ8_0, 128, 136, 3},
                       {"d.q4_k", {256}, kQ4_K, 256, 144, 4}};
  for (const Want& w : want) {
    SCOPED_TRACE(w.name);
    const TensorInfo* t = f.FindTensor(w.name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dims, w.dims);
    EXPECT_EQ(t->type, w.type);
    EXPECT_EQ(t->n_elements, w.n_elements);
    EXPECT_EQ(t->n_bytes, w.n_bytes);
    EXPECT_EQ(t->offset % 32, 0u);
    std::span<const uint8_t> data = f.TensorData(*t);
    ASSERT_EQ(data.size(), w.n_bytes);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(data.data()), data.size()), Bytes(w.n_bytes, w.seed));
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(data.data()), data.size()),
              file_bytes.substr(f.data_offset() + t->offset, w.n_bytes));
  }
  EXPECT_EQ(f.FindTensor("missing"), nullptr);
  EXPECT_EQ(f.tensors()[0].name, "a.f32");  // file order kept
  EXPECT_EQ(f.tensors()[3].name, "d.q4_k");
}

class TempFile {
 public:
  explicit TempFile(const std::string& contents) {
    char tmpl[] = "/tmp/kvault_gguf_test_XXXXXX";
    int fd = ::mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    path_ = tmpl;
    size_t done = 0;
    while (fd >= 0 && done < contents.size()) {
      ssize_t w = ::write(fd, contents.data() + done, contents.size() - done);
      if (w <= 0) break;
      done += static_cast<size_t>(w);
    }
    EXPECT_EQ(done, contents.size());
    if (fd >= 0) ::close(fd);
  }
  ~TempFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Expects a non-OK status with `code` whose message contains every one of `parts`.
void ExpectError(const Status& s, Code code, std::initializer_list<const char*> parts) {
  EXPECT_EQ(s.code(), code) << s.ToString();
  for (const char* p : parts) EXPECT_NE(s.message().find(p), std::string::npos) << "missing \"" << p << "\" in " << s.ToString();
}

Status Parse(std::string bytes) {
  auto r = GgufFile::FromBytes(std::move(bytes), "test.gguf");
  return r.ok() ? Status::OK() : r.status();
}

TEST(GgufFileTest, RoundTripFromBytes) {
  GgufWriter w = FullWriter();
  const std::string bytes = w.Build();
  auto f = GgufFile::FromBytes(bytes, "mem.gguf");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->path(), "mem.gguf");
  CheckFull(**f, bytes);
}

TEST(GgufFileTest, RoundTripOpen) {
  GgufWriter w = FullWriter();
  const std::string bytes = w.Build();
  TempFile tmp(bytes);
  auto f = GgufFile::Open(tmp.path());
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->path(), tmp.path());
  CheckFull(**f, bytes);
}

TEST(GgufFileTest, Version2AndCustomAlignment) {
  GgufWriter w;
  w.version = 2;
  w.alignment = 256;
  w.U32("general.alignment", 256).Str("k", "v");
  w.Tensor("t0", {5}, kF32, Bytes(20, 7));
  w.Tensor("t1", {32, 3}, kQ4_0, Bytes(3 * 18, 8));
  const std::string bytes = w.Build();
  auto f = GgufFile::FromBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ((*f)->alignment(), 256u);
  EXPECT_EQ((*f)->data_offset() % 256, 0u);
  EXPECT_EQ((*f)->FindTensor("t1")->offset, 256u);
  EXPECT_EQ((*f)->FindTensor("t1")->n_bytes, 54u);
  EXPECT_EQ((*f)->path(), "<memory>");
}

TEST(GgufFileTest, NoTensorsAndNoPadding) {
  GgufWriter w;
  w.Str("a", "b");
  std::string bytes = w.Build();
  // The writer pads to the alignment; a file that stops right after the metadata is fine too.
  auto f = GgufFile::FromBytes(bytes.substr(0, 24 + 8 + 1 + 4 + 8 + 1));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_TRUE((*f)->tensors().empty());
  EXPECT_EQ((*f)->GetString("a").value(), "b");
}

TEST(GgufFileTest, TypedGetterErrors) {
  GgufWriter w = FullWriter();
  w.I32("neg", -5).Array("big_u64s", testing::kTU64, 1, EncU64(~0ull));
  auto f = GgufFile::FromBytes(w.Build(), "g.gguf");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const GgufFile& g = **f;
  ExpectError(g.GetString("nope").status(), Code::kNotFound, {"nope", "g.gguf"});
  ExpectError(g.GetUint("nope").status(), Code::kNotFound, {"nope"});
  ExpectError(g.GetString("t.u32").status(), Code::kInvalidArgument, {"t.u32", "uint32", "string"});
  ExpectError(g.GetUint("t.str").status(), Code::kInvalidArgument, {"t.str"});
  ExpectError(g.GetUint("neg").status(), Code::kInvalidArgument, {"neg", "negative"});
  ExpectError(g.GetUint("t.f32").status(), Code::kInvalidArgument, {"t.f32"});
  ExpectError(g.GetUint("t.bool").status(), Code::kInvalidArgument, {"t.bool"});
  ExpectError(g.GetBool("t.u8").status(), Code::kInvalidArgument, {"t.u8"});
  ExpectError(g.GetFloat("t.str").status(), Code::kInvalidArgument, {"t.str"});
  ExpectError(g.GetStringArray("t.u32s").status(), Code::kInvalidArgument, {"t.u32s", "array of uint32", "array of strings"});
  ExpectError(g.GetStringArray("t.str").status(), Code::kInvalidArgument, {"t.str"});
  ExpectError(g.GetFloatArray("t.strs").status(), Code::kInvalidArgument, {"t.strs"});
  ExpectError(g.GetIntArray("t.f32s").status(), Code::kInvalidArgument, {"t.f32s"});
  ExpectError(g.GetIntArray("big_u64s").status(), Code::kInvalidArgument, {"big_u64s", "int64"});
  // Widening getters.
  EXPECT_EQ(g.GetUint("t.i16").ok(), false);  // negative
  EXPECT_EQ(g.GetFloat("t.i32").value(), -2000000000.0);
  EXPECT_EQ(g.GetFloat("t.u8").value(), 200.0);
  EXPECT_EQ(g.GetIntArray("t.u32s").value().size(), 3u);
}

TEST(GgufFileTest, BadMagic) {
  std::string bytes = FullWriter().Build();
  bytes[0] = 'g';
  ExpectError(Parse(bytes), Code::kCorruption, {"test.gguf", "magic", "at offset 0"});
  ExpectError(Parse("GGU"), Code::kCorruption, {"magic"});
  ExpectError(Parse(""), Code::kCorruption, {"magic"});
}

TEST(GgufFileTest, UnsupportedVersions) {
  for (uint32_t v : {0u, 1u, 4u, 0x03000000u}) {
    SCOPED_TRACE(v);
    GgufWriter w = FullWriter();
    w.version = v;
    ExpectError(Parse(w.Build()), Code::kCorruption, {"version", std::to_string(v).c_str(), "2 and 3", "at offset 4"});
  }
  GgufWriter w1 = FullWriter();
  w1.version = 1;
  Status s = Parse(w1.Build());
  EXPECT_NE(s.message().find("version 1 files"), std::string::npos) << s.ToString();
}

// A small valid file cut at every byte boundary: each prefix is an error, none crashes.
TEST(GgufFileTest, TruncatedAtEveryByte) {
  GgufWriter w = FullWriter();
  const std::string bytes = w.Build();
  ASSERT_TRUE(Parse(bytes).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    Status s = Parse(bytes.substr(0, n));
    ASSERT_FALSE(s.ok()) << "prefix of " << n << " of " << bytes.size() << " bytes parsed";
    ASSERT_EQ(s.code(), Code::kCorruption) << n << ": " << s.ToString();
    ASSERT_NE(s.message().find("test.gguf"), std::string::npos) << s.ToString();
  }
}

TEST(GgufFileTest, TruncatedFileOnDisk) {
  const std::string bytes = FullWriter().Build();
  TempFile tmp(bytes.substr(0, bytes.size() - 1));
  auto f = GgufFile::Open(tmp.path());
  ASSERT_FALSE(f.ok());
  ExpectError(f.status(), Code::kCorruption, {tmp.path().c_str(), "d.q4_k", "past the end"});
}

TEST(GgufFileTest, OpenErrors) {
  auto missing = GgufFile::Open("/nonexistent/dir/x.gguf");
  ExpectError(missing.status(), Code::kNotFound, {"x.gguf"});
  auto dir = GgufFile::Open("/tmp");
  ExpectError(dir.status(), Code::kInvalidArgument, {"not a regular file"});
  TempFile empty("");
  ExpectError(GgufFile::Open(empty.path()).status(), Code::kCorruption, {"too short"});
  TempFile bad(std::string(100, 'x'));
  ExpectError(GgufFile::Open(bad.path()).status(), Code::kCorruption, {"magic"});
}

// Counts and lengths of 2^63 and 2^64-1 (and 2^60) in every place a count or length lives:
// each is refused before anything is allocated for it.
TEST(GgufFileTest, HugeCountsAndLengths) {
  for (uint64_t huge : {uint64_t{1} << 60, uint64_t{1} << 63, ~uint64_t{0}, uint64_t{1} << 32}) {
    SCOPED_TRACE(huge);
    {  // tensor count
      GgufWriter w = FullWriter();
      w.tensor_count = huge;
      ExpectError(Parse(w.Build()), Code::kCorruption, {"tensor count", "at offset 8"});
    }
    {  // kv count
      GgufWriter w = FullWriter();
      w.kv_count = huge;
      ExpectError(Parse(w.Build()), Code::kCorruption, {"metadata count", "at offset 16"});
    }
    {  // key length
      GgufWriter w = FullWriter();
      std::string bytes = w.Build();
      Put64(bytes, w.layout().kvs_begin, huge);
      ExpectError(Parse(bytes), Code::kCorruption, {"metadata key", "past the end", "at offset 24"});
    }
    {  // string value length
      GgufWriter w;
      w.Str("k", "value");
      std::string bytes = w.Build();
      Put64(bytes, 24 + 8 + 1 + 4, huge);
      ExpectError(Parse(bytes), Code::kCorruption, {"string value", "past the end", "at offset 37"});
    }
    {  // array count, scalar and string elements, and a nested array's count
      GgufWriter w;
      w.Array("a", testing::kTU8, huge, "abc");
      ExpectError(Parse(w.Build()), Code::kCorruption, {"\"a\"", "array of", "past the end"});
      GgufWriter w2;
      w2.Array("s", testing::kTString, huge, EncStr("x"));
      ExpectError(Parse(w2.Build()), Code::kCorruption, {"\"s\"", "string"});
      GgufWriter w3;
      w3.Array("n", testing::kTArray, 1, EncArray(testing::kTU64, huge, EncU64(1)));
      ExpectError(Parse(w3.Build()), Code::kCorruption, {"\"n\"", "uint64"});
      GgufWriter w4;
      w4.Array("m", testing::kTArray, huge, EncArray(testing::kTU64, 1, EncU64(1)));
      ExpectError(Parse(w4.Build()), Code::kCorruption, {"\"m\""});
    }
    {  // string inside an array
      GgufWriter w;
      w.Array("s", testing::kTString, 2, EncStr("x") + EncU64(huge) + "yy");
      ExpectError(Parse(w.Build()), Code::kCorruption, {"string value", "past the end"});
    }
    {  // tensor name length
      GgufWriter w = FullWriter();
      std::string bytes = w.Build();
      Put64(bytes, w.layout().tensor_info_begin[1], huge);
      ExpectError(Parse(bytes), Code::kCorruption, {"tensor name", "past the end"});
    }
  }
}

TEST(GgufFileTest, OffsetsPastTheEnd) {
  for (uint64_t off : {uint64_t{1} << 20, (~uint64_t{0}) & ~uint64_t{31}, uint64_t{1} << 63}) {
    SCOPED_TRACE(off);
    GgufWriter w = FullWriter();
    std::string bytes = w.Build();
    Put64(bytes, w.layout().tensor_offset_at[2], off);
    ExpectError(Parse(bytes), Code::kCorruption, {"c.q8_0", "past the end"});
  }
  // The last tensor's bytes end one byte after the file.
  GgufWriter w = FullWriter();
  std::string bytes = w.Build();
  ExpectError(Parse(bytes.substr(0, bytes.size() - 1)), Code::kCorruption, {"d.q4_k", "past the end", "144 bytes"});
  // Dims that make the data larger than the file.
  GgufWriter w2;
  w2.Tensor("big", {1ull << 40}, kF32, Bytes(64, 1));
  ExpectError(Parse(w2.Build()), Code::kCorruption, {"big", "past the end"});
}

TEST(GgufFileTest, MisalignedOffset) {
  GgufWriter w = FullWriter();
  std::string bytes = w.Build();
  Put64(bytes, w.layout().tensor_offset_at[1], 40);
  ExpectError(Parse(bytes), Code::kCorruption, {"b.f16", "offset 40", "alignment 32"});
  GgufWriter w2;
  w2.U32("general.alignment", 64);
  TensorSpec t{"t", {8}, kF32, Bytes(32, 1), uint64_t{32}, std::nullopt};
  w2.Tensor(t);
  ExpectError(Parse(w2.Build()), Code::kCorruption, {"offset 32", "alignment 64"});
}

TEST(GgufFileTest, BadAlignment) {
  for (uint32_t a : {0u, 3u, 48u}) {
    GgufWriter w;
    w.U32("general.alignment", a);
    ExpectError(Parse(w.Build()), Code::kCorruption, {"general.alignment", "power of two", "at offset 24"});
  }
  GgufWriter w;
  w.Str("x", "y").U64("general.alignment", 32);
  ExpectError(Parse(w.Build()), Code::kCorruption, {"general.alignment", "uint64", "at offset 46"});
}

TEST(GgufFileTest, OverlappingTensors) {
  GgufWriter w;
  w.Tensor(TensorSpec{"a", {16}, kF32, Bytes(64, 1), uint64_t{0}, std::nullopt});
  w.Tensor(TensorSpec{"b", {8}, kF32, Bytes(32, 2), uint64_t{32}, std::nullopt});
  ExpectError(Parse(w.Build()), Code::kCorruption, {"\"a\"", "\"b\"", "overlap"});
  GgufWriter same;
  same.Tensor(TensorSpec{"a", {8}, kF32, Bytes(32, 1), uint64_t{64}, std::nullopt});
  same.Tensor(TensorSpec{"b", {8}, kF32, Bytes(32, 2), uint64_t{64}, std::nullopt});
  ExpectError(Parse(same.Build()), Code::kCorruption, {"overlap"});
  // Adjacent is fine, in any order in the file.
  GgufWriter adj;
  adj.Tensor(TensorSpec{"b", {8}, kF32, Bytes(32, 2), uint64_t{32}, std::nullopt});
  adj.Tensor(TensorSpec{"a", {8}, kF32, Bytes(32, 1), uint64_t{0}, std::nullopt});
  EXPECT_TRUE(Parse(adj.Build()).ok());
}

TEST(GgufFileTest, UnknownValueType) {
  GgufWriter w;
  w.Str("ok", "1").Kv("bad", 13, EncU32(0));
  ExpectError(Parse(w.Build()), Code::kCorruption, {"\"bad\"", "unknown value type 13"});
  GgufWriter w2;
  w2.Array("arr", 0xffffffffu, 1, "x");
  ExpectError(Parse(w2.Build()), Code::kCorruption, {"\"arr\"", "unknown value type 4294967295"});
}

TEST(GgufFileTest, UnknownGgmlType) {
  for (uint32_t type : {4u, 31u, 99u, 0xffffffffu}) {
    GgufWriter w = FullWriter();
    std::string bytes = w.Build();
    Put32(bytes, w.layout().tensor_type_at[1], type);
    ExpectError(Parse(bytes), Code::kInvalidArgument,
                {"\"b.f16\"", ("ggml type " + std::to_string(type)).c_str(), "which kvault cannot read", "test.gguf"});
  }
}

// A type of known size that kvault cannot decode opens; decoding it names the type.
TEST(GgufFileTest, KnownSizeUndecodableTypeOpens) {
  GgufWriter w;
  w.Tensor("k", {512}, kQ8_K, Bytes(2 * 292, 1));
  w.Tensor("i", {3}, 26 /* I32 */, Bytes(12, 2));
  auto f = GgufFile::FromBytes(w.Build());
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const TensorInfo* t = (*f)->FindTensor("k");
  EXPECT_EQ(t->n_bytes, 584u);
  EXPECT_EQ(GgmlTypeName(t->type), "Q8_K");
  std::vector<float> out(512);
  Status s = DequantizeToFloat(t->type, (*f)->TensorData(*t), 512, out.data());
  ExpectError(s, Code::kInvalidArgument, {"Q8_K"});
}

TEST(GgufFileTest, BadDims) {
  {  // n_dims 5 (and 0)
    for (uint32_t nd : {5u, 0u, 1000u}) {
      GgufWriter w;
      TensorSpec t{"t", {1, 1, 1, 1, 1}, kF32, Bytes(4, 1), std::nullopt, nd};
      if (nd == 0) t.dims.clear();
      w.Tensor(t);
      ExpectError(Parse(w.Build()), Code::kCorruption, {"\"t\"", (std::to_string(nd) + " dimensions").c_str(), "1 to 4"});
    }
  }
  {  // zero dim
    GgufWriter w;
    w.Tensor("z", {4, 0}, kF32, "");
    ExpectError(Parse(w.Build()), Code::kCorruption, {"\"z\"", "zero dimension"});
  }
  {  // element count overflow
    GgufWriter w;
    w.Tensor("o", {1ull << 32, 1ull << 32}, kF32, "");
    ExpectError(Parse(w.Build()), Code::kCorruption, {"\"o\"", "overflow"});
    GgufWriter w2;
    w2.Tensor("o", {~0ull}, kF32, "");
    ExpectError(Parse(w2.Build()), Code::kCorruption, {"\"o\"", "overflow"});
    GgufWriter w3;
    w3.Tensor("o", {3, 3, 1ull << 31, 1ull << 31}, kF32, "");
    ExpectError(Parse(w3.Build()), Code::kCorruption, {"\"o\"", "overflow"});
  }
  {  // byte size overflow (2^62 F32 elements are 2^64 bytes)
    GgufWriter w;
    w.Tensor("b", {1ull << 62}, kF32, "");
    ExpectError(Parse(w.Build()), Code::kCorruption, {"\"b\"", "overflows 64 bits"});
  }
  {  // ne[0] not a multiple of the block
    GgufWriter w;
    w.Tensor("q", {16, 2}, kQ4_0, Bytes(18, 1));
    ExpectError(Parse(w.Build()), Code::kCorruption, {"\"q\"", "Q4_0", "block size 32"});
  }
}

TEST(GgufFileTest, Duplicates) {
  GgufWriter w;
  w.Str("a", "1").U32("b", 2).Str("a", "3");
  ExpectError(Parse(w.Build()), Code::kCorruption, {"duplicate metadata key \"a\""});
  GgufWriter t;
  t.Tensor("x", {8}, kF32, Bytes(32, 1)).Tensor("x", {8}, kF32, Bytes(32, 2));
  ExpectError(Parse(t.Build()), Code::kCorruption, {"duplicate tensor name \"x\""});
}

TEST(GgufFileTest, ArrayNesting) {
  auto nest = [](int depth) {  // depth arrays, each holding the next; the innermost one u8
    std::string v;
    for (int i = 1; i < depth; ++i) v += EncU32(testing::kTArray) + EncU64(1);
    v += EncArray(testing::kTU8, 1, "\x05");
    GgufWriter w;
    w.Kv("deep", testing::kTArray, v);
    return w.Build();
  };
  EXPECT_TRUE(Parse(nest(8)).ok());
  ExpectError(Parse(nest(9)), Code::kCorruption, {"\"deep\"", "nests arrays deeper than 8"});
  ExpectError(Parse(nest(100000)), Code::kCorruption, {"nests arrays"});
}

// Random byte flips and u64 overwrites, from a fixed seed; each parse is OK or a Status.
// Returns how many parsed OK.
int Fuzz(const std::string& base, int iterations, uint64_t seed, const std::vector<std::pair<uint64_t, uint64_t>>& regions) {
  std::mt19937_64 rng(seed);
  int ok = 0;
  for (int it = 0; it < iterations; ++it) {
    std::string bytes = base;
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations; ++m) {
      const auto& [lo, hi] = regions[rng() % regions.size()];
      uint64_t pos = lo + rng() % (hi - lo);
      if (rng() % 2 == 0) {
        bytes[pos] = static_cast<char>(bytes[pos] ^ static_cast<char>(1 + rng() % 255));
      } else {
        pos = std::min<uint64_t>(pos, bytes.size() - 8);
        uint64_t v = rng();
        switch (rng() % 6) {
          case 0: v &= 0xff; break;
          case 1: v &= 0xffff; break;
          case 2: v = uint64_t{1} << 63; break;
          case 3: v = ~uint64_t{0}; break;
          case 4: v = 0; break;
          default: break;
        }
        std::memcpy(bytes.data() + pos, &v, 8);
      }
    }
    auto f = GgufFile::FromBytes(std::move(bytes), "fuzz.gguf");
    if (f.ok()) {
      ++ok;
      // An accepted file's tensors are inside it.
      for (const TensorInfo& t : (*f)->tensors()) {
        EXPECT_LE((*f)->data_offset() + t.offset + t.n_bytes, (*f)->file_size());
      }
    } else {
      EXPECT_FALSE(f.status().message().empty());
    }
  }
  return ok;
}

TEST(GgufFileTest, FuzzSmallFile) {
  const std::string bytes = FullWriter().Build();
  const int iterations = FuzzIterations(6000);
  const int ok = Fuzz(bytes, iterations, 12345, {{0, bytes.size()}});
  // Flips in tensor data or string contents keep the file valid: some must parse.
  EXPECT_GT(ok, 0);
  EXPECT_LT(ok, iterations);
  std::printf("small-file fuzz: %d of %d mutated files parsed OK\n", ok, iterations);
}

std::string ReadPrefix(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string s(n, '\0');
  in.read(s.data(), static_cast<std::streamsize>(n));
  s.resize(static_cast<size_t>(in.gcount()));
  return s;
}

TEST(GgufFileTest, SmolLM2Open) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  auto r = GgufFile::Open(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const GgufFile& f = **r;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(f.metadata().size(), 33u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.GetString("general.architecture").value(), "llama");
  EXPECT_EQ(f.GetUint("llama.block_count").value(), 30u);
  EXPECT_EQ(f.GetUint("llama.embedding_length").value(), 576u);
  EXPECT_NEAR(f.GetFloat("llama.rope.freq_base").value(), 100000.0, 1e-3);
  EXPECT_FALSE(f.GetBool("tokenizer.ggml.add_bos_token").value());
  auto tokens = f.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();
  EXPECT_EQ(tokens->size(), 49152u);
  EXPECT_EQ((*tokens)[0], "<|endoftext|>");
  EXPECT_EQ(f.GetIntArray("tokenizer.ggml.token_type").value().size(), 49152u);
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.merges").value().size(), 48900u);
  const TensorInfo* emb = f.FindTensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, static_cast<uint32_t>(GgmlType::kQ8_0));
  EXPECT_EQ(emb->dims, (std::vector<uint64_t>{576, 49152}));
  EXPECT_EQ(emb->n_bytes, 576ull * 49152 / 32 * 34);
  EXPECT_EQ(f.FindTensor("blk.0.ffn_down.weight")->type, static_cast<uint32_t>(GgmlType::kQ4_1));
  EXPECT_EQ(f.FindTensor("blk.0.attn_norm.weight")->type, static_cast<uint32_t>(GgmlType::kF32));
  uint64_t end = 0;
  for (const TensorInfo& t : f.tensors()) end = std::max(end, f.data_offset() + t.offset + t.n_bytes);
  EXPECT_EQ(end, f.file_size());
}

// The first few MB of the real file: the header parses, but tensors point past the end.
TEST(GgufFileTest, SmolLM2Truncated) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  for (size_t mb : {1, 2, 4}) {
    Status s = Parse(ReadPrefix(path, mb << 20));
    if (mb == 1) {
      ExpectError(s, Code::kCorruption, {"test.gguf"});  // inside the metadata
    } else {
      ExpectError(s, Code::kCorruption, {"token_embd.weight", "past the end"});
    }
  }
}

TEST(GgufFileTest, FuzzSmolLM2Header) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  auto full = GgufFile::Open(path);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  const uint64_t data_offset = (*full)->data_offset();
  const std::string bytes = ReadPrefix(path, 2 << 20);
  ASSERT_EQ(bytes.size(), 2u << 20);
  ASSERT_LT(data_offset, bytes.size());
  // A third of the mutations anywhere, a third in the header and first keys, a third in the
  // tensor infos (the last ~16 KB before the data section).
  const std::vector<std::pair<uint64_t, uint64_t>> regions = {
      {0, bytes.size()}, {0, 4096}, {data_offset - 16384, data_offset}};
  const int iterations = FuzzIterations(2000);
  const int ok = Fuzz(bytes, iterations, 777, regions);
  std::printf("SmolLM2 header fuzz: %d of %d mutated 2 MB prefixes parsed OK\n", ok, iterations);
}

}  // namespace
}  // namespace kvault::gguf
