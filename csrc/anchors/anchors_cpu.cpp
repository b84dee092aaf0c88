// Cell anchors (host, float64), the CPU grid kernel, and generate_anchors around them.
#include <ATen/Parallel.h>

#include <cmath>

#include "anchors/anchors.h"

namespace harness {
namespace {

// Corners of a w x h box centred on (ctr_x, ctr_y) in the inclusive-pixel (+1) convention.
std::array<double, 4> centred_box(double w, double h, double ctr_x, double ctr_y) {
  return {ctr_x - 0.5 * (w - 1), ctr_y - 0.5 * (h - 1), ctr_x + 0.5 * (w - 1),
          ctr_y + 0.5 * (h - 1)};
}

}  // namespace

std::vector<std::array<double, 4>> legacy_cell_anchors(int64_t stride, double size,
                                                       const std::vector<double>& aspect_ratios) {
  // Base box [0, 0, stride - 1, stride - 1]: w = h = stride, centre (stride - 1) / 2.
  const double base = static_cast<double>(stride);
  const double ctr = 0.5 * (base - 1);
  const double scale = size / base;
  std::vector<std::array<double, 4>> cells;
  for (const double ratio : aspect_ratios) {
    // std::nearbyint rounds half to even under the default rounding mode, as np.round does.
    const double ratio_w = std::nearbyint(std::sqrt(base * base / ratio));
    const double ratio_h = std::nearbyint(ratio_w * ratio);
    cells.push_back(centred_box(ratio_w * scale, ratio_h * scale, ctr, ctr));
  }
  return cells;
}

void grid_anchors_cpu(const at::Tensor& cells, const AnchorGrid& grid, at::Tensor& out) {
  const float* cell_data = cells.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  at::parallel_for(0, grid.offset[grid.num_levels], 4096, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      write_anchor(grid, cell_data, row, out_data + 4 * row);
    }
  });
}

std::vector<at::Tensor> generate_anchors(const std::vector<std::vector<int64_t>>& feature_sizes,
                                         const std::vector<int64_t>& strides,
                                         const std::vector<double>& sizes,
                                         const std::vector<double>& aspect_ratios,
                                         at::Device device) {
  const int64_t num_levels = static_cast<int64_t>(feature_sizes.size());
  TORCH_CHECK(num_levels >= 1 && num_levels <= kMaxAnchorLevels,
              "generate_anchors: feature_sizes must name 1 to ", kMaxAnchorLevels, " levels, got ",
              num_levels);
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == num_levels &&
                  static_cast<int64_t>(sizes.size()) == num_levels,
              "generate_anchors: strides and sizes need one value per level (", num_levels, ")");
  TORCH_CHECK(!aspect_ratios.empty(), "generate_anchors: aspect_ratios is empty");

  AnchorGrid grid{};
  grid.num_levels = static_cast<int>(num_levels);
  grid.cells_per_level = static_cast<int>(aspect_ratios.size());
  std::vector<float> cells;
  for (int64_t l = 0; l < num_levels; ++l) {
    TORCH_CHECK(
        feature_sizes[l].size() == 2 && feature_sizes[l][0] >= 0 && feature_sizes[l][1] >= 0,
        "generate_anchors: feature_sizes[", l, "] must be (height, width) >= 0");
    TORCH_CHECK(strides[l] > 0 && sizes[l] > 0, "generate_anchors: strides[", l, "] and sizes[", l,
                "] must be positive");
    grid.width[l] = feature_sizes[l][1];
    grid.stride[l] = strides[l];
    grid.offset[l + 1] =
        grid.offset[l] + feature_sizes[l][0] * feature_sizes[l][1] * grid.cells_per_level;
    for (const auto& cell : legacy_cell_anchors(strides[l], sizes[l], aspect_ratios)) {
      for (const double v : cell) {
        cells.push_back(static_cast<float>(v));
      }
    }
  }
  const int64_t total = grid.offset[num_levels];

  at::Tensor out = at::empty({total, 4}, at::TensorOptions(device).dtype(at::kFloat));
  if (total > 0) {
    const at::Tensor cell_t =
        at::tensor(cells, at::kFloat).view({-1, 4}).to(device, /*non_blocking=*/false);
    grid_anchors(cell_t, grid, out);
  }
  std::vector<at::Tensor> levels;
  for (int64_t l = 0; l < num_levels; ++l) {
    levels.push_back(out.narrow(0, grid.offset[l], grid.offset[l + 1] - grid.offset[l]));
  }
  return levels;
}

}  // namespace harness
