// CPU kernels of harness::mask_rle and harness::resize_bilinear: masks in parallel; per mask the
// box's pixels are resized column by column (COCO's order) straight into the image's runs, so no
// box-sized or image-sized buffer is ever written, and stretches of a column that are decided
// before interpolation (far from the threshold) are written as a whole.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "mask_rle/mask_rle.h"

namespace harness::detail {
namespace {

// Up to this output height + width ATen resizes a single-channel plane with its channels-last
// kernel (four weights multiplied out, four products summed), above it with its generic separable
// kernel (each source row along x, then two rows along y): aten/src/ATen/native/cpu/
// UpSampleKernel.cpp, _use_vectorized_kernel_cond_2d and upsample_bilinear2d_kernel_impl_float
// (pytorch/pytorch bb7240c). Which products the FMA build fuses is not in the source (the compiler
// contracts them); the orders below are the ones that equal torch 2.14.1's AVX2 kernels bit for
// bit (tests/ops/test_mask_rle.py), and harness/ops/mask_rle.py checks them at run time.
constexpr int64_t kChannelsLastMaxSize = 128;

// Inlined into resize_window_fma below, so that its std::fma calls become FMA instructions there.
#define HARNESS_ALWAYS_INLINE inline __attribute__((always_inline))

// a * b + c rounded once (ATen's FMA build) or twice (its DEFAULT build). This file is built
// without -mfma, so the compiler never fuses the plain expression itself; std::fma is exact on
// any CPU (a libm call, or one instruction inside resize_window_fma).
template <bool kFused>
HARNESS_ALWAYS_INLINE float madd(float a, float b, float c) {
  if constexpr (kFused) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

// One output axis: the two source indices and weights of every output index, rounded in float32
// as ATen's compute_source_index_and_lambda (ATen/native/UpSample.h) rounds them.
struct Taps {
  std::vector<int64_t> i0, i1;
  std::vector<float> l0, l1;
};

template <bool kFused>
HARNESS_ALWAYS_INLINE Taps linear_taps(int64_t in, int64_t out) {
  Taps t{std::vector<int64_t>(out), std::vector<int64_t>(out), std::vector<float>(out),
         std::vector<float>(out)};
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t o = 0; o < out; ++o) {
    if (in == out) {  // ATen copies
      t.i0[o] = t.i1[o] = o;
      t.l0[o] = 1.f;
      t.l1[o] = 0.f;
      continue;
    }
    // scale * (o + 0.5) - 0.5, clamped at 0 (area_pixel_compute_source_index).
    const float src = std::max(madd<kFused>(scale, static_cast<float>(o) + 0.5f, -0.5f), 0.f);
    const int64_t index = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    const float lambda = std::min(std::max(src - static_cast<float>(index), 0.f), 1.f);
    t.i0[o] = index;
    t.i1[o] = index + (index < in - 1 ? 1 : 0);
    t.l0[o] = 1.f - lambda;
    t.l1[o] = lambda;
  }
  return t;
}

// Where the resized pixels go. A sink has begin(x) / end() around each column x of the window and
// pixel(y, value) for each of its rows y, top to bottom (x, y in pixels of the output box). A sink
// with kThresholds (mask_rle's) only keeps whether value > its threshold; it has `margins` and also
// takes stretch(y, on): rows y and below, up to the next call in the column, are `on`.
//
// ValueSink: the resize itself, for resize_bilinear.
struct ValueSink {
  static constexpr bool kThresholds = false;
  float* out;
  int64_t width;
  int64_t x = 0;

