// Cell anchors (host, float64), the plan both devices share, and the CPU kernel.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

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
                                                       c10::ArrayRef<double> aspect_ratios) {
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

AnchorPlan plan_anchors(at::IntArrayRef feature_sizes, at::IntArrayRef strides,
                        c10::ArrayRef<double> sizes, c10::ArrayRef<double> aspect_ratios) {
  const int64_t num_levels = static_cast<int64_t>(strides.size());
  TORCH_CHECK(num_levels >= 1 && num_levels <= kMaxAnchorLevels,
              "generate_anchors: strides must name 1 to ", kMaxAnchorLevels, " levels, got ",
              num_levels);
  TORCH_CHECK(
      static_cast<int64_t>(feature_sizes.size()) == 2 * num_levels &&
          static_cast<int64_t>(sizes.size()) == num_levels,
      "generate_anchors: feature_sizes needs (height, width) and sizes one value per level (",
      num_levels, " levels), got ", feature_sizes.size(), " and ", sizes.size());
  TORCH_CHECK(!aspect_ratios.empty(), "generate_anchors: aspect_ratios is empty");

  AnchorPlan plan{};
  AnchorGrid& grid = plan.grid;
  grid.num_levels = static_cast<int>(num_levels);
  grid.cells_per_level = static_cast<int>(aspect_ratios.size());
  for (int64_t l = 0; l < num_levels; ++l) {
    const int64_t height = feature_sizes[2 * l];
    const int64_t width = feature_sizes[2 * l + 1];
    TORCH_CHECK(height >= 0 && width >= 0, "generate_anchors: feature_sizes of level ", l,
                " must be (height, width) >= 0, got (", height, ", ", width, ")");
    TORCH_CHECK(strides[l] > 0 && sizes[l] > 0, "generate_anchors: strides[", l, "] and sizes[", l,
                "] must be positive");
    grid.width[l] = width;
    grid.stride[l] = strides[l];
    grid.offset[l + 1] = grid.offset[l] + height * width * grid.cells_per_level;
    for (const auto& cell : legacy_cell_anchors(strides[l], sizes[l], aspect_ratios)) {
      for (const double v : cell) {
        plan.cells.push_back(static_cast<float>(v));
      }
    }
  }
  return plan;
}

namespace {

at::Tensor generate_anchors_cpu(at::IntArrayRef feature_sizes, at::IntArrayRef strides,
                                c10::ArrayRef<double> sizes, c10::ArrayRef<double> aspect_ratios,
                                at::Device device) {
  const AnchorPlan plan = plan_anchors(feature_sizes, strides, sizes, aspect_ratios);
  const AnchorGrid& grid = plan.grid;
  at::Tensor out =
      at::empty({grid.offset[grid.num_levels], 4}, at::TensorOptions(device).dtype(at::kFloat));
  float* out_data = out.data_ptr<float>();
  at::parallel_for(0, grid.offset[grid.num_levels], 4096, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      write_anchor(grid, plan.cells.data(), row, out_data + 4 * row);
    }
  });
  return out;
}

// The op has no tensor argument to dispatch on: send it to the kernel of `device`'s backend.
at::Tensor generate_anchors_backend_select(at::IntArrayRef feature_sizes, at::IntArrayRef strides,
                                           c10::ArrayRef<double> sizes,
                                           c10::ArrayRef<double> aspect_ratios, at::Device device) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("harness::generate_anchors", "")
                             .typed<decltype(generate_anchors_backend_select)>();
  const c10::DispatchKeySet keys(c10::computeDispatchKey(std::nullopt, std::nullopt, device));
  return op.redispatch(keys, feature_sizes, strides, sizes, aspect_ratios, device);
}

}  // namespace

TORCH_LIBRARY_IMPL(harness, CPU, m) { m.impl("generate_anchors", &generate_anchors_cpu); }

TORCH_LIBRARY_IMPL(harness, BackendSelect, m) {
  m.impl("generate_anchors", &generate_anchors_backend_select);
}

}  // namespace harness
