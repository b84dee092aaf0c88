// ROIAlign (Mask R-CNN's pooler) over one feature map or a whole FPN pyramid in one call: the ops
// harness::roi_align and harness::roi_align_backward (schemas in csrc/ops.cpp; kernels registered
// in roi_align_cpu.cpp and roi_align_cuda.cu).
//
// features: L tensors [B, C, H_l, W_l] sharing B, C, dtype (float32 or float64) and device,
//           contiguous; rois: [K, 5] (batch index, x1, y1, x2, y2) in input-image pixels, same
//           dtype;
// levels:   optional [K] int64, the feature map each ROI is pooled from (absent: all from level 0);
// scales:   L factors mapping image pixels onto each level (1/4 for P2).
// A ROI with a non-finite value, a batch index outside [0, B) or a level outside [0, L) pools to
// zeros and receives no gradient; with debug checks on (harness.ops.set_debug) the Python face
// rejects such input with a clear error first.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace harness {

namespace detail {

// Checks shared by both devices and directions, with messages naming the argument.
inline void check_roi_align_args(const at::Tensor& rois, const std::optional<at::Tensor>& levels,
                                 at::ScalarType dtype, at::Device device, size_t num_levels,
                                 c10::ArrayRef<double> scales, int64_t pooled_height,
                                 int64_t pooled_width) {
  TORCH_CHECK(num_levels > 0, "roi_align: features must hold at least one tensor");
  TORCH_CHECK(scales.size() == num_levels, "roi_align: scales has ", scales.size(), " entries for ",
              num_levels, " feature maps");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "roi_align: features must be float32 or float64, got ", dtype);
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "roi_align: rois must be [K, 5], got ",
              rois.sizes());
  TORCH_CHECK(rois.scalar_type() == dtype, "roi_align: rois dtype ", rois.scalar_type(),
              " differs from the features' ", dtype);
  TORCH_CHECK(rois.device() == device, "roi_align: rois on ", rois.device(), " but features on ",
              device);
  TORCH_CHECK(rois.is_contiguous(), "roi_align: rois must be contiguous");
  if (levels.has_value()) {
    const at::Tensor& lv = *levels;
    TORCH_CHECK(lv.dim() == 1 && lv.size(0) == rois.size(0),
                "roi_align: levels must be [K=", rois.size(0), "], got ", lv.sizes());
    TORCH_CHECK(lv.scalar_type() == at::kLong, "roi_align: levels must be int64, got ",
                lv.scalar_type());
    TORCH_CHECK(lv.device() == device, "roi_align: levels on ", lv.device(), " but features on ",
                device);
    TORCH_CHECK(lv.is_contiguous(), "roi_align: levels must be contiguous");
  }
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0,
              "roi_align: output size must be positive, got (", pooled_height, ", ", pooled_width,
              ")");
}

// The public checks of each direction: features (or grad_output) first, then the shared ones.
inline void check_roi_align_forward(at::TensorList features, const at::Tensor& rois,
                                    const std::optional<at::Tensor>& levels,
                                    c10::ArrayRef<double> scales, int64_t pooled_height,
                                    int64_t pooled_width) {
  TORCH_CHECK(!features.empty(), "roi_align: features must hold at least one tensor");
  const at::Tensor& first = features.front();
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& f = features[l];
    TORCH_CHECK(f.dim() == 4, "roi_align: features[", l, "] must be [B, C, H, W], got ", f.sizes());
    TORCH_CHECK(f.size(0) == first.size(0) && f.size(1) == first.size(1), "roi_align: features[", l,
                "] has batch/channels ", f.sizes(), " unlike features[0] ", first.sizes());
    TORCH_CHECK(f.scalar_type() == first.scalar_type() && f.device() == first.device(),
                "roi_align: features[", l, "] differs from features[0] in dtype or device");
    TORCH_CHECK(f.is_contiguous(), "roi_align: features[", l, "] must be contiguous");
  }
  check_roi_align_args(rois, levels, first.scalar_type(), first.device(), features.size(), scales,
                       pooled_height, pooled_width);
}

inline void check_roi_align_backward(const at::Tensor& grad_output, const at::Tensor& rois,
                                     const std::optional<at::Tensor>& levels,
                                     c10::ArrayRef<double> scales, int64_t batch_size,
                                     at::IntArrayRef heights, at::IntArrayRef widths) {
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == rois.size(0),
              "roi_align: grad_output must be [K=", rois.size(0), ", C, ph, pw], got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.is_contiguous(), "roi_align: grad_output must be contiguous");
  TORCH_CHECK(heights.size() == widths.size(), "roi_align: heights and widths differ in length");
  TORCH_CHECK(batch_size >= 0, "roi_align: batch_size must be >= 0, got ", batch_size);
  for (size_t l = 0; l < heights.size(); ++l) {
    TORCH_CHECK(heights[l] >= 0 && widths[l] >= 0, "roi_align: negative size of level ", l);
  }
  check_roi_align_args(rois, levels, grad_output.scalar_type(), grad_output.device(),
                       heights.size(), scales, grad_output.size(2), grad_output.size(3));
}

}  // namespace detail

}  // namespace harness
