// CPU ROIAlign. Each ROI's sampling grid becomes per-axis pixel weights once and serves every
// channel. The forward runs in parallel over ROIs; the backward runs in parallel over channels, so
// each thread owns a disjoint slice of every gradient map and accumulates without atomics.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "common/bilinear.h"
#include "roi_align/roi_align.h"
#include "roi_align/roi_align_geometry.h"

namespace harness::detail {
namespace {

// One axis of one ROI: for each output bin, the run of consecutive pixels its sampling points touch
// and each pixel's summed interpolation weight. Bilinear weights factor into a y and an x part, so
// a bin is sum_r wy[r] * sum_j wx[j] * f[r, j]: at most 4x4 taps with 2x2 samples per bin, fewer
// when samples share pixels, and far fewer than 4 taps per sample when the adaptive grid is dense.
template <typename T>
class AxisWeights {
 public:
  // `coord(p, i)` is sampling point i of bin p in pixels; every weight is multiplied by `factor`.
  template <typename Coord>
  void build(int bins, int grid, int size, T factor, Coord coord) {
    first_.resize(bins);
    count_.resize(bins);
    offset_.resize(bins);
    weights_.clear();
    for (int p = 0; p < bins; ++p) {
      int low = INT_MAX;
      int high = -1;
      LinearTaps<T> t;
      for (int i = 0; i < grid; ++i) {
        if (linear_taps(coord(p, i), size, t)) {
          low = std::min(low, t.low);
          high = std::max(high, t.high);
        }
      }
      offset_[p] = weights_.size();
      first_[p] = high < low ? 0 : low;
      count_[p] = high < low ? 0 : high - low + 1;
      weights_.resize(weights_.size() + count_[p], T(0));
      T* w = weights_.data() + offset_[p] - low;
      for (int i = 0; i < grid && count_[p] > 0; ++i) {
        if (linear_taps(coord(p, i), size, t)) {
          w[t.low] += t.w_low * factor;
          w[t.high] += t.w_high * factor;
        }
      }
    }
  }
  int first(int p) const { return first_[p]; }
  int count(int p) const { return count_[p]; }
  const T* weights(int p) const { return weights_.data() + offset_[p]; }

 private:
  std::vector<int> first_;
  std::vector<int> count_;
  std::vector<size_t> offset_;
  std::vector<T> weights_;
};

// sum_j w[j] * v[j] for the few pixels of one bin along x. The common lengths are spelled out:
// the compiler then keeps them in registers instead of running a loop of 2-4 iterations per row.
template <typename T>
inline T dot(const T* w, const T* v, int n) {
  switch (n) {
    case 4:
      return w[0] * v[0] + w[1] * v[1] + w[2] * v[2] + w[3] * v[3];
    case 3:
      return w[0] * v[0] + w[1] * v[1] + w[2] * v[2];
    case 2:
      return w[0] * v[0] + w[1] * v[1];
    default:
      T sum = T(0);
      for (int j = 0; j < n; ++j) sum += w[j] * v[j];
      return sum;
  }
}

// v[j] += a * w[j], the scatter counterpart of dot().
template <typename T>
inline void axpy(T a, const T* w, T* v, int n) {
  switch (n) {
    case 4:
      v[3] += a * w[3];
      [[fallthrough]];
    case 3:
      v[2] += a * w[2];
      [[fallthrough]];
    case 2:
      v[1] += a * w[1];
      v[0] += a * w[0];
      return;
    default:
      for (int j = 0; j < n; ++j) v[j] += a * w[j];
  }
}

template <typename T>
struct Pyramid {
  std::vector<T*> data;  // one [B, C, H_l, W_l] map per level
  std::vector<int> heights;
  std::vector<int> widths;
  std::vector<T> scales;
  int batch_size;
  int channels;
};

// Weight tables of every ROI, built once per call and shared by all channels.
template <typename T>
struct RoiTables {
  std::vector<AxisWeights<T>> ys;
  std::vector<AxisWeights<T>> xs;
  std::vector<int> level;  // -1: the ROI pools to zeros (see roi_align.h)
  std::vector<int> batch;
  // ROIs grouped by (level, image): consecutive ROIs then read the same feature plane, which stays
  // in cache; visiting ROIs in input order would stream a different plane from memory each time.
  std::vector<int64_t> order;
};

template <typename T>
RoiTables<T> build_tables(const Pyramid<T>& pyr, const T* rois, const int64_t* levels,
                          int64_t num_rois, int pooled_h, int pooled_w, int sampling_ratio,
                          bool aligned) {
  RoiTables<T> tables;
  tables.ys.resize(num_rois);
  tables.xs.resize(num_rois);
  tables.level.assign(num_rois, -1);
  tables.batch.assign(num_rois, 0);
  const int num_levels = static_cast<int>(pyr.data.size());
  at::parallel_for(0, num_rois, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int level = levels == nullptr ? 0 : static_cast<int>(levels[k]);
      RoiGeometry<T> g;
      if (level < 0 || level >= num_levels ||
          !roi_geometry(rois + 5 * k, pyr.scales[level], pooled_h, pooled_w, sampling_ratio,
                        aligned, pyr.batch_size, g)) {
        continue;
      }
      tables.level[k] = level;
      tables.batch[k] = g.batch;
      // The 1/count of the bin mean rides on the y weights.
      tables.ys[k].build(pooled_h, g.grid_h, pyr.heights[level], g.inv_count,
                         [&](int p, int i) { return g.sample_y(p, i); });
      tables.xs[k].build(pooled_w, g.grid_w, pyr.widths[level], T(1),
                         [&](int p, int i) { return g.sample_x(p, i); });
    }
  });
  tables.order.resize(num_rois);
  for (int64_t k = 0; k < num_rois; ++k) tables.order[k] = k;
  const auto plane_key = [&](int64_t k) {
    return static_cast<int64_t>(tables.level[k]) * pyr.batch_size + tables.batch[k];
  };
  std::stable_sort(tables.order.begin(), tables.order.end(),
                   [&](int64_t a, int64_t b) { return plane_key(a) < plane_key(b); });
  return tables;
}