  void begin(int64_t column) { x = column; }
  void pixel(int64_t y, float value) { out[y * width + x] = value; }
  void end() {}
};

// The mask's threshold margins: two interpolated values (along_x, below) both <= low give a pixel
// <= threshold, both >= high a pixel > threshold, whatever the rounding. Why: the pixel is
// fl(a * l0 + fl(b * l1)) (fused) or fl(fl(a * l0) + fl(b * l1)) (plain) with weights l0, l1 in
// [0, 1] and l0 + l1 = fl(1 - l1) + l1 within 2^-25 of 1; each rounding is monotone, so for a, b
// <= low the pixel is at most low * (1 + 2^-25) * (1 + 2^-24)^2 < low * (1 + 2^-22), and for a, b
// >= high at least high * (1 - 2^-25) * (1 - 2^-24)^2 > high * (1 - 2^-22). With margins of
// 2^-20 (relative; low and high themselves rounded within 2^-24) both sides are decided with room
// to spare. The bounds assume a normal, positive threshold; any other turns the shortcut off.
struct Margins {
  float low, high;
  explicit Margins(float threshold) {
    const bool on = threshold >= std::numeric_limits<float>::min() && std::isfinite(threshold);
    low = on ? threshold * (1.f - 0x1p-20f) : -std::numeric_limits<float>::infinity();
    high = on ? threshold * (1.f + 0x1p-20f) : std::numeric_limits<float>::infinity();
  }
};

// Resizes the plane src [in_h, in_w] to [out_h, out_w] with ATen's fused or plain arithmetic and
// hands the window rows [r0, r1) x columns [c0, c1) to `sink`, column by column.
template <bool kFused, typename Sink>
HARNESS_ALWAYS_INLINE void resize_window(const float* src, int64_t in_h, int64_t in_w,
                                         int64_t out_h, int64_t out_w, int64_t r0, int64_t r1,
                                         int64_t c0, int64_t c1, Sink& sink) {
  const Taps rows = linear_taps<kFused>(in_h, out_h);
  const Taps cols = linear_taps<kFused>(in_w, out_w);
  if (out_h + out_w <= kChannelsLastMaxSize) {
    for (int64_t x = c0; x < c1; ++x) {
      const int64_t x0 = cols.i0[x], x1 = cols.i1[x];
      sink.begin(x);
      for (int64_t y = r0; y < r1; ++y) {
        const float* top = src + rows.i0[y] * in_w;
        const float* bottom = src + rows.i1[y] * in_w;
        const float w00 = rows.l0[y] * cols.l0[x], w01 = rows.l0[y] * cols.l1[x];
        const float w10 = rows.l1[y] * cols.l0[x], w11 = rows.l1[y] * cols.l1[x];
        // ((top[x0] * w00 + top[x1] * w01) + bottom[x0] * w10) + bottom[x1] * w11, in the order
        // the FMA build fuses it.
        const float first = madd<kFused>(top[x0], w00, top[x1] * w01);
        sink.pixel(y, madd<kFused>(bottom[x1], w11, madd<kFused>(bottom[x0], w10, first)));
      }
      sink.end();
    }
    return;
  }
  // The generic kernel: every source row interpolated at column x (along_x), then two of them at
  // row y. Consecutive rows y that read the same two source rows form a segment; where a sink
  // thresholds and both rows lie beyond the margins, the whole segment is decided without its
  // pixels.
  std::vector<int64_t> segment_starts;
  for (int64_t y = r0; y < r1; ++y) {
    if (y == r0 || rows.i0[y] != rows.i0[y - 1]) segment_starts.push_back(y);
  }
  segment_starts.push_back(r1);
  std::vector<float> along_x(in_h);
  for (int64_t x = c0; x < c1; ++x) {
    const int64_t x0 = cols.i0[x], x1 = cols.i1[x];
    const float l0 = cols.l0[x], l1 = cols.l1[x];
    for (int64_t r = 0; r < in_h; ++r) {
      along_x[r] = madd<kFused>(src[r * in_w + x0], l0, src[r * in_w + x1] * l1);
    }
    sink.begin(x);
    for (size_t s = 0; s + 1 < segment_starts.size(); ++s) {
      const int64_t begin = segment_starts[s], end = segment_starts[s + 1];
      const float a = along_x[rows.i0[begin]], b = along_x[rows.i1[begin]];
      if constexpr (Sink::kThresholds) {
        if (a <= sink.margins.low && b <= sink.margins.low) {
          sink.stretch(begin, false);
          continue;
        }
        if (a >= sink.margins.high && b >= sink.margins.high) {
          sink.stretch(begin, true);
          continue;
        }
      }
      for (int64_t y = begin; y < end; ++y) {
        sink.pixel(y, madd<kFused>(a, rows.l0[y], b * rows.l1[y]));
      }
    }
    sink.end();
  }
}

// The fused arithmetic built for FMA hardware: everything above inlines here, and std::fma
// becomes one instruction instead of a libm call. Every multiply-add in it is an explicit
// std::fma, so the compiler finds nothing else to fuse.
template <typename Sink>
__attribute__((target("fma"))) void resize_window_fma(const float* src, int64_t in_h, int64_t in_w,
                                                      int64_t out_h, int64_t out_w, int64_t r0,
                                                      int64_t r1, int64_t c0, int64_t c1,
                                                      Sink& sink) {
  resize_window<true>(src, in_h, in_w, out_h, out_w, r0, r1, c0, c1, sink);
}

// ATen's own resize of the whole box, handed over like resize_window's.
template <typename Sink>
void resize_window_aten(const float* src, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                        int64_t r0, int64_t r1, int64_t c0, int64_t c1, Sink& sink) {
  const at::Tensor plane =
      at::from_blob(const_cast<float*>(src), {1, 1, in_h, in_w}, at::TensorOptions(at::kFloat));
  const at::Tensor resized = at::upsample_bilinear2d(plane, {out_h, out_w}, false);
  const float* out = resized.const_data_ptr<float>();
  for (int64_t x = c0; x < c1; ++x) {
    sink.begin(x);
    for (int64_t y = r0; y < r1; ++y) sink.pixel(y, out[y * out_w + x]);
    sink.end();
  }
}

template <typename Sink>
void resize_columns(const float* src, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                    ResizeArithmetic arithmetic, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                    Sink& sink) {
  static const bool has_fma = __builtin_cpu_supports("fma");
  switch (arithmetic) {
    case ResizeArithmetic::kAten:
      return resize_window_aten(src, in_h, in_w, out_h, out_w, r0, r1, c0, c1, sink);
    case ResizeArithmetic::kFused:
      if (has_fma) return resize_window_fma(src, in_h, in_w, out_h, out_w, r0, r1, c0, c1, sink);
      return resize_window<true>(src, in_h, in_w, out_h, out_w, r0, r1, c0, c1, sink);
    case ResizeArithmetic::kPlain:
      return resize_window<false>(src, in_h, in_w, out_h, out_w, r0, r1, c0, c1, sink);
  }
}

// The runs of one (height, width) mask in COCO's column-major order, from the positions where its
// value changes; `finish` writes them as COCO's compressed string (pycocotools' rleToString): each
// count, less the count two before it from the fourth on, in 5-bit groups from the lowest, each
// group plus 48 with 0x20 set while more follow, until the rest is 0 (or -1 for a negative count).
class RunWriter {
 public:
  explicit RunWriter(int64_t numel) : numel_(numel) {}

