// CPU box coder: one pass over the boxes, rows split across threads.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "box_coder/box_coder.h"

namespace harness {
namespace {

constexpr int64_t kGrain = 2048;

}  // namespace

at::Tensor encode_boxes_cpu(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                            c10::ArrayRef<double> weights) {
  check_encode_inputs(reference_boxes, proposals);
  check_weights("encode_boxes", weights);
  TORCH_CHECK(reference_boxes.is_cpu(), "encode_boxes: reference_boxes must be a CPU tensor");
  const at::Tensor reference_c = reference_boxes.contiguous();
  const at::Tensor proposals_c = proposals.contiguous();
  at::Tensor out = at::empty_like(reference_c);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "encode_boxes_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        const scalar_t* ref = reference_c.data_ptr<scalar_t>();
        const scalar_t* prop = proposals_c.data_ptr<scalar_t>();
        scalar_t* dst = out.data_ptr<scalar_t>();
        const T wx = weights[0], wy = weights[1], ww = weights[2], wh = weights[3];
        at::parallel_for(0, out.size(0), kGrain, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            encode_box(ref + 4 * i, prop + 4 * i, wx, wy, ww, wh, dst + 4 * i);
          }
        });
      });
  return out;
}

at::Tensor decode_boxes_cpu(const at::Tensor& deltas, const at::Tensor& boxes,
                            c10::ArrayRef<double> weights, double bbox_xform_clip) {
  check_decode_inputs(deltas, boxes);
  check_weights("decode_boxes", weights);
  TORCH_CHECK(deltas.is_cpu(), "decode_boxes: deltas must be a CPU tensor");
  const at::Tensor deltas_c = deltas.contiguous();
  const at::Tensor boxes_c = boxes.contiguous();
  at::Tensor out = at::empty_like(deltas_c);
  const int64_t per_box = deltas.size(1) / 4;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "decode_boxes_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        const scalar_t* delta = deltas_c.data_ptr<scalar_t>();
        const scalar_t* box = boxes_c.data_ptr<scalar_t>();
        scalar_t* dst = out.data_ptr<scalar_t>();
        const T wx = weights[0], wy = weights[1], ww = weights[2], wh = weights[3];
        const T clip = static_cast<T>(bbox_xform_clip);
        at::parallel_for(0, out.size(0) * per_box, kGrain, [&](int64_t begin, int64_t end) {
          for (int64_t item = begin; item < end; ++item) {
            decode_box(delta + 4 * item, box + 4 * (item / per_box), wx, wy, ww, wh, clip,
                       dst + 4 * item);
          }
        });
      });
  return out;
}

TORCH_LIBRARY_IMPL(harness, CPU, m) {
  m.impl("encode_boxes", &encode_boxes_cpu);
  m.impl("decode_boxes", &decode_boxes_cpu);
}

}  // namespace harness
