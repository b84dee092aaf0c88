// CUDA NMS: a bitmask kernel (each thread block compares 64 row boxes with 64 column boxes) and a
// one-block reduction that walks the mask in score order, all on the current stream.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/box_iou.h"
#include "nms/nms.h"

namespace harness {
namespace {

constexpr int kBoxesPerBlock = 64;  // one bit per box in a uint64 mask word
constexpr int kReduceThreads = 256;

// Bit k of mask[i * words + c] is set when sorted box i overlaps sorted box c * 64 + k by more
// than `threshold`, the latter comes later in the order and both are in the same group (`groups`
// may be null: one group). Words left of the diagonal are never read and stay unwritten.
template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ groups,
                                int64_t n, T threshold, uint64_t* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (col_block < row_block) {
    return;
  }
  const int64_t words = gridDim.x;
  const int64_t row_start = row_block * kBoxesPerBlock;
  const int64_t col_start = col_block * kBoxesPerBlock;
  const int rows = static_cast<int>(min(n - row_start, static_cast<int64_t>(kBoxesPerBlock)));
  const int cols = static_cast<int>(min(n - col_start, static_cast<int64_t>(kBoxesPerBlock)));

  __shared__ T col_box[kBoxesPerBlock][5];
  __shared__ int64_t col_group[kBoxesPerBlock];
  const int t = threadIdx.x;
  if (t < cols) {
    const T* b = boxes + 4 * (col_start + t);
    col_box[t][0] = b[0];
    col_box[t][1] = b[1];
    col_box[t][2] = b[2];
    col_box[t][3] = b[3];
    col_box[t][4] = box_area(b[0], b[1], b[2], b[3]);
    col_group[t] = groups != nullptr ? groups[col_start + t] : 0;
  }
  __syncthreads();
  if (t >= rows) {
    return;
  }
  const int64_t i = row_start + t;
  const T* a = boxes + 4 * i;
  const T a_area = box_area(a[0], a[1], a[2], a[3]);
  const int64_t a_group = groups != nullptr ? groups[i] : 0;
  uint64_t bits = 0;
  for (int k = row_block == col_block ? t + 1 : 0; k < cols; ++k) {
    if (col_group[k] == a_group &&
        box_iou(a[0], a[1], a[2], a[3], a_area, col_box[k][0], col_box[k][1], col_box[k][2],
                col_box[k][3], col_box[k][4]) > threshold) {
      bits |= 1ULL << k;
    }
  }
  mask[i * words + col_block] = bits;
}

// Greedy pass over the mask in sorted order: keep[i] = 1 for each box no kept box suppressed.
// `removed` ([words], zeroed) accumulates the suppressed bits; after the barrier at the start of a
// word every earlier kept row has been ORed into it.
__global__ void nms_reduce_kernel(const uint64_t* __restrict__ mask, int64_t n, int64_t words,
                                  uint64_t* __restrict__ removed, bool* __restrict__ keep) {
  for (int64_t w = 0; w < words; ++w) {
    __syncthreads();
    uint64_t current = removed[w];
    const int count = static_cast<int>(min(n - w * kBoxesPerBlock, int64_t{kBoxesPerBlock}));
    for (int k = 0; k < count; ++k) {
      if ((current >> k) & 1ULL) {
        continue;
      }
      const int64_t i = w * kBoxesPerBlock + k;
      const uint64_t* row = mask + i * words;
      if (threadIdx.x == 0) {
        keep[i] = true;
      }
      current |= row[w];
      for (int64_t v = w + 1 + threadIdx.x; v < words; v += blockDim.x) {
        removed[v] |= row[v];
      }
    }
  }
}

}  // namespace

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const std::optional<at::Tensor>& idxs, double iou_threshold) {
  check_nms_inputs(boxes, scores, idxs, at::kCUDA);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const int64_t words = (n + kBoxesPerBlock - 1) / kBoxesPerBlock;
  TORCH_CHECK(words <= 65535, "nms: boxes has ", n, " rows; the CUDA kernel handles at most ",
              65535 * kBoxesPerBlock);

  // The unstable sort torchvision's CUDA nms uses, so tied scores come in its order; groups are
  // then made contiguous by a stable sort, keeping that order inside each group.
  const at::Tensor order = std::get<1>(scores.sort(/*dim=*/0, /*descending=*/true));
  at::Tensor sorted = order;
  at::Tensor sorted_groups;
  if (idxs.has_value()) {
    auto [groups, by_group] = idxs->index_select(0, order).sort(/*stable=*/true, /*dim=*/0,
                                                                /*descending=*/false);
    sorted = order.index_select(0, by_group);
    sorted_groups = groups.contiguous();
  }
  const at::Tensor sorted_boxes = boxes.index_select(0, sorted).contiguous();

  const at::Tensor mask = at::empty({n * words}, boxes.options().dtype(at::kLong));
  const at::Tensor removed = at::zeros({words}, boxes.options().dtype(at::kLong));
  const at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_cuda", [&] {
    nms_mask_kernel<scalar_t><<<dim3(words, words), kBoxesPerBlock, 0, stream>>>(
        sorted_boxes.data_ptr<scalar_t>(),
        idxs.has_value() ? sorted_groups.data_ptr<int64_t>() : nullptr, n,
        threshold_as<scalar_t>(iou_threshold),
        reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  nms_reduce_kernel<<<1, kReduceThreads, 0, stream>>>(
      reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()), n, words,
      reinterpret_cast<uint64_t*>(removed.data_ptr<int64_t>()), keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor kept = sorted.masked_select(keep);
  if (!idxs.has_value()) {
    return kept;
  }
  const at::Tensor kept_by_index = at::zeros({n}, keep.options()).index_fill_(0, kept, true);
  if (boxes.numel() > kTorchvisionResortAboveCuda) {
    const at::Tensor survivors = kept_by_index.nonzero().squeeze(1);
    const at::Tensor by_score =
        std::get<1>(scores.index_select(0, survivors).sort(/*dim=*/0, /*descending=*/true));
    return survivors.index_select(0, by_score);
  }
  return order.masked_select(kept_by_index.index_select(0, order));
}

}  // namespace harness
