// CUDA ROIAlign: one thread per pooled element for the forward and per gradient element for the
// backward, which scatters into the feature maps' gradients with atomicAdd. All FPN levels are
// served by one launch: each thread reads its ROI's level and picks that level's map.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/bilinear.h"
#include "roi_align/roi_align.h"
#include "roi_align/roi_align_geometry.h"

namespace harness::detail {
namespace {

// An FPN has 4-5 levels; a fixed bound lets the level table travel by value as a kernel argument.
constexpr int kMaxLevels = 8;
constexpr int kThreads = 256;

template <typename Ptr, typename T>
struct Pyramid {
  Ptr data[kMaxLevels];  // [B, C, H_l, W_l] per level
  int height[kMaxLevels];
  int width[kMaxLevels];
  T scale[kMaxLevels];
  int count;
  int batch_size;
  int channels;
};

// Level, image and geometry of ROI k; false when it pools to zeros (see roi_align.h).
template <typename Ptr, typename T>
__device__ __forceinline__ bool locate_roi(const Pyramid<Ptr, T>& lv, const T* rois,
                                           const int64_t* levels, int64_t k, int pooled_h,
                                           int pooled_w, int sampling_ratio, bool aligned,
                                           int& level, RoiGeometry<T>& g) {
  level = levels == nullptr ? 0 : static_cast<int>(levels[k]);
  if (level < 0 || level >= lv.count) return false;
  return roi_geometry(rois + 5 * k, lv.scale[level], pooled_h, pooled_w, sampling_ratio, aligned,
                      lv.batch_size, g);
}

template <typename T>
__global__ void roi_align_forward_kernel(Pyramid<const T*, T> lv, const T* rois,
                                         const int64_t* levels, int64_t total, int pooled_h,
                                         int pooled_w, int sampling_ratio, bool aligned,
                                         T* output) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int px = static_cast<int>(idx % pooled_w);
    const int py = static_cast<int>((idx / pooled_w) % pooled_h);
    const int64_t c = (idx / pooled_w / pooled_h) % lv.channels;
    const int64_t k = idx / pooled_w / pooled_h / lv.channels;
    int level = 0;
    RoiGeometry<T> g;
    if (!locate_roi(lv, rois, levels, k, pooled_h, pooled_w, sampling_ratio, aligned, level, g)) {
      output[idx] = T(0);
      continue;
    }
    const int height = lv.height[level];
    const int width = lv.width[level];
    const T* plane =
        lv.data[level] + (static_cast<int64_t>(g.batch) * lv.channels + c) * height * width;
    T sum = T(0);
    for (int iy = 0; iy < g.grid_h; ++iy) {
      const T y = g.sample_y(py, iy);
      for (int ix = 0; ix < g.grid_w; ++ix) {
        sum += bilinear_interpolate(plane, height, width, y, g.sample_x(px, ix));
      }
    }
    output[idx] = sum * g.inv_count;
  }
}

template <typename T>
__global__ void roi_align_backward_kernel(Pyramid<T*, T> lv, const T* rois, const int64_t* levels,
                                          int64_t total, int pooled_h, int pooled_w,
                                          int sampling_ratio, bool aligned, const T* grad_output) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int px = static_cast<int>(idx % pooled_w);
    const int py = static_cast<int>((idx / pooled_w) % pooled_h);
    const int64_t c = (idx / pooled_w / pooled_h) % lv.channels;
    const int64_t k = idx / pooled_w / pooled_h / lv.channels;
    int level = 0;
    RoiGeometry<T> g;
    if (!locate_roi(lv, rois, levels, k, pooled_h, pooled_w, sampling_ratio, aligned, level, g)) {
      continue;
    }
    const int height = lv.height[level];
    const int width = lv.width[level];
    T* plane = lv.data[level] + (static_cast<int64_t>(g.batch) * lv.channels + c) * height * width;
    const T grad = grad_output[idx] * g.inv_count;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      const T y = g.sample_y(py, iy);
      for (int ix = 0; ix < g.grid_w; ++ix) {
        BilinearTaps<T> t;
        if (!bilinear_taps(y, g.sample_x(px, ix), height, width, t)) continue;
        T* row_low = plane + static_cast<int64_t>(t.y.low) * width;
        T* row_high = plane + static_cast<int64_t>(t.y.high) * width;
        atomicAdd(row_low + t.x.low, grad * t.y.w_low * t.x.w_low);
        atomicAdd(row_low + t.x.high, grad * t.y.w_low * t.x.w_high);
        atomicAdd(row_high + t.x.low, grad * t.y.w_high * t.x.w_low);
        atomicAdd(row_high + t.x.high, grad * t.y.w_high * t.x.w_high);
      }
    }
  }
}

