// Polygon rasterization bit-identical to pycocotools' rleFrPoly, shared by CPU and CUDA kernels.
//
// rleFrPoly (cocoapi common/maskApi.c) works on a grid 5x finer than the pixels: each vertex
// becomes (int)(5 * v + .5) (C truncation, so -2.3 -> -11 and -0.1 -> 0), each edge is walked one
// fine step at a time along its major axis, the minor coordinate of step t being (int)(start +
// slope * t + .5) in double precision. A pair of consecutive fine points whose x goes from 5c + 2
// to 5c + 3 (either way) crosses the centre of pixel column c; the crossing toggles the column's
// fill state from row ceil(clamp((min(v) + .5) / 5 - .5, 0, h)) downwards. The RLE then lists those
// toggles in column-major order.
//
// Here each edge yields its crossings directly: on an x-major edge the crossing of column c is at a
// known step, on a y-major edge the fine x is monotone in the step, so it is found from an estimate
// and a short exact search. Both evaluate fine points with the same double expressions as the C
// code, and the row formula has an exact integer equivalent, so the toggles match bit for bit.
// Fine points where consecutive edges meet share their x (or both lie left of column 0), so joins
// never cross a column; every column is therefore crossed an even number of times by a closed
// polygon, and its fill is the running parity of its own toggles (a toggle clamped to row h affects
// nothing). That makes columns independent: no run-length encoding, no sorting; a column is a
// bitmap of toggles whose prefix XOR is its fill.
//
// Integer ranges: callers bound coordinates so that 5 * |scaled coordinate| < 2^30 (see
// harness/ops/mask_targets.py); all fine-grid arithmetic then fits in int.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace harness::raster {

// Upsampling factor of rleFrPoly's fine grid.
constexpr int kFine = 5;

// IEEE double products and sums without FMA contraction (nvcc contracts a * b + c by default, which
// would change the rounding that pycocotools' compiled C performs).
HOST_DEVICE_INLINE double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

HOST_DEVICE_INLINE double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

