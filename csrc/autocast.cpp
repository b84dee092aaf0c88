// Autocast rules of the harness ops, for CUDA (fp16) and CPU (bf16) autocast alike: ops whose
// precision matters compute in float32, as torchvision's autocast kernels do. Each rule casts the
// floating inputs with at::autocast::cached_cast (which leaves float32 and float64 alone), calls
// the op again below autocast, and states the output dtype:
//   nms, nms_mask              boxes/scores to float32 (IoUs in half precision would keep or drop
//                              the wrong boxes); int64/bool outputs
//   roi_align                  features and rois to float32, output cast back to the features'
//                              dtype (a bin sums many weighted taps; the backward accumulates)
//   roi_align_backward         grad_output and rois to float32; float32 gradients
//   encode_boxes, decode_boxes float32 in and out: pixel coordinates up to ~1333 have steps of
//                              0.5-1 px in float16
//   mask_targets               vertices and rois to float32 (its kernel's only dtype)
// generate_anchors has no floating input; autocast passes it through.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace harness {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

template <c10::DeviceType device>
at::Tensor to_float(const at::Tensor& t) {
  return at::autocast::cached_cast(at::kFloat, t, device);
}

using NmsSignature = at::Tensor(const at::Tensor&, const at::Tensor&,
                                const std::optional<at::Tensor>&, double, bool);

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor nms_autocast(const at::Tensor& boxes, const at::Tensor& scores,
                        const std::optional<at::Tensor>& idxs, double iou_threshold, bool legacy) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op = find_op<NmsSignature>("harness::nms");
  return op.call(to_float<device>(boxes), to_float<device>(scores), idxs, iou_threshold, legacy);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor nms_mask_autocast(const at::Tensor& boxes, const at::Tensor& scores,
                             const std::optional<at::Tensor>& idxs, double iou_threshold,
                             bool legacy) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op = find_op<NmsSignature>("harness::nms_mask");
  return op.call(to_float<device>(boxes), to_float<device>(scores), idxs, iou_threshold, legacy);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor roi_align_autocast(at::TensorList features, const at::Tensor& rois,
                              const std::optional<at::Tensor>& levels, c10::ArrayRef<double> scales,
                              int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                              bool aligned) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op =
      find_op<at::Tensor(at::TensorList, const at::Tensor&, const std::optional<at::Tensor>&,
                         c10::ArrayRef<double>, int64_t, int64_t, int64_t, bool)>(
          "harness::roi_align");
  std::vector<at::Tensor> cast;
  for (const at::Tensor& f : features) cast.push_back(to_float<device>(f));
  const at::ScalarType dtype = features.empty() ? at::kFloat : features.front().scalar_type();
  return op
      .call(cast, to_float<device>(rois), levels, scales, pooled_height, pooled_width,
            sampling_ratio, aligned)
      .to(dtype);
}

template <c10::DispatchKey key, c10::DeviceType device>
std::vector<at::Tensor> roi_align_backward_autocast(
    const at::Tensor& grad_output, const at::Tensor& rois, const std::optional<at::Tensor>& levels,
    c10::ArrayRef<double> scales, int64_t batch_size, at::IntArrayRef heights,
    at::IntArrayRef widths, int64_t sampling_ratio, bool aligned) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op = find_op<std::vector<at::Tensor>(
      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::ArrayRef<double>,
      int64_t, at::IntArrayRef, at::IntArrayRef, int64_t, bool)>("harness::roi_align_backward");
  return op.call(to_float<device>(grad_output), to_float<device>(rois), levels, scales, batch_size,
                 heights, widths, sampling_ratio, aligned);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor encode_boxes_autocast(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                                 c10::ArrayRef<double> weights) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::ArrayRef<double>)>(
          "harness::encode_boxes");
  return op.call(to_float<device>(reference_boxes), to_float<device>(proposals), weights);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor decode_boxes_autocast(const at::Tensor& deltas, const at::Tensor& boxes,
                                 c10::ArrayRef<double> weights, double bbox_xform_clip) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::ArrayRef<double>, double)>(
          "harness::decode_boxes");
  return op.call(to_float<device>(deltas), to_float<device>(boxes), weights, bbox_xform_clip);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor mask_targets_autocast(const at::Tensor& vertices, const at::Tensor& poly_offsets,
                                 const at::Tensor& obj_offsets, const at::Tensor& rois,
                                 const at::Tensor& roi_objects, int64_t mask_size) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, int64_t)>("harness::mask_targets");
  return op.call(to_float<device>(vertices), poly_offsets, obj_offsets, to_float<device>(rois),
                 roi_objects, mask_size);
}

template <c10::DispatchKey key, c10::DeviceType device>
void register_autocast(torch::Library& m) {
  m.impl("nms", &nms_autocast<key, device>);
  m.impl("nms_mask", &nms_mask_autocast<key, device>);
  m.impl("roi_align", &roi_align_autocast<key, device>);
  m.impl("roi_align_backward", &roi_align_backward_autocast<key, device>);
  m.impl("encode_boxes", &encode_boxes_autocast<key, device>);
  m.impl("decode_boxes", &decode_boxes_autocast<key, device>);
  m.impl("mask_targets", &mask_targets_autocast<key, device>);
}

}  // namespace

TORCH_LIBRARY_IMPL(harness, Autocast, m) {
  register_autocast<c10::DispatchKey::Autocast, c10::DeviceType::CUDA>(m);
}

TORCH_LIBRARY_IMPL(harness, AutocastCPU, m) {
  register_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>(m);
}

}  // namespace harness
