// ROIAlign (Mask R-CNN's pooler) over one feature map or a whole FPN pyramid in one call.
//
// features: L tensors [B, C, H_l, W_l] sharing B, C, dtype (float32 or float64) and device,
//           contiguous; rois: [K, 5] (batch index, x1, y1, x2, y2) in input-image pixels, same
//           dtype;
// levels:   optional [K] int64, the feature map each ROI is pooled from (absent: all from level 0);
// scales:   L factors mapping image pixels onto each level (1/4 for P2).
// A ROI with a non-finite value, a batch index outside [0, B) or a level outside [0, L) pools to
// zeros and receives no gradient; the Python wrapper rejects such input with a clear error first.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace harness {

namespace detail {

// Checks shared by both devices and directions, with messages naming the argument.
inline void check_roi_align_args(const at::Tensor& rois, const std::optional<at::Tensor>& levels,
                                 at::ScalarType dtype, at::Device device, size_t num_levels,
                                 const std::vector<double>& scales, int64_t pooled_height,
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

at::Tensor roi_align_forward_cpu(const std::vector<at::Tensor>& features, const at::Tensor& rois,
                                 const std::optional<at::Tensor>& levels,
                                 const std::vector<double>& scales, int64_t pooled_height,
                                 int64_t pooled_width, int64_t sampling_ratio, bool aligned);
std::vector<at::Tensor> roi_align_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& rois, const std::optional<at::Tensor>& levels,
    const std::vector<double>& scales, int64_t batch_size, const std::vector<int64_t>& heights,
    const std::vector<int64_t>& widths, int64_t sampling_ratio, bool aligned);

#ifdef WITH_CUDA
at::Tensor roi_align_forward_cuda(const std::vector<at::Tensor>& features, const at::Tensor& rois,
                                  const std::optional<at::Tensor>& levels,
                                  const std::vector<double>& scales, int64_t pooled_height,
                                  int64_t pooled_width, int64_t sampling_ratio, bool aligned);
std::vector<at::Tensor> roi_align_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& rois, const std::optional<at::Tensor>& levels,
    const std::vector<double>& scales, int64_t batch_size, const std::vector<int64_t>& heights,
    const std::vector<int64_t>& widths, int64_t sampling_ratio, bool aligned);
#endif

}  // namespace detail

// Pooled features [K, C, pooled_height, pooled_width] of every ROI, in the order of `rois`.
inline at::Tensor roi_align_forward(const std::vector<at::Tensor>& features, const at::Tensor& rois,
                                    const std::optional<at::Tensor>& levels,
                                    const std::vector<double>& scales, int64_t pooled_height,
                                    int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
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
  detail::check_roi_align_args(rois, levels, first.scalar_type(), first.device(), features.size(),
                               scales, pooled_height, pooled_width);
  if (first.is_cuda()) {
#ifdef WITH_CUDA
    return detail::roi_align_forward_cuda(features, rois, levels, scales, pooled_height,
                                          pooled_width, sampling_ratio, aligned);
#else
    TORCH_CHECK(false, "roi_align: features are on ", first.device(),
                " but harness._C was built without CUDA");
#endif
  }
  TORCH_CHECK(first.is_cpu(), "roi_align: unsupported device ", first.device());
  return detail::roi_align_forward_cpu(features, rois, levels, scales, pooled_height, pooled_width,
                                       sampling_ratio, aligned);
}

// Gradients [B, C, heights[l], widths[l]] of each feature map given grad_output [K, C, ph, pw].
inline std::vector<at::Tensor> roi_align_backward(
    const at::Tensor& grad_output, const at::Tensor& rois, const std::optional<at::Tensor>& levels,
    const std::vector<double>& scales, int64_t batch_size, const std::vector<int64_t>& heights,
    const std::vector<int64_t>& widths, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == rois.size(0),
              "roi_align: grad_output must be [K=", rois.size(0), ", C, ph, pw], got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.is_contiguous(), "roi_align: grad_output must be contiguous");
  TORCH_CHECK(heights.size() == widths.size(), "roi_align: heights and widths differ in length");
  TORCH_CHECK(batch_size >= 0, "roi_align: batch_size must be >= 0, got ", batch_size);
  for (size_t l = 0; l < heights.size(); ++l) {
    TORCH_CHECK(heights[l] >= 0 && widths[l] >= 0, "roi_align: negative size of level ", l);
  }
  detail::check_roi_align_args(rois, levels, grad_output.scalar_type(), grad_output.device(),
                               heights.size(), scales, grad_output.size(2), grad_output.size(3));
  if (grad_output.is_cuda()) {
#ifdef WITH_CUDA
    return detail::roi_align_backward_cuda(grad_output, rois, levels, scales, batch_size, heights,
                                           widths, sampling_ratio, aligned);
#else
    TORCH_CHECK(false, "roi_align: grad_output is on ", grad_output.device(),
                " but harness._C was built without CUDA");
#endif
  }
  TORCH_CHECK(grad_output.is_cpu(), "roi_align: unsupported device ", grad_output.device());
  return detail::roi_align_backward_cpu(grad_output, rois, levels, scales, batch_size, heights,
                                        widths, sampling_ratio, aligned);
}

}  // namespace harness