// Work is split over channels: a thread's channels own disjoint slices of the feature and gradient
// maps (the backward needs no atomics) and each plane is read from memory once per call.
template <typename T, typename PerRoi>
void for_each_channel_roi(const Pyramid<T>& pyr, const RoiTables<T>& tables, PerRoi per_roi) {
  const int64_t channels = pyr.channels;
  at::parallel_for(0, channels, 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (const int64_t k : tables.order) {
        const int level = tables.level[k];
        if (level < 0) {
          per_roi(k, c, nullptr, 0);
          continue;
        }
        const int64_t width = pyr.widths[level];
        const int64_t plane_size = pyr.heights[level] * width;
        per_roi(k, c, pyr.data[level] + (tables.batch[k] * channels + c) * plane_size, width);
      }
    }
  });
}

template <typename T>
void forward_kernel(const Pyramid<T>& pyr, const RoiTables<T>& tables, int pooled_h, int pooled_w,
                    T* output) {
  const int64_t bins = static_cast<int64_t>(pooled_h) * pooled_w;
  for_each_channel_roi(pyr, tables, [&](int64_t k, int64_t c, const T* plane, int64_t width) {
    T* out = output + (k * pyr.channels + c) * bins;
    if (plane == nullptr) {
      std::fill(out, out + bins, T(0));
      return;
    }
    const AxisWeights<T>& ys = tables.ys[k];
    const AxisWeights<T>& xs = tables.xs[k];
    for (int py = 0; py < pooled_h; ++py) {
      const T* wy = ys.weights(py);
      const int rows = ys.count(py);
      const T* row0 = plane + ys.first(py) * width;
      for (int px = 0; px < pooled_w; ++px) {
        const T* wx = xs.weights(px);
        const int cols = xs.count(px);
        const T* corner = row0 + xs.first(px);
        T acc = T(0);
        for (int r = 0; r < rows; ++r) {
          acc += wy[r] * dot(wx, corner + r * width, cols);
        }
        *out++ = acc;
      }
    }
  });
}

template <typename T>
void backward_kernel(const Pyramid<T>& pyr, const RoiTables<T>& tables, int pooled_h, int pooled_w,
                     const T* grad_output) {
  const int64_t bins = static_cast<int64_t>(pooled_h) * pooled_w;
  for_each_channel_roi(pyr, tables, [&](int64_t k, int64_t c, const T* plane, int64_t width) {
    if (plane == nullptr) return;
    // The pyramid holds the gradient maps here; they are written through this pointer.
    T* grad_plane = const_cast<T*>(plane);
    const T* grad = grad_output + (k * pyr.channels + c) * bins;
    const AxisWeights<T>& ys = tables.ys[k];
    const AxisWeights<T>& xs = tables.xs[k];
    for (int py = 0; py < pooled_h; ++py) {
      const T* wy = ys.weights(py);
      const int rows = ys.count(py);
      T* row0 = grad_plane + ys.first(py) * width;
      for (int px = 0; px < pooled_w; ++px) {
        const T g = *grad++;
        const T* wx = xs.weights(px);
        const int cols = xs.count(px);
        T* corner = row0 + xs.first(px);
        for (int r = 0; r < rows; ++r) {
          axpy(g * wy[r], wx, corner + r * width, cols);
        }
      }
    }
  });
}

