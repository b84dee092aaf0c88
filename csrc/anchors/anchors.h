// FPN anchors as the MLPerf reference makes them (maskrcnn-benchmark's Detectron "legacy" scheme):
// for each level one set of cell anchors, shifted over the feature grid.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <vector>

#include "common/macros.h"

namespace harness {

constexpr int kMaxAnchorLevels = 8;

// Where each level's anchors go in the one output buffer: level l fills rows
// [offset[l], offset[l + 1]) in (y, x, cell anchor) order.
struct AnchorGrid {
  int num_levels;
  int cells_per_level;
  int64_t offset[kMaxAnchorLevels + 1];
  int64_t width[kMaxAnchorLevels];
  int64_t stride[kMaxAnchorLevels];
};

// Writes output row `row`: cell anchor (x1, y1, x2, y2) of its level plus the shift of its grid
// position, (x * stride, y * stride) for both corners, added in float32 as the reference does.
// cells: [num_levels * cells_per_level, 4] float32.
HOST_DEVICE_INLINE void write_anchor(const AnchorGrid& grid, const float* cells, int64_t row,
                                     float* out) {
  int level = 0;
  while (row >= grid.offset[level + 1]) {
    ++level;
  }
  const int64_t local = row - grid.offset[level];
  const int64_t a = local % grid.cells_per_level;
  const int64_t position = local / grid.cells_per_level;
  const float shift_x = static_cast<float>(position % grid.width[level] * grid.stride[level]);
  const float shift_y = static_cast<float>(position / grid.width[level] * grid.stride[level]);
  const float* cell = cells + 4 * (level * grid.cells_per_level + a);
  out[0] = shift_x + cell[0];
  out[1] = shift_y + cell[1];
  out[2] = shift_x + cell[2];
  out[3] = shift_y + cell[3];
}

// The cell anchors of one level, in float64 as the reference's numpy code, for one size: the base
// box [0, 0, stride - 1, stride - 1] reshaped to each aspect ratio with widths and heights rounded
// half to even, then scaled to `size`. One (x1, y1, x2, y2) per aspect ratio.
std::vector<std::array<double, 4>> legacy_cell_anchors(int64_t stride, double size,
                                                       const std::vector<double>& aspect_ratios);

// Fill out [grid.offset[num_levels], 4] float32 (contiguous) from cells, on out's device.
void grid_anchors_cpu(const at::Tensor& cells, const AnchorGrid& grid, at::Tensor& out);
#ifdef WITH_CUDA
void grid_anchors_cuda(const at::Tensor& cells, const AnchorGrid& grid, at::Tensor& out);
#endif

inline void grid_anchors(const at::Tensor& cells, const AnchorGrid& grid, at::Tensor& out) {
  if (out.is_cuda()) {
#ifdef WITH_CUDA
    grid_anchors_cuda(cells, grid, out);
    return;
#else
    TORCH_CHECK(false, "generate_anchors: device is CUDA but harness._C was built without CUDA");
#endif
  }
  grid_anchors_cpu(cells, grid, out);
}

// All levels' anchors, written in one pass into one buffer and returned as per-level views
// [H_l * W_l * A, 4] float32 (x1, y1, x2, y2) in input-image pixels, A = len(aspect_ratios).
// feature_sizes[l] = (H_l, W_l); strides and sizes hold one value per level.
std::vector<at::Tensor> generate_anchors(const std::vector<std::vector<int64_t>>& feature_sizes,
                                         const std::vector<int64_t>& strides,
                                         const std::vector<double>& sizes,
                                         const std::vector<double>& aspect_ratios,
                                         at::Device device);

}  // namespace harness
