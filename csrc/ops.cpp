// The `harness` operator library: one schema per op. The kernels register themselves per device
// (TORCH_LIBRARY_IMPL(harness, CPU/CUDA, m) in csrc/<op>/<op>_{cpu.cpp,cuda.cu}), the autocast
// rules in csrc/autocast.cpp; the fake (meta) implementations live in harness/ops/_meta.py and
// the autograd formulas next to each op's Python face in harness/ops/. Call them as
// torch.ops.harness.<name> once harness._C is loaded (harness.ops does that).
#include <torch/library.h>

TORCH_LIBRARY(harness, m) {
  // The Python fake implementations of these ops are in this module.
  m.set_python_module("harness.ops._meta");

  // nms: int64 indices of the kept boxes by decreasing score (data-dependent length: syncs on
  // CUDA). nms_mask: bool [N], kept or not, in input order (fixed size: no sync).
  m.def(
      "nms(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, bool legacy=False) "
      "-> Tensor");
  m.def(
      "nms_mask(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, "
      "bool legacy=False) -> Tensor");

  // [K, C, ph, pw] ROIAlign of every ROI from its level's feature map, and its backward: the
  // gradients of the L feature maps [B, C, heights[l], widths[l]].
  m.def(
      "roi_align(Tensor[] features, Tensor rois, Tensor? levels, float[] scales, "
      "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad_output, Tensor rois, Tensor? levels, float[] scales, "
      "SymInt batch_size, SymInt[] heights, SymInt[] widths, int sampling_ratio, bool aligned) "
      "-> Tensor[]");

  // maskrcnn-benchmark's BoxCoder: [N, 4] deltas, and [N, 4k] decoded boxes.
  m.def("encode_boxes(Tensor reference_boxes, Tensor proposals, float[] weights) -> Tensor");
  m.def(
      "decode_boxes(Tensor deltas, Tensor boxes, float[] weights, float bbox_xform_clip) "
      "-> Tensor");

  // [K, M, M] float32 0/1 mask targets: each ROI's object polygons cropped and rasterized.
  m.def(
      "mask_targets(Tensor vertices, Tensor poly_offsets, Tensor obj_offsets, Tensor rois, "
      "Tensor roi_objects, int mask_size) -> Tensor");

  // All levels' anchors [sum_l H_l * W_l * A, 4] float32 on `device` (no tensor input: the
  // BackendSelect kernel in csrc/anchors/anchors_cpu.cpp dispatches on `device`).
  // feature_sizes: (H_0, W_0, H_1, W_1, ...).
  m.def(
      "generate_anchors(int[] feature_sizes, int[] strides, float[] sizes, "
      "float[] aspect_ratios, Device device) -> Tensor");

  // Evaluation post-processing (CPU): COCO RLE strings of [D, Hs, Ws] float32 planes resized
  // bilinearly to their int64 boxes [D, 4], thresholded and clipped to the (height, width) image,
  // written one after another as uint8 chars, with int64 offsets [D + 1]; and the [height, width]
  // resize of one plane they threshold. arithmetic: 'aten', 'fused' or 'plain'
  // (csrc/mask_rle/mask_rle.h).
  m.def(
      "mask_rle(Tensor masks, Tensor boxes, int height, int width, float threshold, "
      "str arithmetic) -> (Tensor, Tensor)");
  m.def("resize_bilinear(Tensor plane, int height, int width, str arithmetic) -> Tensor");
}
