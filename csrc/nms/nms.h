// Greedy non-maximum suppression, plain and per group (class, or FPN level x image).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace harness {

// torchvision.ops.batched_nms runs one nms over offset boxes (survivors in nms order) up to this
// many box coordinates, and above it nms per group with the survivors re-sorted by an unstable sort
// of their scores. The kernels follow the same switch so tied scores come out in its order.
constexpr int64_t kTorchvisionResortAboveCpu = 4000;
constexpr int64_t kTorchvisionResortAboveCuda = 100000;

// Shape, dtype and device checks shared by both kernels; the messages name the argument.
inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores,
                             const std::optional<at::Tensor>& idxs, at::DeviceType device) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "nms: boxes must be [N, 4], got ",
              boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "nms: scores must be [",
              boxes.size(0), "] to match boxes, got ", scores.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble,
              "nms: boxes must be float32 or float64, got ", boxes.scalar_type());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(),
              "nms: scores must have the dtype of boxes (", boxes.scalar_type(), "), got ",
              scores.scalar_type());
  TORCH_CHECK(boxes.device().type() == device && scores.device() == boxes.device(),
              "nms: boxes and scores must be on the same ", device, " device");
  if (idxs.has_value()) {
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), "nms: idxs must be [",
                boxes.size(0), "] to match boxes, got ", idxs->sizes());
    TORCH_CHECK(idxs->scalar_type() == at::kLong, "nms: idxs must be int64, got ",
                idxs->scalar_type());
    TORCH_CHECK(idxs->device() == boxes.device(), "nms: idxs must be on the device of boxes");
  }
}

// boxes: [N, 4] (x1, y1, x2, y2) float32/float64; scores: [N], same dtype; idxs: [N] int64 group of
// each box, or nullopt for one group. Returns the kept indices as int64 in decreasing score order;
// score ties are ordered as torchvision.ops.nms / batched_nms order them.
at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const std::optional<at::Tensor>& idxs, double iou_threshold);
#ifdef WITH_CUDA
at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const std::optional<at::Tensor>& idxs, double iou_threshold);
#endif

inline at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores,
                              const std::optional<at::Tensor>& idxs, double iou_threshold) {
  if (boxes.is_cuda()) {
#ifdef WITH_CUDA
    return batched_nms_cuda(boxes, scores, idxs, iou_threshold);
#else
    TORCH_CHECK(false, "nms: boxes is a CUDA tensor but harness._C was built without CUDA");
#endif
  }
  return batched_nms_cpu(boxes, scores, idxs, iou_threshold);
}

inline at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return batched_nms(boxes, scores, std::nullopt, iou_threshold);
}

}  // namespace harness
