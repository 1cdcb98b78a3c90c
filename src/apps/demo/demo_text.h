// Text helpers of `kvault demo`'s table and messages (printf into a std::string, 12,345, 1.5 MiB).
#pragma once

#include <cstdint>
#include <string>

namespace kvault::demo {

std::string Printf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Thousands(int64_t v);  // 12345 -> "12,345"
std::string Bytes(double b);       // 1572864 -> "1.5 MiB"

}  // namespace kvault::demo
