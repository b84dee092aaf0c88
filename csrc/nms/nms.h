// Greedy non-maximum suppression, plain and per group (class, or FPN level x image), as the ops
//   harness::nms(boxes, scores, idxs?, iou_threshold, legacy) -> int64 kept indices by score
//   harness::nms_mask(boxes, scores, idxs?, iou_threshold, legacy) -> bool [N] kept, input order
// (schemas in csrc/ops.cpp; kernels registered for CPU in nms_cpu.cpp and CUDA in nms_cuda.cu).
//
// boxes: [N, 4] (x1, y1, x2, y2) float32/float64; scores: [N], same dtype; idxs: [N] int64 group of
// each box, or absent for one group. legacy adds 1 to widths and heights and compares the IoU in
// float with the threshold as float (maskrcnn-benchmark's nms.cu, the MLPerf reference); otherwise
// the IoU is compared in double, as torchvision does. Score ties are ordered as torchvision orders
// them on each device. nms_mask never copies device memory to the host.
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

// Test hooks for the CUDA kernels' arithmetic (csrc/common/nms_bitmask.h), bound in bindings.cpp:
// the column words [begin, end) each row block of `sorted_groups` (ascending int64) needs, as
// [words, 2]; and the CUDA bitmask NMS run serially on the host over boxes already sorted by
// (group, score): bool [N] kept, in that sorted order.
at::Tensor nms_column_words(const at::Tensor& sorted_groups);
at::Tensor nms_bitmask_emulation(const at::Tensor& sorted_boxes,
                                 const std::optional<at::Tensor>& sorted_groups,
                                 double iou_threshold, bool legacy);

}  // namespace harness