template <typename T>
Pyramid<T> make_pyramid(const std::vector<T*>& data, c10::ArrayRef<double> scales,
                        at::IntArrayRef heights, at::IntArrayRef widths, int64_t batch_size,
                        int64_t channels) {
  Pyramid<T> pyr;
  pyr.data = data;
  pyr.heights.assign(heights.begin(), heights.end());
  pyr.widths.assign(widths.begin(), widths.end());
  pyr.scales.assign(scales.begin(), scales.end());
  pyr.batch_size = static_cast<int>(batch_size);
  pyr.channels = static_cast<int>(channels);
  return pyr;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cpu(), "roi_align: ", name, " must be a CPU tensor, got ", t.device());
}

}  // namespace

at::Tensor roi_align_cpu(at::TensorList features, const at::Tensor& rois,
                         const std::optional<at::Tensor>& levels, c10::ArrayRef<double> scales,
                         int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                         bool aligned) {
  check_roi_align_forward(features, rois, levels, scales, pooled_height, pooled_width);
  for (const at::Tensor& f : features) check_cpu(f, "features");
  check_cpu(rois, "rois");
  const at::Tensor& first = features.front();
  const int64_t num_rois = rois.size(0);
  at::Tensor output =
      at::empty({num_rois, first.size(1), pooled_height, pooled_width}, first.options());
  if (output.numel() == 0) return output;
  std::vector<int64_t> heights;
  std::vector<int64_t> widths;
  for (const at::Tensor& f : features) {
    heights.push_back(f.size(2));
    widths.push_back(f.size(3));
  }
  const int64_t* level_ptr = levels.has_value() ? levels->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(first.scalar_type(), "roi_align_forward_cpu", [&] {
    std::vector<scalar_t*> data;
    for (const at::Tensor& f : features)
      data.push_back(const_cast<scalar_t*>(f.data_ptr<scalar_t>()));
    const Pyramid<scalar_t> pyr =
        make_pyramid(data, scales, heights, widths, first.size(0), first.size(1));
    const int ph = static_cast<int>(pooled_height);
    const int pw = static_cast<int>(pooled_width);
    const RoiTables<scalar_t> tables = build_tables(pyr, rois.data_ptr<scalar_t>(), level_ptr,
                                                    num_rois, ph, pw, sampling_ratio, aligned);
    forward_kernel(pyr, tables, ph, pw, output.data_ptr<scalar_t>());
  });
  return output;
}

std::vector<at::Tensor> roi_align_backward_cpu(const at::Tensor& grad_output,
                                               const at::Tensor& rois,
                                               const std::optional<at::Tensor>& levels,
                                               c10::ArrayRef<double> scales, int64_t batch_size,
                                               at::IntArrayRef heights, at::IntArrayRef widths,
                                               int64_t sampling_ratio, bool aligned) {
  check_roi_align_backward(grad_output, rois, levels, scales, batch_size, heights, widths);
  check_cpu(grad_output, "grad_output");
  check_cpu(rois, "rois");
  const int64_t channels = grad_output.size(1);
  std::vector<at::Tensor> grads;
  for (size_t l = 0; l < heights.size(); ++l) {
    grads.push_back(
        at::zeros({batch_size, channels, heights[l], widths[l]}, grad_output.options()));
  }
  if (grad_output.numel() == 0) return grads;
  const int64_t* level_ptr = levels.has_value() ? levels->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "roi_align_backward_cpu", [&] {
    std::vector<scalar_t*> data;
    for (at::Tensor& g : grads) data.push_back(g.data_ptr<scalar_t>());
    const Pyramid<scalar_t> pyr = make_pyramid(data, scales, heights, widths, batch_size, channels);
    const int ph = static_cast<int>(grad_output.size(2));
    const int pw = static_cast<int>(grad_output.size(3));
    const RoiTables<scalar_t> tables = build_tables(pyr, rois.data_ptr<scalar_t>(), level_ptr,
                                                    rois.size(0), ph, pw, sampling_ratio, aligned);
    backward_kernel(pyr, tables, ph, pw, grad_output.data_ptr<scalar_t>());
  });
  return grads;
}

TORCH_LIBRARY_IMPL(harness, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace harness::detail
