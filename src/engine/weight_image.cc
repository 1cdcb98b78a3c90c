// A model's weights as one contiguous image (weight_image.h): the plan (tensor order, offsets,
// the fused groups back to back), writing an image from tensors, and tensors as views of an
// image's arena.
#include "engine/weight_image.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace kvault::engine {
namespace {

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Whether `name` continues the group of the tensor before it in ForEachWeightTensor's order:
// k and v follow q (weights and biases alike), up follows gate. Such a tensor starts right
// where the previous one ends; every other tensor starts a new, aligned group.
bool ContinuesGroup(const std::string& name) {
  for (const char* suffix : {"self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_proj.bias",
                             "self_attn.v_proj.bias", "mlp.up_proj.weight"}) {
    if (name.ends_with(suffix)) return true;
  }
  return false;
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The tensors of `plan` and the slots of `w` they fill, in plan order; kInvalidArgument when
// the plan is not the config's.
Status MatchPlan(const ModelConfig& config, const WeightImagePlan& plan, ModelWeights& w,
                 std::vector<torch::Tensor*>& slots) {
  Status status;
  size_t i = 0;
  ForEachWeightTensor(config, w, [&](const std::string& name, const std::vector<int64_t>& shape, torch::Tensor& slot) {
    if (!status.ok()) return;
    if (i >= plan.tensors.size() || plan.tensors[i].name != name || plan.tensors[i].shape != shape) {
      status = Status::InvalidArgument("weight image: the plan does not match the config at tensor " + name);
      return;
    }
    slots.push_back(&slot);
    ++i;
  });
  KVAULT_RETURN_IF_ERROR(status);
  if (i != plan.tensors.size()) return Status::InvalidArgument("weight image: the plan has more tensors than the config");
  return Status::OK();
}

}  // namespace

WeightImagePlan PlanWeightImage(const ModelConfig& config, torch::ScalarType dtype) {
  WeightImagePlan plan;
  plan.dtype = dtype;
  const uint64_t element = c10::elementSize(dtype);
  ModelWeights shapes_only;
  uint64_t at = 0;
  ForEachWeightTensor(config, shapes_only, [&](const std::string& name, const std::vector<int64_t>& shape, torch::Tensor&) {
    if (!ContinuesGroup(name)) at = AlignUp(at, kImageAlignment);
    ImageTensor t;
    t.name = name;
    t.shape = shape;
    t.offset = at;
    t.bytes = static_cast<uint64_t>(Numel(shape)) * element;
    at += t.bytes;
    plan.tensors.push_back(std::move(t));
  });
  plan.bytes = AlignUp(at, kImageAlignment);
  return plan;
}

Status WriteWeightImageRange(const ModelConfig& config, const ModelWeights& weights, const WeightImagePlan& plan,
                             uint64_t offset, std::span<std::byte> out) {
  if (offset + out.size() > plan.bytes) {
    return Status::InvalidArgument("weight image: range [" + std::to_string(offset) + ", " +
                                   std::to_string(offset + out.size()) + ") is outside the image of " +
                                   std::to_string(plan.bytes) + " bytes");
  }
  ModelWeights w = weights;  // shallow: tensor handles only
  std::vector<torch::Tensor*> slots;
  KVAULT_RETURN_IF_ERROR(MatchPlan(config, plan, w, slots));
  const uint64_t end = offset + out.size();
  uint64_t filled = offset;  // bytes before this are written
  auto zero_to = [&](uint64_t upto) {
    if (upto > filled) std::memset(out.data() + (filled - offset), 0, upto - filled);
    filled = std::max(filled, upto);
  };
  for (size_t i = 0; i < slots.size() && filled < end; ++i) {
    const ImageTensor& t = plan.tensors[i];
    if (t.offset + t.bytes <= offset) continue;
    if (t.offset >= end) break;
    const torch::Tensor& src = *slots[i];
    if (!src.defined() || !src.device().is_cpu() || src.scalar_type() != plan.dtype ||
        static_cast<uint64_t>(src.numel()) * src.element_size() != t.bytes) {
      return Status::InvalidArgument("weight image: tensor " + t.name + " is not a CPU " +
                                     std::string(c10::toString(plan.dtype)) + " tensor of the planned shape");
    }
    const torch::Tensor c = src.is_contiguous() ? src : src.contiguous();
    const uint64_t from = std::max(offset, t.offset), to = std::min(end, t.offset + t.bytes);
    zero_to(from);
    std::memcpy(out.data() + (from - offset), static_cast<const std::byte*>(c.data_ptr()) + (from - t.offset), to - from);
    filled = to;
  }
  zero_to(end);
  return Status::OK();
}

Status WriteWeightImage(const ModelConfig& config, const ModelWeights& weights, const WeightImagePlan& plan,
                        std::span<std::byte> image) {
  if (image.size() < plan.bytes) {
    return Status::InvalidArgument("weight image: a buffer of " + std::to_string(image.size()) +
                                   " bytes for an image of " + std::to_string(plan.bytes));
  }
  return WriteWeightImageRange(config, weights, plan, 0, image.first(plan.bytes));
}

Result<ModelWeights> WeightsFromImage(const ModelConfig& config, const WeightImagePlan& plan, const torch::Tensor& arena,
                                      const Digest& fingerprint) {
  if (!arena.defined() || !arena.device().is_cpu() || arena.scalar_type() != torch::kUInt8 || arena.dim() != 1 ||
      !arena.is_contiguous() || static_cast<uint64_t>(arena.numel()) < plan.bytes) {
    return Status::InvalidArgument("weight image: the arena is not a contiguous CPU uint8 tensor of " +
                                   std::to_string(plan.bytes) + " bytes");
  }
  const uint64_t element = c10::elementSize(plan.dtype);
  ModelWeights w;
  std::vector<torch::Tensor*> slots;
  KVAULT_RETURN_IF_ERROR(MatchPlan(config, plan, w, slots));
  try {
    for (size_t i = 0; i < slots.size(); ++i) {
      const ImageTensor& t = plan.tensors[i];
      if (t.offset % element != 0 || t.offset + t.bytes > plan.bytes ||
          t.bytes != static_cast<uint64_t>(Numel(t.shape)) * element) {
        return Status::InvalidArgument("weight image: tensor " + t.name + " has a bad offset or size");
      }
      // A byte range of the arena reinterpreted in place: the view shares the arena's storage.
      *slots[i] = arena.narrow(0, static_cast<int64_t>(t.offset), static_cast<int64_t>(t.bytes))
                      .view(plan.dtype)
                      .view(t.shape);
    }
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("weight image: ") + e.what());
  }
  if (config.tie_word_embeddings) w.lm_head = w.embed;
  w.fingerprint = fingerprint;
  return w;
}

Digest ComputeFingerprint(const ModelConfig& config, const ModelWeights& weights) {
  return WeightsFingerprint(config, weights);
}

torch::Tensor AllocateArena(uint64_t bytes) {
  // Large arenas are 2 MiB aligned so that transparent huge pages can back them whole.
  constexpr uint64_t kHuge = 2ull << 20;
  const uint64_t align = bytes >= kHuge ? kHuge : 64;
  const uint64_t size = std::max<uint64_t>(AlignUp(bytes, align), align);
  void* p = nullptr;
  if (::posix_memalign(&p, align, size) != 0) throw std::bad_alloc();
  if (align == kHuge) ::madvise(p, size, MADV_HUGEPAGE);  // advice only: ignored where unsupported
  return torch::from_blob(p, {static_cast<int64_t>(bytes)}, [](void* q) { std::free(q); },
                          torch::TensorOptions().dtype(torch::kUInt8));
}

}  // namespace kvault::engine