HOST_DEVICE_INLINE int floor_div(int a, int b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

HOST_DEVICE_INLINE int ceil_div(int a, int b) { return -floor_div(-a, b); }

// (int)(origin + slope * t + .5) exactly as maskApi.c evaluates it.
HOST_DEVICE_INLINE int step_coord(int origin, double slope, int t) {
  return static_cast<int>(
      add_rn(add_rn(static_cast<double>(origin), mul_rn(slope, static_cast<double>(t))), 0.5));
}

// Where one ROI's polygons land in the M x M mask, following maskrcnn-benchmark in float32:
// crop subtracts (x1, y1); resize multiplies by float(M / max(x2 - x1, 1)) (the ratio is formed in
// double from the float32 width, then rounded to float32 as torch does for a Python scalar).
struct RoiFrame {
  float x0, y0, scale_x, scale_y;
};

HOST_DEVICE_INLINE float roi_scale(float lo, float hi, int mask_size) {
  float extent = hi - lo;
  extent = extent < 1.f ? 1.f : extent;
  return static_cast<float>(static_cast<double>(mask_size) / static_cast<double>(extent));
}

HOST_DEVICE_INLINE RoiFrame roi_frame(const float* roi, int mask_size) {
  return {roi[0], roi[1], roi_scale(roi[0], roi[2], mask_size),
          roi_scale(roi[1], roi[3], mask_size)};
}

// One coordinate on the fine grid: (int)(5 * (double)((v - origin) * scale) + .5).
HOST_DEVICE_INLINE int fine_coord(float v, float origin, float scale) {
#ifdef __CUDA_ARCH__
  const float mask_coord = __fmul_rn(__fsub_rn(v, origin), scale);
#else
  const float mask_coord = (v - origin) * scale;
#endif
  // Valid input stays within |mask_coord| <= 2e5 * 512 (harness/ops/mask_targets.py); the clamp
  // (NaN to 0) only keeps unchecked input from overflowing int, never changes a valid result.
  constexpr float kLimit = 134217728.0f;  // 2^27: 5 * 2^27 < 2^30
  const float bounded = mask_coord >= -kLimit ? (mask_coord <= kLimit ? mask_coord : kLimit)
                                              : (mask_coord < -kLimit ? -kLimit : 0.0f);
  return static_cast<int>(add_rn(mul_rn(kFine, static_cast<double>(bounded)), 0.5));
}

// The mask row where a crossing whose lower fine y is `fine_y` starts toggling, in [0, mask_size].
// maskApi.c computes ceil(clamp((fine_y + .5) / 5 - .5, 0, h)) in double; for an integer fine_y
// that quotient is (fine_y - 2) / 5 rounded by far less than the 0.2 gap to the next integer, so
// integer arithmetic gives the same row.
HOST_DEVICE_INLINE int crossing_row(int fine_y, int mask_size) {
  const int row = ceil_div(fine_y - 2, kFine);
  return row < 0 ? 0 : (row > mask_size ? mask_size : row);
}

// Column bitmaps: bit r of word w of a column stands for row 64 * w + r.
constexpr int kRowsPerWord = 64;

HOST_DEVICE_INLINE int column_words(int mask_size) {
  return (mask_size + kRowsPerWord - 1) / kRowsPerWord;
}

// Turns a column's toggle bits into its fill bits in place: a row is inside when an odd number of
// toggles sit at or above it. A prefix XOR within each word, carried across words. Word is a 64-bit
// unsigned type (CUDA's atomics want unsigned long long, the host code uses uint64_t).
template <typename Word>
HOST_DEVICE_INLINE void toggles_to_fill(Word* words, int count) {
  static_assert(sizeof(Word) * 8 == kRowsPerWord, "a column word holds 64 rows");
  Word carry = 0;
  for (int w = 0; w < count; ++w) {
    Word x = words[w];
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x ^= carry;
    carry = Word{0} - (x >> 63);
    words[w] = x;
  }
}

// Calls toggle(column, row) for every pixel-column crossing of the edge (xs, ys) -> (xe, ye) (fine
// grid) with row < mask_size; rows clamped to mask_size are dropped since they toggle no pixel.
template <typename Toggle>
HOST_DEVICE_INLINE void edge_toggles(int xs, int ys, int xe, int ye, int mask_size,
                                     Toggle&& toggle) {
  const int dx = xs < xe ? xe - xs : xs - xe;
  const int dy = ys < ye ? ye - ys : ys - ye;
  if (dx == 0 && dy == 0) return;  // maskApi.c computes 0/0 here but never uses the point
  // rleFrPoly walks the edge from the endpoint with the smaller major coordinate.
  if ((dx >= dy && xs > xe) || (dx < dy && ys > ye)) {
    int t = xs;
    xs = xe;
    xe = t;
    t = ys;
    ys = ye;
    ye = t;
  }
  const auto emit = [&](int column, int fine_y) {
    const int row = crossing_row(fine_y, mask_size);
    if (row < mask_size) toggle(column, row);
  };
  if (dx >= dy) {
    // Step t sits at fine x = xs + t, so column c is crossed between steps 5c + 2 - xs and the
    // next.
    const double slope = static_cast<double>(ye - ys) / dx;
    const int c_lo = ceil_div(xs - 2, kFine) > 0 ? ceil_div(xs - 2, kFine) : 0;
    const int c_hi_edge = floor_div(xs + dx - 3, kFine);
    const int c_hi = c_hi_edge < mask_size - 1 ? c_hi_edge : mask_size - 1;
    for (int c = c_lo; c <= c_hi; ++c) {
      const int t = kFine * c + 2 - xs;
      const int a = step_coord(ys, slope, t);
      const int b = step_coord(ys, slope, t + 1);
      emit(c, a < b ? a : b);
    }
    return;
  }
  // y-major: step t sits at fine y = ys + t and fine x = step_coord(xs, slope, t), monotone in t
  // with |slope| < 1, so each column is crossed at most once, between steps t - 1 and t.
  if (xs == xe) return;
  const double slope = static_cast<double>(xe - xs) / dy;
  const bool rising = xe > xs;
  const int x_first = step_coord(xs, slope, 0);
  const int x_last = step_coord(xs, slope, dy);
  const int x_min = rising ? x_first : x_last;
  const int x_max = rising ? x_last : x_first;
  const int c_lo = ceil_div(x_min - 2, kFine) > 0 ? ceil_div(x_min - 2, kFine) : 0;
  const int c_hi_edge = floor_div(x_max - 3, kFine);
  const int c_hi = c_hi_edge < mask_size - 1 ? c_hi_edge : mask_size - 1;
  for (int c = c_lo; c <= c_hi; ++c) {
    // past(t): step t lies beyond the crossing; false at t = 0, true at t = dy.
    const auto past = [&](int t) {
      const int x = step_coord(xs, slope, t);
      return rising ? x >= kFine * c + 3 : x <= kFine * c + 2;
    };
    const double estimate = ceil((kFine * c + 2.5 - xs) / slope);
    int t = estimate < 1 ? 1 : (estimate > dy ? dy : static_cast<int>(estimate));
    while (t > 1 && past(t - 1)) --t;
    while (t < dy && !past(t)) ++t;
    emit(c, ys + t - 1);
  }
}

}  // namespace harness::raster