template <typename Ptr, typename T>
Pyramid<Ptr, T> make_pyramid(const std::vector<Ptr>& data, c10::ArrayRef<double> scales,
                             at::IntArrayRef heights, at::IntArrayRef widths, int64_t batch_size,
                             int64_t channels) {
  TORCH_CHECK(data.size() <= static_cast<size_t>(kMaxLevels), "roi_align: at most ", kMaxLevels,
              " feature maps on CUDA, got ", data.size());
  Pyramid<Ptr, T> lv{};
  for (size_t l = 0; l < data.size(); ++l) {
    lv.data[l] = data[l];
    lv.height[l] = static_cast<int>(heights[l]);
    lv.width[l] = static_cast<int>(widths[l]);
    lv.scale[l] = static_cast<T>(scales[l]);
  }
  lv.count = static_cast<int>(data.size());
  lv.batch_size = static_cast<int>(batch_size);
  lv.channels = static_cast<int>(channels);
  return lv;
}

int64_t num_blocks(int64_t total) {
  // Grid-stride loops cover the rest; 65536 blocks keep every SM busy on any current GPU.
  return std::min<int64_t>((total + kThreads - 1) / kThreads, 65536);
}

void check_cuda(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.is_cuda() && t.device() == device, "roi_align: ", name, " must be on ", device,
              ", got ", t.device());
}

}  // namespace

at::Tensor roi_align_cuda(at::TensorList features, const at::Tensor& rois,
                          const std::optional<at::Tensor>& levels, c10::ArrayRef<double> scales,
                          int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                          bool aligned) {
  check_roi_align_forward(features, rois, levels, scales, pooled_height, pooled_width);
  const at::Tensor& first = features.front();
  for (const at::Tensor& f : features) check_cuda(f, "features", first.device());
  check_cuda(rois, "rois", first.device());
  if (levels.has_value()) check_cuda(*levels, "levels", first.device());
  const c10::cuda::CUDAGuard guard(first.device());
  at::Tensor output =
      at::empty({rois.size(0), first.size(1), pooled_height, pooled_width}, first.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  std::vector<int64_t> heights;
  std::vector<int64_t> widths;
  for (const at::Tensor& f : features) {
    heights.push_back(f.size(2));
    widths.push_back(f.size(3));
  }
  const int64_t* level_ptr = levels.has_value() ? levels->data_ptr<int64_t>() : nullptr;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(first.scalar_type(), "roi_align_forward_cuda", [&] {
    std::vector<const scalar_t*> data;
    for (const at::Tensor& f : features) data.push_back(f.data_ptr<scalar_t>());
    const auto lv = make_pyramid<const scalar_t*, scalar_t>(data, scales, heights, widths,
                                                            first.size(0), first.size(1));
    roi_align_forward_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        lv, rois.data_ptr<scalar_t>(), level_ptr, total, static_cast<int>(pooled_height),
        static_cast<int>(pooled_width), static_cast<int>(sampling_ratio), aligned,
        output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> roi_align_backward_cuda(const at::Tensor& grad_output,
                                                const at::Tensor& rois,
                                                const std::optional<at::Tensor>& levels,
                                                c10::ArrayRef<double> scales, int64_t batch_size,
                                                at::IntArrayRef heights, at::IntArrayRef widths,
                                                int64_t sampling_ratio, bool aligned) {
  check_roi_align_backward(grad_output, rois, levels, scales, batch_size, heights, widths);
  // atomicAdd makes the summation order (and the last bits) vary from run to run.
  at::globalContext().alertNotDeterministic("roi_align_backward_cuda");
  check_cuda(rois, "rois", grad_output.device());
  if (levels.has_value()) check_cuda(*levels, "levels", grad_output.device());
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t channels = grad_output.size(1);
  std::vector<at::Tensor> grads;
  for (size_t l = 0; l < heights.size(); ++l) {
    grads.push_back(
        at::zeros({batch_size, channels, heights[l], widths[l]}, grad_output.options()));
  }
  const int64_t total = grad_output.numel();
  if (total == 0) return grads;
  const int64_t* level_ptr = levels.has_value() ? levels->data_ptr<int64_t>() : nullptr;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "roi_align_backward_cuda", [&] {
    std::vector<scalar_t*> data;
    for (at::Tensor& g : grads) data.push_back(g.data_ptr<scalar_t>());
    const auto lv =
        make_pyramid<scalar_t*, scalar_t>(data, scales, heights, widths, batch_size, channels);
    roi_align_backward_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        lv, rois.data_ptr<scalar_t>(), level_ptr, total, static_cast<int>(grad_output.size(2)),
        static_cast<int>(grad_output.size(3)), static_cast<int>(sampling_ratio), aligned,
        grad_output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grads;
}

TORCH_LIBRARY_IMPL(harness, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace harness::detail
