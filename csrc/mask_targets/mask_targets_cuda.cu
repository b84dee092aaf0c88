// CUDA mask targets: one block per ROI. Per polygon, threads split the edges and XOR each column
// crossing into shared per-column toggle bitmaps; then one thread per column turns its toggles into
// fill by a prefix XOR and ORs it into the ROI's union (pycocotools' merge); finally the threads
// expand the union into the float output. Index validity is the Python wrapper's job: checking here
// would synchronize with the host.
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
  // Column c's bitmaps are words [c * words, (c + 1) * words) of each array.
  extern __shared__ unsigned long long bitmaps[];
  const int m = mask_size;
  const int words = raster::column_words(m);
  unsigned long long* toggles = bitmaps;
  unsigned long long* fill = bitmaps + m * words;
  const int64_t k = blockIdx.x;
  const raster::RoiFrame frame = raster::roi_frame(rois + 4 * k, m);
  const int64_t obj = roi_objects[k];

  for (int i = threadIdx.x; i < m * words; i += blockDim.x) fill[i] = 0;
  for (int64_t p = obj_offsets[obj]; p < obj_offsets[obj + 1]; ++p) {
    for (int i = threadIdx.x; i < m * words; i += blockDim.x) toggles[i] = 0;
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
                             atomicXor(&toggles[c * words + row / raster::kRowsPerWord],
                                       1ull << (row % raster::kRowsPerWord));
                           });
    }
    __syncthreads();
    for (int c = threadIdx.x; c < m; c += blockDim.x) {
      unsigned long long* column = toggles + c * words;
      raster::toggles_to_fill(column, words);
      for (int w = 0; w < words; ++w) fill[c * words + w] |= column[w];
    }
    __syncthreads();  // the next polygon clears the toggles
  }
  __syncthreads();  // fill is complete (also when the object has no polygons)
  float* dst = out + k * m * m;
  for (int i = threadIdx.x; i < m * m; i += blockDim.x) {
    const int row = i / m;
    const int c = i - row * m;
    const unsigned long long word = fill[c * words + row / raster::kRowsPerWord];
    dst[i] = static_cast<float>((word >> (row % raster::kRowsPerWord)) & 1ull);
  }
}

}  // namespace

at::Tensor mask_targets_cuda(const at::Tensor& vertices, const at::Tensor& poly_offsets,
                             const at::Tensor& obj_offsets, const at::Tensor& rois,
                             const at::Tensor& roi_objects, int64_t mask_size) {
  TORCH_CHECK(rois.is_cuda(), "mask_targets: rois must be a CUDA tensor");
  const at::cuda::CUDAGuard guard(rois.device());
  const int64_t num_rois = rois.size(0);
  at::Tensor out = at::empty({num_rois, mask_size, mask_size}, rois.options());
  if (num_rois == 0) return out;
  TORCH_CHECK(num_rois <= INT32_MAX, "mask_targets: too many rois (", num_rois, ")");

  const int m = static_cast<int>(mask_size);
  // Toggles and fill: 2 * M * column_words(M) words, 64 KiB at the largest M (512).
  const int shared_bytes = 2 * m * raster::column_words(m) * static_cast<int>(sizeof(uint64_t));
  if (shared_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(mask_targets_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes));
  }
  mask_targets_kernel<<<static_cast<unsigned>(num_rois), kThreads, shared_bytes,
                        at::cuda::getCurrentCUDAStream()>>>(
      vertices.data_ptr<float>(), poly_offsets.data_ptr<int64_t>(), obj_offsets.data_ptr<int64_t>(),
      rois.data_ptr<float>(), roi_objects.data_ptr<int64_t>(), m, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace harness::detail
