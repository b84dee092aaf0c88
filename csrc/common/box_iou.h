// Axis-aligned box overlap shared by the CPU and CUDA NMS kernels.
//
// Boxes are (x1, y1, x2, y2). `offset` is added to every width and height: 0 for torchvision's
// convention (width x2 - x1), 1 for the legacy inclusive-pixel convention of maskrcnn-benchmark,
// the MLPerf reference (width x2 - x1 + 1; its nms.cu devIoU). The operations run in the order
// torchvision's CPU kernel (and, with offset 1, devIoU) uses, so kept sets agree with them bit for
// bit (adding 0 is exact); on the device the products use round-to-nearest intrinsics so nvcc
// cannot contract them into FMAs, which would round differently from the host.
#pragma once

#include <cmath>
#include <limits>

#include "common/macros.h"

namespace harness {

template <typename T>
HOST_DEVICE_INLINE T exact_mul(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

template <typename T>
HOST_DEVICE_INLINE T box_area(T x1, T y1, T x2, T y2, T offset) {
  return exact_mul(x2 - x1 + offset, y2 - y1 + offset);
}

// IoU of box a and box b given their precomputed areas; NaN when both are empty (0 / 0), which
// compares false against any threshold, as in torchvision.
template <typename T>
HOST_DEVICE_INLINE T box_iou(T ax1, T ay1, T ax2, T ay2, T a_area, T bx1, T by1, T bx2, T by2,
                             T b_area, T offset) {
  const T left = ax1 < bx1 ? bx1 : ax1;
  const T top = ay1 < by1 ? by1 : ay1;
  const T right = bx2 < ax2 ? bx2 : ax2;
  const T bottom = by2 < ay2 ? by2 : ay2;
  const T w = T(0) < right - left + offset ? right - left + offset : T(0);
  const T h = T(0) < bottom - top + offset ? bottom - top + offset : T(0);
  const T inter = exact_mul(w, h);
  return inter / (a_area + b_area - inter);
}

// The T a kernel compares each T-valued IoU with (`iou > t`). torchvision compares in double, so
// t is the largest T not above `threshold`: `iou > threshold` holds exactly when `iou > t`.
// The legacy (MLPerf reference) kernel takes its threshold as a float and compares in float.
template <typename T>
inline T threshold_as(double threshold, bool legacy) {
  if (legacy) {
    return static_cast<T>(static_cast<float>(threshold));
  }
  T t = static_cast<T>(threshold);
  if (static_cast<double>(t) > threshold) {
    t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  }
  return t;
}

}  // namespace harness
