// Bilinear interpolation with the border convention of Detectron's ROIAlign, shared by CPU and
// CUDA.
#pragma once

#include "common/macros.h"

namespace harness {

// The two pixels one coordinate interpolates between along one axis and their weights.
template <typename T>
struct LinearTaps {
  int low;
  int high;
  T w_low;
  T w_high;
};

// Taps of `coord` (pixel units, pixel centres at integers) on an axis of `size` pixels. Returns
// false for a sample more than one pixel outside the map: it contributes nothing. Closer samples
// are clamped onto the border pixel rather than fading to zero, as Detectron and torchvision do, so
// the pooled values match the peers exactly. The range test is negated so NaN also reads as
// outside.
template <typename T>
HOST_DEVICE_INLINE bool linear_taps(T coord, int size, LinearTaps<T>& taps) {
  if (size <= 0 || !(coord >= T(-1) && coord <= static_cast<T>(size))) return false;
  if (coord <= T(0)) coord = T(0);
  int low = static_cast<int>(coord);
  int high = low + 1;
  if (low >= size - 1) {
    low = high = size - 1;
    coord = static_cast<T>(low);
  }
  const T frac = coord - static_cast<T>(low);
  taps = {low, high, T(1) - frac, frac};
  return true;
}

// Bilinear weights factor into a y part and an x part; a sample is dropped when either axis is out.
template <typename T>
struct BilinearTaps {
  LinearTaps<T> y;
  LinearTaps<T> x;
};

template <typename T>
HOST_DEVICE_INLINE bool bilinear_taps(T y, T x, int height, int width, BilinearTaps<T>& taps) {
  return linear_taps(y, height, taps.y) && linear_taps(x, width, taps.x);
}

// Value of the row-major `plane` [height, width] at (y, x); 0 outside.
template <typename T>
HOST_DEVICE_INLINE T bilinear_interpolate(const T* plane, int height, int width, T y, T x) {
  BilinearTaps<T> t;
  if (!bilinear_taps(y, x, height, width, t)) return T(0);
  const T* row_low = plane + static_cast<long long>(t.y.low) * width;
  const T* row_high = plane + static_cast<long long>(t.y.high) * width;
  return t.y.w_low * (t.x.w_low * row_low[t.x.low] + t.x.w_high * row_low[t.x.high]) +
         t.y.w_high * (t.x.w_low * row_high[t.x.low] + t.x.w_high * row_high[t.x.high]);
}

}  // namespace harness
