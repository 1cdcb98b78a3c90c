#include "engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace kvault::engine {

uint32_t SampleFrom(const torch::Tensor& row, const SamplingParams& params, std::mt19937_64& rng) {
  if (params.temperature <= 0.0f) return static_cast<uint32_t>(row.argmax().item<int64_t>());
  auto probs = torch::softmax(row / params.temperature, -1);
  auto [sorted, order] = probs.sort(/*dim=*/-1, /*descending=*/true);
  auto cum = sorted.cumsum(-1);
  const float* p = sorted.data_ptr<float>();
  const float* cp = cum.data_ptr<float>();
  int64_t keep = 1;
  while (keep < sorted.size(0) && cp[keep - 1] < params.top_p) ++keep;
  const double total = cp[keep - 1];
  double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (int64_t i = 0; i < keep; ++i) {
    u -= p[i];
    if (u <= 0) return static_cast<uint32_t>(order[i].item<int64_t>());
  }
  return static_cast<uint32_t>(order[keep - 1].item<int64_t>());
}

TokenLogprobs LogprobsOf(const torch::Tensor& row, uint32_t token, int k) {
  const torch::Tensor lp = torch::log_softmax(row, -1).contiguous();
  const float* p = lp.data_ptr<float>();
  const int64_t n = lp.size(0);
  TokenLogprobs out;
  out.token = token;
  out.logprob = static_cast<int64_t>(token) < n ? p[token] : -std::numeric_limits<float>::infinity();
  const int64_t top = std::min<int64_t>(k, n);
  if (top == 0) return out;
  auto key = [p](uint32_t id) { return std::isnan(p[id]) ? -std::numeric_limits<float>::infinity() : p[id]; };
  std::vector<uint32_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 0u);
  std::partial_sort(ids.begin(), ids.begin() + top, ids.end(), [&](uint32_t a, uint32_t b) {
    const float ka = key(a), kb = key(b);
    return ka > kb || (ka == kb && a < b);
  });
  out.top.reserve(static_cast<size_t>(top));
  for (int64_t i = 0; i < top; ++i) out.top.emplace_back(ids[i], p[ids[i]]);
  return out;
}

}  // namespace kvault::engine
