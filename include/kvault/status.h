// Status and Result<T>: how every kvault API reports failure (no exceptions at the boundary).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace kvault {

enum class Code : uint8_t {
  kOk = 0,
  kNotFound,           // a cache miss, or a file that does not exist
  kCorruption,         // a checksum, magic or layout mismatch: the data is never served
  kInvalidArgument,    // the caller's arguments are wrong
  kIOError,            // the OS refused an operation (EIO and friends)
  kNoSpace,            // ENOSPC or a configured cap that cannot be met
  kResourceExhausted,  // every slot is pinned or in flight; try again later
  kUnavailable,        // the tier is disabled or degraded
  kPermissionDenied,   // the caller may not do this (wrong token, another tenant's namespace)
};

const char* CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status OK() { return {}; }
  static Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status Corruption(std::string m) { return {Code::kCorruption, std::move(m)}; }
  static Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status IOError(std::string m) { return {Code::kIOError, std::move(m)}; }
  static Status NoSpace(std::string m) { return {Code::kNoSpace, std::move(m)}; }
  static Status ResourceExhausted(std::string m) { return {Code::kResourceExhausted, std::move(m)}; }
  static Status Unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
  static Status PermissionDenied(std::string m) { return {Code::kPermissionDenied, std::move(m)}; }
  // Maps an errno value from a failed system call to a Status.
  static Status FromErrno(int err, const std::string& context);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit on purpose
  Result(Status status) : status_(std::move(status)) {}  // NOLINT
  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;  // OK iff value_ holds a value
};

#define KVAULT_RETURN_IF_ERROR(expr)          \
  do {                                        \
    ::kvault::Status _st = (expr);            \
    if (!_st.ok()) return _st;                \
  } while (0)

}  // namespace kvault
