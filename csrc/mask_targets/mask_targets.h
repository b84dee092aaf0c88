// Mask R-CNN mask targets: each ROI's matched GT polygons cropped to the ROI and rasterized at
// M x M, bit-identical to maskrcnn-benchmark's SegmentationMask crop -> resize -> pycocotools path;
// the op harness::mask_targets (schema in csrc/ops.cpp; kernels registered in mask_targets_cpu.cpp
// and mask_targets_cuda.cu).
//
// vertices:     [V, 2] float32 (x, y) in image pixels
// poly_offsets: [P + 1] int64; polygon p is vertices[poly_offsets[p]:poly_offsets[p + 1]], >= 3
//               each
// obj_offsets:  [N + 1] int64; object n owns polygons obj_offsets[n]:obj_offsets[n + 1]
// rois:         [K, 4] float32 (x1, y1, x2, y2), same pixels as the vertices
// roi_objects:  [K] int64 in [0, N), the object matched to each ROI
// Returns [K, M, M] float32 of 0/1, indexed [k, y, x]; an object without polygons gives zeros.
// The CPU kernel checks the indices (host memory); the CUDA kernel skips bad ones (checking would
// sync); the debug checks of harness/ops/mask_targets.py report values and coordinate bounds.
#pragma once

#include <ATen/ATen.h>

namespace harness {

// Largest mask side: keeps the CUDA kernel's per-ROI toggle bits in shared memory and the fine-grid
// integers of common/polygon_raster.h in range.
constexpr int64_t kMaxMaskSize = 512;

namespace detail {

inline void check_mask_targets_args(const at::Tensor& vertices, const at::Tensor& poly_offsets,
                                    const at::Tensor& obj_offsets, const at::Tensor& rois,
                                    const at::Tensor& roi_objects, int64_t mask_size) {
  TORCH_CHECK(vertices.dim() == 2 && vertices.size(1) == 2,
              "mask_targets: vertices must be [V, 2], got ", vertices.sizes());
  TORCH_CHECK(vertices.scalar_type() == at::kFloat, "mask_targets: vertices must be float32, got ",
              vertices.scalar_type());
  TORCH_CHECK(poly_offsets.dim() == 1 && poly_offsets.numel() >= 1,
              "mask_targets: poly_offsets must be [P + 1], got ", poly_offsets.sizes());
  TORCH_CHECK(poly_offsets.scalar_type() == at::kLong,
              "mask_targets: poly_offsets must be int64, got ", poly_offsets.scalar_type());
  TORCH_CHECK(obj_offsets.dim() == 1 && obj_offsets.numel() >= 1,
              "mask_targets: obj_offsets must be [N + 1], got ", obj_offsets.sizes());
  TORCH_CHECK(obj_offsets.scalar_type() == at::kLong,
              "mask_targets: obj_offsets must be int64, got ", obj_offsets.scalar_type());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 4, "mask_targets: rois must be [K, 4], got ",
              rois.sizes());
  TORCH_CHECK(rois.scalar_type() == at::kFloat, "mask_targets: rois must be float32, got ",
              rois.scalar_type());
  TORCH_CHECK(roi_objects.dim() == 1 && roi_objects.size(0) == rois.size(0),
              "mask_targets: roi_objects must be [K=", rois.size(0), "], got ",
              roi_objects.sizes());
  TORCH_CHECK(roi_objects.scalar_type() == at::kLong,
              "mask_targets: roi_objects must be int64, got ", roi_objects.scalar_type());
  TORCH_CHECK(mask_size >= 1 && mask_size <= kMaxMaskSize,
              "mask_targets: mask_size must be in [1, ", kMaxMaskSize, "], got ", mask_size);
  const at::Device device = rois.device();
  TORCH_CHECK(vertices.device() == device && poly_offsets.device() == device &&
                  obj_offsets.device() == device && roi_objects.device() == device,
              "mask_targets: vertices, poly_offsets, obj_offsets and roi_objects must be on the "
              "rois' device ",
              device);
  TORCH_CHECK(vertices.is_contiguous() && poly_offsets.is_contiguous() &&
                  obj_offsets.is_contiguous() && rois.is_contiguous() &&
                  roi_objects.is_contiguous(),
              "mask_targets: all tensors must be contiguous");
}

}  // namespace detail

}  // namespace harness
