// CUDA grid kernel: one thread per anchor over all levels, one launch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "anchors/anchors.h"

namespace harness {
namespace {

constexpr int kThreads = 256;

__global__ void grid_anchors_kernel(const AnchorGrid grid, const float* __restrict__ cells,
                                    float* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row < grid.offset[grid.num_levels]) {
    write_anchor(grid, cells, row, out + 4 * row);
  }
}

at::Tensor generate_anchors_cuda(at::IntArrayRef feature_sizes, at::IntArrayRef strides,
                                 c10::ArrayRef<double> sizes, c10::ArrayRef<double> aspect_ratios,
                                 at::Device device) {
  const AnchorPlan plan = plan_anchors(feature_sizes, strides, sizes, aspect_ratios);
  const AnchorGrid& grid = plan.grid;
  const int64_t total = grid.offset[grid.num_levels];
  const c10::cuda::CUDAGuard guard(device);
  at::Tensor out = at::empty({total, 4}, at::TensorOptions(device).dtype(at::kFloat));
  if (total == 0) {
    return out;
  }
  // A host-to-device copy of a few dozen floats: it does not wait for the device.
  const at::Tensor cells = at::tensor(plan.cells, at::kFloat).to(device, /*non_blocking=*/false);
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  grid_anchors_kernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      grid, cells.data_ptr<float>(), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(harness, CUDA, m) { m.impl("generate_anchors", &generate_anchors_cuda); }

}  // namespace harness
