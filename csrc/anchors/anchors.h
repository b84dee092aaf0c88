// FPN anchors as the MLPerf reference makes them (maskrcnn-benchmark's Detectron "legacy" scheme):
// for each level one set of cell anchors, shifted over the feature grid. The op
// harness::generate_anchors (schema in csrc/ops.cpp) returns all levels' anchors
// [sum_l H_l * W_l * A, 4] float32 in one buffer, rows in (level, y, x, aspect ratio) order; it has
// no tensor input, so a BackendSelect kernel (anchors_cpu.cpp) dispatches on its `device`.
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
                                                       c10::ArrayRef<double> aspect_ratios);

// What both devices' kernels write: the grid of every level and their cell anchors
// ([num_levels * cells_per_level, 4] float32, host), from the op's arguments (checked here).
struct AnchorPlan {
  AnchorGrid grid;
  std::vector<float> cells;
};

// feature_sizes = (H_0, W_0, H_1, W_1, ...); strides and sizes hold one value per level.
AnchorPlan plan_anchors(at::IntArrayRef feature_sizes, at::IntArrayRef strides,
                        c10::ArrayRef<double> sizes, c10::ArrayRef<double> aspect_ratios);

}  // namespace harness
