// CUDA box coder: one thread per (box, delta group).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "box_coder/box_coder.h"

namespace harness {
namespace {

constexpr int kThreads = 256;

template <typename S, typename T>
__global__ void encode_kernel(const S* __restrict__ reference, const S* __restrict__ proposals,
                              int64_t n, T wx, T wy, T ww, T wh, S* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    encode_box(reference + 4 * i, proposals + 4 * i, wx, wy, ww, wh, out + 4 * i);
  }
}

template <typename S, typename T>
__global__ void decode_kernel(const S* __restrict__ deltas, const S* __restrict__ boxes,
                              int64_t items, int64_t per_box, T wx, T wy, T ww, T wh, T clip,
                              S* __restrict__ out) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item < items) {
    decode_box(deltas + 4 * item, boxes + 4 * (item / per_box), wx, wy, ww, wh, clip,
               out + 4 * item);
  }
}

int64_t blocks_for(int64_t items) { return (items + kThreads - 1) / kThreads; }

}  // namespace

at::Tensor encode_boxes_cuda(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                             c10::ArrayRef<double> weights) {
  check_encode_inputs(reference_boxes, proposals);
  check_weights("encode_boxes", weights);
  TORCH_CHECK(reference_boxes.is_cuda(), "encode_boxes: reference_boxes must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(reference_boxes.device());
  const at::Tensor reference_c = reference_boxes.contiguous();
  const at::Tensor proposals_c = proposals.contiguous();
  at::Tensor out = at::empty_like(reference_c);
  const int64_t n = out.size(0);
  if (n == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "encode_boxes_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        encode_kernel<scalar_t, T>
            <<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                reference_c.data_ptr<scalar_t>(), proposals_c.data_ptr<scalar_t>(), n,
                static_cast<T>(weights[0]), static_cast<T>(weights[1]), static_cast<T>(weights[2]),
                static_cast<T>(weights[3]), out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

at::Tensor decode_boxes_cuda(const at::Tensor& deltas, const at::Tensor& boxes,
                             c10::ArrayRef<double> weights, double bbox_xform_clip) {
  check_decode_inputs(deltas, boxes);
  check_weights("decode_boxes", weights);
  TORCH_CHECK(deltas.is_cuda(), "decode_boxes: deltas must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(deltas.device());
  const at::Tensor deltas_c = deltas.contiguous();
  const at::Tensor boxes_c = boxes.contiguous();
  at::Tensor out = at::empty_like(deltas_c);
  const int64_t per_box = deltas.size(1) / 4;
  const int64_t items = deltas.size(0) * per_box;
  if (items == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "decode_boxes_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        decode_kernel<scalar_t, T>
            <<<blocks_for(items), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                deltas_c.data_ptr<scalar_t>(), boxes_c.data_ptr<scalar_t>(), items, per_box,
                static_cast<T>(weights[0]), static_cast<T>(weights[1]), static_cast<T>(weights[2]),
                static_cast<T>(weights[3]), static_cast<T>(bbox_xform_clip),
                out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

TORCH_LIBRARY_IMPL(harness, CUDA, m) {
  m.impl("encode_boxes", &encode_boxes_cuda);
  m.impl("decode_boxes", &decode_boxes_cuda);
}

}  // namespace harness
