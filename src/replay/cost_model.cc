#include "replay/cost_model.h"

#include <algorithm>

namespace kvault::replay {

uint64_t ModelShape::kv_bytes_per_token() const {
  if (kv_bytes_per_token_override > 0) return kv_bytes_per_token_override;
  return uint64_t{2} * layers * kv_heads * head_dim * dtype_bytes;
}

// 2 FLOPs per parameter per token.
double ModelShape::WeightFlops(uint64_t n) const { return 2.0 * params * static_cast<double>(n); }

// QK^T and PV: 2 * 2 * d FLOPs per (query, key) pair per layer, over cached + causal new keys.
double ModelShape::AttentionFlops(uint64_t n, uint64_t cached) const {
  const double nn = static_cast<double>(n), c = static_cast<double>(cached);
  return AttentionFlopsPerPair() * (c * nn + nn * nn / 2.0);
}

double ModelShape::AttentionFlopsPerPair() const { return 4.0 * layers * (double(q_heads) * head_dim); }

const std::vector<std::string>& ModelPresetNames() {
  static const std::vector<std::string> names = {"llama3-8b", "llama3-70b", "qwen2.5-7b", "qwen2.5-72b", "mistral-7b"};
  return names;
}

Result<ModelShape> ModelPreset(const std::string& name) {
  // Shapes from the models' config.json files.
  if (name == "llama3-8b") return ModelShape{name, 32, 32, 8, 128, 2, 8.03e9};
  if (name == "llama3-70b") return ModelShape{name, 80, 64, 8, 128, 2, 70.6e9};
  if (name == "qwen2.5-7b") return ModelShape{name, 28, 28, 4, 128, 2, 7.62e9};
  if (name == "qwen2.5-72b") return ModelShape{name, 80, 64, 8, 128, 2, 72.7e9};
  if (name == "mistral-7b") return ModelShape{name, 32, 32, 8, 128, 2, 7.24e9};
  std::string all;
  for (const auto& n : ModelPresetNames()) all += (all.empty() ? "" : ", ") + n;
  return Status::InvalidArgument("unknown model preset '" + name + "' (available: " + all + ")");
}

planner::LoadPlanner::Options CostModel::PinnedPlannerOptions(const ModelShape& m,
                                                             planner::LoadPlanner::Options base) const {
  base.layers = static_cast<int>(std::max<uint32_t>(m.layers, 1));
  base.fixed_t2_read_gbps = t2_read_gbps;
  base.fixed_copy_gbps = pcie_gbps;
  const double attention_rate = (attention_tflops > 0 ? attention_tflops : prefill_tflops) * 1e12;
  base.fixed_prefill.per_token_s = m.WeightFlops(1) / (prefill_tflops * 1e12);
  base.fixed_prefill.per_pair_s = m.AttentionFlopsPerPair() / attention_rate;
  return base;
}

Status CostModel::Validate() const {
  if (!(prefill_tflops > 0) || !(pcie_gbps > 0) || !(t2_read_gbps > 0) || !(t2_write_gbps > 0) || !(attention_tflops >= 0) ||
      !(decode_ms_per_token >= 0) || !(request_overhead_ms >= 0)) {
    return Status::InvalidArgument("cost model rates must be positive");
  }
  return Status::OK();
}

}  // namespace kvault::replay
