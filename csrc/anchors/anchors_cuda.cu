// CUDA grid kernel: one thread per anchor over all levels, one launch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

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

}  // namespace

void grid_anchors_cuda(const at::Tensor& cells, const AnchorGrid& grid, at::Tensor& out) {
  TORCH_CHECK(cells.is_cuda() && out.is_cuda() && cells.device() == out.device(),
              "grid_anchors_cuda: cells and out must be on one CUDA device");
  TORCH_CHECK(cells.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "grid_anchors_cuda: cells and out must be float32");
  TORCH_CHECK(cells.is_contiguous() && out.is_contiguous(),
              "grid_anchors_cuda: cells and out must be contiguous");
  const int64_t total = grid.offset[grid.num_levels];
  if (total == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  grid_anchors_kernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      grid, cells.data_ptr<float>(), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace harness
