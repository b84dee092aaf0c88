// CUDA mask targets: one block per ROI. Per polygon, threads split the edges and XOR each column
// crossing into a shared bit grid; then one thread per column runs down its parity and ORs it into
// the output (pycocotools' merge is a union). Index validity is the Python wrapper's job: checking
// here would synchronize with the host.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "common/polygon_raster.h"
#include "mask_targets/mask_targets.h"

namespace harness::detail {
namespace {

constexpr int kThreads = 128;

__global__ void mask_targets_kernel(const float* __restrict__ vertices,
                                    const int64_t* __restrict__ poly_offsets,
                                    const int64_t* __restrict__ obj_offsets,
                                    const float* __restrict__ rois,
                                    const int64_t* __restrict__ roi_objects, int mask_size,
                                    float* __restrict__ out) {
  extern __shared__ uint32_t toggles[];  // bit c * M + row, M * M bits
  const int m = mask_size;
  const int words = (m * m + 31) / 32;
  const int64_t k = blockIdx.x;
  const raster::RoiFrame frame = raster::roi_frame(rois + 4 * k, m);
  const int64_t obj = roi_objects[k];
  float* dst = out + k * m * m;

  for (int64_t p = obj_offsets[obj]; p < obj_offsets[obj + 1]; ++p) {
    for (int w = threadIdx.x; w < words; w += blockDim.x) toggles[w] = 0;
    __syncthreads();
    const float* v = vertices + 2 * poly_offsets[p];
    const int n = static_cast<int>(poly_offsets[p + 1] - poly_offsets[p]);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      const int next = j + 1 == n ? 0 : j + 1;
      raster::edge_toggles(raster::fine_coord(v[2 * j], frame.x0, frame.scale_x),
                           raster::fine_coord(v[2 * j + 1], frame.y0, frame.scale_y),
                           raster::fine_coord(v[2 * next], frame.x0, frame.scale_x),
                           raster::fine_coord(v[2 * next + 1], frame.y0, frame.scale_y), m,
                           [&](int c, int row) {
                             const int bit = c * m + row;
                             atomicXor(&toggles[bit >> 5], 1u << (bit & 31));
                           });
    }
    __syncthreads();
    for (int c = threadIdx.x; c < m; c += blockDim.x) {
      uint32_t inside = 0;
      for (int row = 0; row < m; ++row) {
        const int bit = c * m + row;
        inside ^= (toggles[bit >> 5] >> (bit & 31)) & 1u;
        if (inside) dst[row * m + c] = 1.f;
      }
    }
    __syncthreads();  // the next polygon clears the bits
  }
}

}  // namespace

at::Tensor mask_targets_cuda(const at::Tensor& vertices, const at::Tensor& poly_offsets,
                             const at::Tensor& obj_offsets, const at::Tensor& rois,
                             const at::Tensor& roi_objects, int64_t mask_size) {
  TORCH_CHECK(rois.is_cuda(), "mask_targets: rois must be a CUDA tensor");
  const at::cuda::CUDAGuard guard(rois.device());
  const int64_t num_rois = rois.size(0);
  at::Tensor out = at::zeros({num_rois, mask_size, mask_size}, rois.options());
  if (num_rois == 0) return out;
  TORCH_CHECK(num_rois <= INT32_MAX, "mask_targets: too many rois (", num_rois, ")");

  const size_t shared_bytes = (mask_size * mask_size + 31) / 32 * sizeof(uint32_t);
  mask_targets_kernel<<<static_cast<unsigned>(num_rois), kThreads, shared_bytes,
                        at::cuda::getCurrentCUDAStream()>>>(
      vertices.data_ptr<float>(), poly_offsets.data_ptr<int64_t>(), obj_offsets.data_ptr<int64_t>(),
      rois.data_ptr<float>(), roi_objects.data_ptr<int64_t>(), static_cast<int>(mask_size),
      out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace harness::detail
