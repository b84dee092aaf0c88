// CUDA mask targets: one block per ROI. Per polygon, threads split the edges and XOR each column
// crossing into shared per-column toggle bitmaps; then one thread per column turns its toggles into
// fill by a prefix XOR and ORs it into the ROI's union (pycocotools' merge); finally the threads
// expand the union into the float output. Reporting bad indices would synchronize with the host,
// so the kernel skips them instead (an object index outside [0, N) pools zeros, polygons with
// offsets outside [0, V] or fewer than 3 vertices are left out); the debug checks of
// harness/ops/mask_targets.py report them.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

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
                                    const int64_t* __restrict__ roi_objects, int64_t num_vertices,
                                    int64_t num_polys, int64_t num_objects, int mask_size,
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
  const bool known = obj >= 0 && obj < num_objects;
  const int64_t first_poly = known ? max(obj_offsets[obj], int64_t{0}) : 0;
  const int64_t end_poly = known ? min(obj_offsets[obj + 1], num_polys) : 0;

  for (int i = threadIdx.x; i < m * words; i += blockDim.x) fill[i] = 0;
  for (int64_t p = first_poly; p < end_poly; ++p) {
    const int64_t first_vertex = poly_offsets[p];
    const int64_t end_vertex = poly_offsets[p + 1];
    if (first_vertex < 0 || end_vertex > num_vertices || end_vertex - first_vertex < 3) {
      continue;  // the same for every thread of the block
    }
    for (int i = threadIdx.x; i < m * words; i += blockDim.x) toggles[i] = 0;
    __syncthreads();
    const float* v = vertices + 2 * first_vertex;
    const int n = static_cast<int>(end_vertex - first_vertex);
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
  check_mask_targets_args(vertices, poly_offsets, obj_offsets, rois, roi_objects, mask_size);
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
      rois.data_ptr<float>(), roi_objects.data_ptr<int64_t>(), vertices.size(0),
      poly_offsets.numel() - 1, obj_offsets.numel() - 1, m, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(harness, CUDA, m) { m.impl("mask_targets", &mask_targets_cuda); }

}  // namespace harness::detail
