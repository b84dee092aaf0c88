// The MLPerf reference's BoxCoder (maskrcnn-benchmark): box <-> (dx, dy, dw, dh) regression
// deltas, with widths in the inclusive-pixel convention (x2 - x1 + 1), as the ops
// harness::encode_boxes and harness::decode_boxes (schemas in csrc/ops.cpp; kernels registered in
// box_coder_cpu.cpp and box_coder_cuda.cu).
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "common/macros.h"

namespace harness {

// weights = (wx, wy, ww, wh): the deltas are scaled by these, e.g. (10, 10, 5, 5) for the box head.
inline void check_weights(const char* op, c10::ArrayRef<double> weights) {
  TORCH_CHECK(weights.size() == 4, op, ": weights must be 4 numbers (wx, wy, ww, wh), got ",
              weights.size());
}

template <typename T>
HOST_DEVICE_INLINE T coder_log(T x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

template <typename T>
HOST_DEVICE_INLINE T coder_exp(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// Deltas that move `proposal` onto `reference`; both (x1, y1, x2, y2). Arithmetic in T (the op-math
// type of the storage type S), in the reference's operation order.
template <typename S, typename T>
HOST_DEVICE_INLINE void encode_box(const S* reference, const S* proposal, T wx, T wy, T ww, T wh,
                                   S* out) {
  const T ex_w = static_cast<T>(proposal[2]) - static_cast<T>(proposal[0]) + T(1);
  const T ex_h = static_cast<T>(proposal[3]) - static_cast<T>(proposal[1]) + T(1);
  const T ex_ctr_x = static_cast<T>(proposal[0]) + T(0.5) * ex_w;
  const T ex_ctr_y = static_cast<T>(proposal[1]) + T(0.5) * ex_h;
  const T gt_w = static_cast<T>(reference[2]) - static_cast<T>(reference[0]) + T(1);
  const T gt_h = static_cast<T>(reference[3]) - static_cast<T>(reference[1]) + T(1);
  const T gt_ctr_x = static_cast<T>(reference[0]) + T(0.5) * gt_w;
  const T gt_ctr_y = static_cast<T>(reference[1]) + T(0.5) * gt_h;
  out[0] = static_cast<S>(wx * (gt_ctr_x - ex_ctr_x) / ex_w);
  out[1] = static_cast<S>(wy * (gt_ctr_y - ex_ctr_y) / ex_h);
  out[2] = static_cast<S>(ww * coder_log(gt_w / ex_w));
  out[3] = static_cast<S>(wh * coder_log(gt_h / ex_h));
}

// Box predicted by `delta` (dx, dy, dw, dh) from `box` (x1, y1, x2, y2); dw and dh are clamped
// above at `clip` so exp cannot overflow (NaN stays NaN, as torch.clamp).
template <typename S, typename T>
HOST_DEVICE_INLINE void decode_box(const S* delta, const S* box, T wx, T wy, T ww, T wh, T clip,
                                   S* out) {
  const T w = static_cast<T>(box[2]) - static_cast<T>(box[0]) + T(1);
  const T h = static_cast<T>(box[3]) - static_cast<T>(box[1]) + T(1);
  const T ctr_x = static_cast<T>(box[0]) + T(0.5) * w;
  const T ctr_y = static_cast<T>(box[1]) + T(0.5) * h;
  const T dx = static_cast<T>(delta[0]) / wx;
  const T dy = static_cast<T>(delta[1]) / wy;
  T dw = static_cast<T>(delta[2]) / ww;
  T dh = static_cast<T>(delta[3]) / wh;
  dw = dw > clip ? clip : dw;
  dh = dh > clip ? clip : dh;
  const T pred_ctr_x = dx * w + ctr_x;
  const T pred_ctr_y = dy * h + ctr_y;
  const T pred_w = coder_exp(dw) * w;
  const T pred_h = coder_exp(dh) * h;
  out[0] = static_cast<S>(pred_ctr_x - T(0.5) * pred_w);
  out[1] = static_cast<S>(pred_ctr_y - T(0.5) * pred_h);
  out[2] = static_cast<S>(pred_ctr_x + T(0.5) * pred_w - T(1));
  out[3] = static_cast<S>(pred_ctr_y + T(0.5) * pred_h - T(1));
}

// Shape/dtype/device checks shared by both kernels; the messages name the argument.
inline void check_encode_inputs(const at::Tensor& reference_boxes, const at::Tensor& proposals) {
  TORCH_CHECK(reference_boxes.dim() == 2 && reference_boxes.size(1) == 4,
              "encode_boxes: reference_boxes must be [N, 4], got ", reference_boxes.sizes());
  TORCH_CHECK(proposals.sizes() == reference_boxes.sizes(),
              "encode_boxes: proposals must have the shape of reference_boxes (",
              reference_boxes.sizes(), "), got ", proposals.sizes());
  TORCH_CHECK(at::isFloatingType(reference_boxes.scalar_type()),
              "encode_boxes: reference_boxes must be floating point, got ",
              reference_boxes.scalar_type());
  TORCH_CHECK(proposals.scalar_type() == reference_boxes.scalar_type() &&
                  proposals.device() == reference_boxes.device(),
              "encode_boxes: proposals must have the dtype and device of reference_boxes");
}

inline void check_decode_inputs(const at::Tensor& deltas, const at::Tensor& boxes) {
  TORCH_CHECK(deltas.dim() == 2 && deltas.size(1) % 4 == 0,
              "decode_boxes: deltas must be [N, 4 * k], got ", deltas.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == deltas.size(0),
              "decode_boxes: boxes must be [", deltas.size(0), ", 4], got ", boxes.sizes());
  TORCH_CHECK(at::isFloatingType(deltas.scalar_type()),
              "decode_boxes: deltas must be floating point, got ", deltas.scalar_type());
  TORCH_CHECK(boxes.scalar_type() == deltas.scalar_type() && boxes.device() == deltas.device(),
              "decode_boxes: boxes must have the dtype and device of deltas");
}

}  // namespace harness
