// Where one ROI's bins and sampling points lie on its feature map; shared by CPU and CUDA kernels.
#pragma once

#include <math.h>

#include "common/macros.h"

namespace harness {

template <typename T>
struct RoiGeometry {
  int batch;  // image the ROI belongs to
  T start_y;  // top-left corner of the ROI, pixels of its feature map
  T start_x;
  T bin_h;  // size of one output bin, pixels of the feature map
  T bin_w;
  int grid_h;  // sampling points per bin along each axis
  int grid_w;
  T inv_count;  // 1 / sampling points per bin: each bin is their mean

  // Centre of sampling point `i` of bin `p` along y (resp. x), in feature-map pixels; the
  // expression is the one torchvision evaluates so results agree to the last bit where possible.
  HOST_DEVICE_INLINE T sample_y(int p, int i) const {
    return start_y + static_cast<T>(p) * bin_h +
           static_cast<T>(i + 0.5) * bin_h / static_cast<T>(grid_h);
  }
  HOST_DEVICE_INLINE T sample_x(int p, int i) const {
    return start_x + static_cast<T>(p) * bin_w +
           static_cast<T>(i + 0.5) * bin_w / static_cast<T>(grid_w);
  }
};

// `roi` = (batch index, x1, y1, x2, y2) in input-image pixels; `scale` maps them onto the feature
// map. Returns false for a ROI that pools to zeros: non-finite values or a batch index outside
// [0, batch_size). The kernels rely on this to stay in bounds whatever the caller passes.
template <typename T>
HOST_DEVICE_INLINE bool roi_geometry(const T* roi, T scale, int pooled_h, int pooled_w,
                                     int sampling_ratio, bool aligned, int batch_size,
                                     RoiGeometry<T>& g) {
  for (int i = 0; i < 5; ++i) {
    // x - x is 0 exactly for finite x, NaN for inf and NaN; portable to device code.
    if (!(roi[i] - roi[i] == T(0))) return false;
  }
  if (!(roi[0] >= T(0) && roi[0] < static_cast<T>(batch_size))) return false;
  g.batch = static_cast<int>(roi[0]);
  // aligned=True shifts by half a pixel so box corners land on pixel corners (Detectron2's fix).
  const T offset = aligned ? T(0.5) : T(0);
  g.start_x = roi[1] * scale - offset;
  g.start_y = roi[2] * scale - offset;
  T width = roi[3] * scale - offset - g.start_x;
  T height = roi[4] * scale - offset - g.start_y;
  if (!aligned) {
    // The legacy (MLPerf) variant inflates degenerate ROIs to one pixel.
    width = width > T(1) ? width : T(1);
    height = height > T(1) ? height : T(1);
  }
  g.bin_h = height / static_cast<T>(pooled_h);
  g.bin_w = width / static_cast<T>(pooled_w);
  g.grid_h =
      sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(static_cast<double>(g.bin_h)));
  g.grid_w =
      sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(static_cast<double>(g.bin_w)));
  const int count = g.grid_h * g.grid_w;
  g.inv_count = T(1) / static_cast<T>(count > 1 ? count : 1);
  return true;
}

}  // namespace harness