  // Pixel `position` (column-major) and those after it, up to the next call, are `on`.
  void set(int64_t position, bool on) {
    if (on != on_) {
      counts_.push_back(position - start_);
      start_ = position;
      on_ = on;
    }
  }

  std::string finish() {
    counts_.push_back(numel_ - start_);
    std::string out;
    for (size_t i = 0; i < counts_.size(); ++i) {
      int64_t rest = counts_[i] - (i > 2 ? counts_[i - 2] : 0);
      bool more = true;
      while (more) {
        int64_t group = rest & 0x1f;
        rest >>= 5;  // arithmetic shift: the sign stays
        more = (group & 0x10) ? rest != -1 : rest != 0;
        if (more) group |= 0x20;
        out.push_back(static_cast<char>(group + 48));
      }
    }
    return out;
  }

 private:
  int64_t numel_;
  int64_t start_ = 0;
  bool on_ = false;
  std::vector<int64_t> counts_;
};

// mask_rle's sink: the window's pixels, thresholded, into the image's runs. The box's top-left
// pixel is (y1, x1) in the image; its visible rows are [top, bottom) of the image; the pixels above
// and below them in each column are 0.
struct RunSink {
  static constexpr bool kThresholds = true;
  RunWriter& runs;
  Margins margins;
  float threshold;
  int64_t height, x1, y1, top, bottom;
  int64_t column = 0;  // position of the current column's first pixel in the image

