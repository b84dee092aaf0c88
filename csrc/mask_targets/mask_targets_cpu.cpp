// CPU mask targets: ROIs in parallel. Per ROI, each polygon's column crossings are XOR-ed into
// per-column toggle bitmaps, turned into fill bitmaps by a prefix XOR and OR-ed together
// (pycocotools' merge is a union); the union is expanded into the float output once.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/polygon_raster.h"
#include "mask_targets/mask_targets.h"

namespace harness::detail {
namespace {

// Index checks cheap enough to run on every call (host memory: no device sync): they keep a direct
// caller of torch.ops.harness.mask_targets from reading out of bounds.
void check_offsets(const at::Tensor& vertices, const at::Tensor& poly_offsets,
                   const at::Tensor& obj_offsets, const at::Tensor& roi_objects) {
  const int64_t* po = poly_offsets.data_ptr<int64_t>();
  const int64_t num_polys = poly_offsets.numel() - 1;
  TORCH_CHECK(po[0] == 0 && po[num_polys] == vertices.size(0),
              "mask_targets: poly_offsets must run from 0 to V=", vertices.size(0));
  for (int64_t p = 0; p < num_polys; ++p) {
    TORCH_CHECK(po[p + 1] - po[p] >= 3, "mask_targets: polygon ", p, " has ", po[p + 1] - po[p],
                " vertices; a polygon needs at least 3");
  }
  const int64_t* oo = obj_offsets.data_ptr<int64_t>();
  const int64_t num_objects = obj_offsets.numel() - 1;
  TORCH_CHECK(oo[0] == 0 && oo[num_objects] == num_polys,
              "mask_targets: obj_offsets must run from 0 to P=", num_polys);
  for (int64_t n = 0; n < num_objects; ++n) {
    TORCH_CHECK(oo[n + 1] >= oo[n], "mask_targets: obj_offsets decreases at object ", n);
  }
  const int64_t* ro = roi_objects.data_ptr<int64_t>();
  for (int64_t k = 0; k < roi_objects.numel(); ++k) {
    TORCH_CHECK(ro[k] >= 0 && ro[k] < num_objects, "mask_targets: roi_objects[", k, "] = ", ro[k],
                " is outside [0, ", num_objects, ")");
  }
}

// Rasterizes polygons [first_poly, end_poly), cropped to the ROI, into out [M, M] (row-major).
// toggles, fill: scratch of M * column_words(M) words each.
void rasterize_roi(const float* vertices, const int64_t* poly_offsets, int64_t first_poly,
                   int64_t end_poly, raster::RoiFrame frame, int mask_size, uint64_t* toggles,
                   uint64_t* fill, float* out) {
  const int m = mask_size;
  const int words = raster::column_words(m);
  std::fill(fill, fill + m * words, uint64_t{0});
  for (int64_t p = first_poly; p < end_poly; ++p) {
    std::fill(toggles, toggles + m * words, uint64_t{0});
    const float* v = vertices + 2 * poly_offsets[p];
    const int64_t n = poly_offsets[p + 1] - poly_offsets[p];
    const int x_first = raster::fine_coord(v[0], frame.x0, frame.scale_x);
    const int y_first = raster::fine_coord(v[1], frame.y0, frame.scale_y);
    int x0 = x_first;
    int y0 = y_first;
    for (int64_t j = 0; j < n; ++j) {
      const bool closing = j + 1 == n;
      const int x1 = closing ? x_first : raster::fine_coord(v[2 * j + 2], frame.x0, frame.scale_x);
      const int y1 = closing ? y_first : raster::fine_coord(v[2 * j + 3], frame.y0, frame.scale_y);
      raster::edge_toggles(x0, y0, x1, y1, m, [&](int c, int row) {
        toggles[c * words + row / raster::kRowsPerWord] ^= uint64_t{1}
                                                           << (row % raster::kRowsPerWord);
      });
      x0 = x1;
      y0 = y1;
    }
    for (int c = 0; c < m; ++c) {
      raster::toggles_to_fill(toggles + c * words, words);
      for (int w = 0; w < words; ++w) fill[c * words + w] |= toggles[c * words + w];
    }
  }
  for (int row = 0; row < m; ++row) {
    const int w = row / raster::kRowsPerWord;
    const int bit = row % raster::kRowsPerWord;
    for (int c = 0; c < m; ++c) {
      out[row * m + c] = static_cast<float>((fill[c * words + w] >> bit) & 1);
    }
  }
}

}  // namespace

at::Tensor mask_targets_cpu(const at::Tensor& vertices, const at::Tensor& poly_offsets,
                            const at::Tensor& obj_offsets, const at::Tensor& rois,
                            const at::Tensor& roi_objects, int64_t mask_size) {
  check_mask_targets_args(vertices, poly_offsets, obj_offsets, rois, roi_objects, mask_size);
  TORCH_CHECK(rois.is_cpu(), "mask_targets: rois must be a CPU tensor");
  const int64_t num_rois = rois.size(0);
  at::Tensor out = at::empty({num_rois, mask_size, mask_size}, rois.options());
  check_offsets(vertices, poly_offsets, obj_offsets, roi_objects);
  if (num_rois == 0) return out;

  const float* vert = vertices.data_ptr<float>();
  const int64_t* po = poly_offsets.data_ptr<int64_t>();
  const int64_t* oo = obj_offsets.data_ptr<int64_t>();
  const float* box = rois.data_ptr<float>();
  const int64_t* obj = roi_objects.data_ptr<int64_t>();
  float* dst = out.data_ptr<float>();
  const int m = static_cast<int>(mask_size);
  const size_t scratch = static_cast<size_t>(m) * raster::column_words(m);
  // A 28x28 ROI with typical COCO polygons takes about a microsecond: hand out batches.
  at::parallel_for(0, num_rois, 64, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> toggles(scratch);
    std::vector<uint64_t> fill(scratch);
    for (int64_t k = begin; k < end; ++k) {
      rasterize_roi(vert, po, oo[obj[k]], oo[obj[k] + 1], raster::roi_frame(box + 4 * k, m), m,
                    toggles.data(), fill.data(), dst + k * m * m);
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(harness, CPU, m) { m.impl("mask_targets", &mask_targets_cpu); }

}  // namespace harness::detail