  void begin(int64_t x) {
    column = (x + x1) * height;
    if (top > 0) runs.set(column, false);
  }
  void pixel(int64_t y, float value) { runs.set(column + y + y1, value > threshold); }
  void stretch(int64_t y, bool on) { runs.set(column + y + y1, on); }
  void end() {
    if (bottom < height) runs.set(column + bottom, false);
  }
};

std::string mask_string(const float* plane, int64_t in_h, int64_t in_w, const int64_t* box,
                        int64_t height, int64_t width, float threshold,
                        ResizeArithmetic arithmetic) {
  const int64_t x1 = box[0], y1 = box[1], x2 = box[2], y2 = box[3];
  const int64_t out_w = std::max<int64_t>(x2 - x1 + 1, 1);
  const int64_t out_h = std::max<int64_t>(y2 - y1 + 1, 1);
  // The box's part inside the image, in image pixels.
  const int64_t left = std::max<int64_t>(x1, 0), right = std::min(x2 + 1, width);
  const int64_t top = std::max<int64_t>(y1, 0), bottom = std::min(y2 + 1, height);
  RunWriter runs(height * width);
  if (right <= left || bottom <= top) return runs.finish();
  RunSink sink{runs, Margins(threshold), threshold, height, x1, y1, top, bottom};
  resize_columns(plane, in_h, in_w, out_h, out_w, arithmetic, top - y1, bottom - y1, left - x1,
                 right - x1, sink);
  if (right < width) runs.set(right * height, false);
  return runs.finish();
}

std::tuple<at::Tensor, at::Tensor> mask_rle_cpu(const at::Tensor& masks, const at::Tensor& boxes,
                                                int64_t height, int64_t width, double threshold,
                                                c10::string_view arithmetic) {
  check_mask_rle_args(masks, boxes, height, width);
  const ResizeArithmetic how =
      parse_arithmetic("mask_rle", std::string_view(arithmetic.data(), arithmetic.size()));
  const int64_t num = masks.size(0);
  std::vector<std::string> strings(num);
  if (num > 0) {
    const at::Tensor planes = masks.contiguous();
    const at::Tensor corners = boxes.contiguous();
    const int64_t in_h = planes.size(1), in_w = planes.size(2);
    const float* data = planes.const_data_ptr<float>();
    const int64_t* box = corners.const_data_ptr<int64_t>();
    // torch compares a float32 tensor with a Python float in float32.
    const float cut = static_cast<float>(threshold);
    at::parallel_for(0, num, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        strings[k] =
            mask_string(data + k * in_h * in_w, in_h, in_w, box + 4 * k, height, width, cut, how);
      }
    });
  }
  at::Tensor offsets = at::empty({num + 1}, at::TensorOptions(at::kLong));
  int64_t* offset = offsets.data_ptr<int64_t>();
  offset[0] = 0;
  for (int64_t k = 0; k < num; ++k) offset[k + 1] = offset[k] + strings[k].size();
  at::Tensor chars = at::empty({offset[num]}, at::TensorOptions(at::kByte));
  uint8_t* out = chars.data_ptr<uint8_t>();
  for (int64_t k = 0; k < num; ++k)
    std::copy(strings[k].begin(), strings[k].end(), out + offset[k]);
  return {chars, offsets};
}

at::Tensor resize_bilinear_cpu(const at::Tensor& plane, int64_t height, int64_t width,
                               c10::string_view arithmetic) {
  check_plane("resize_bilinear", "plane", plane, 2);
  TORCH_CHECK(height >= 1 && width >= 1, "resize_bilinear: height and width must be >= 1, got ",
              height, " x ", width);
  const ResizeArithmetic how =
      parse_arithmetic("resize_bilinear", std::string_view(arithmetic.data(), arithmetic.size()));
  const at::Tensor src = plane.contiguous();
  at::Tensor out = at::empty({height, width}, src.options());
  ValueSink sink{out.data_ptr<float>(), width};
  resize_columns(src.const_data_ptr<float>(), src.size(0), src.size(1), height, width, how, 0,
                 height, 0, width, sink);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(harness, CPU, m) {
  m.impl("mask_rle", &mask_rle_cpu);
  m.impl("resize_bilinear", &resize_bilinear_cpu);
}

}  // namespace harness::detail
