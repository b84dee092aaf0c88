// CUDA NMS: a bitmask kernel (each thread block compares 64 row boxes with 64 column boxes at a
// time) and a reduction that walks the mask in score order, one thread block per group, all on
// the current stream. Batched NMS sorts the boxes by group, so a row block only compares with the
// column words of its own groups and each group reduces only its own words
// (csrc/common/nms_bitmask.h): the work is per group, not quadratic in the whole batch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/box_iou.h"
#include "common/nms_bitmask.h"
#include "nms/nms.h"

namespace harness {
namespace {

constexpr int kReduceThreads = 256;
// Thread blocks per row block for batched NMS; each loops over its row block's column words.
// Groups (levels x images, classes) rarely span more words than this (2000 boxes are 32).
constexpr int64_t kColumnBlocksBatched = 32;
constexpr int64_t kMaxGridY = 65535;

// Writes word c of every row of row block blockIdx.y for the words c of column_words(...), c taken
// blockIdx.x, blockIdx.x + gridDim.x, ...; words outside that span stay unwritten and unread.
// `groups` ([n] ascending) may be null: one group.
template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ groups,
                                int64_t n, int64_t words, T threshold, T offset,
                                uint64_t* __restrict__ mask) {
  const int64_t block = blockIdx.y;
  const Span cols = column_words(groups, n, block);
  const int64_t row_start = block * kBoxesPerWord;
  const int rows = static_cast<int>(min(n - row_start, static_cast<int64_t>(kBoxesPerWord)));
  const int t = threadIdx.x;
  const int64_t i = row_start + t;
  T row_box[4] = {0, 0, 0, 0};
  T row_area = 0;
  int64_t row_group = 0;
  if (t < rows) {
    for (int v = 0; v < 4; ++v) row_box[v] = boxes[4 * i + v];
    row_area = box_area(row_box[0], row_box[1], row_box[2], row_box[3], offset);
    row_group = groups != nullptr ? groups[i] : 0;
  }
  __shared__ T col_box[kBoxesPerWord][5];
  __shared__ int64_t col_group[kBoxesPerWord];
  for (int64_t c = cols.begin + blockIdx.x; c < cols.end; c += gridDim.x) {
    const int64_t col_start = c * kBoxesPerWord;
    const int count = static_cast<int>(min(n - col_start, static_cast<int64_t>(kBoxesPerWord)));
    __syncthreads();  // the previous word's columns are no longer read
    if (t < count) {
      const T* b = boxes + 4 * (col_start + t);
      col_box[t][0] = b[0];
      col_box[t][1] = b[1];
      col_box[t][2] = b[2];
      col_box[t][3] = b[3];
      col_box[t][4] = box_area(b[0], b[1], b[2], b[3], offset);
      col_group[t] = groups != nullptr ? groups[col_start + t] : 0;
    }
    __syncthreads();
    if (t < rows) {
      mask[i * words + c] = overlap_bits(row_box, row_area, row_group, i, c, col_box, col_group,
                                         count, threshold, offset);
    }
  }
}

// Greedy pass over the mask in sorted order, one thread block per row block b: it walks every
// group whose first row lies in b (with `groups` null, block 0 walks the one group) and sets
// keep[i] for each row no kept row of its group suppressed. `removed` ([words], zeroed) collects
// the suppressed bits; groups are disjoint in bits, so blocks sharing a boundary word OR into it
// atomically. After the barrier at the start of a word every earlier kept row of the group has
// been ORed into it.
__global__ void nms_reduce_kernel(const uint64_t* __restrict__ mask, const int64_t* groups,
                                  int64_t n, int64_t words, unsigned long long* removed,
                                  bool* __restrict__ keep) {
  const int64_t first_row = blockIdx.x * kBoxesPerWord;
  const int64_t last_row = min(n, first_row + kBoxesPerWord);
  for (int64_t start = first_row; start < last_row; ++start) {
    if (!starts_group(groups, start)) {
      continue;
    }
    const Span rows = group_rows(groups, n, start);
    const int64_t last_word = (rows.end - 1) / kBoxesPerWord;
    for (int64_t w = rows.begin / kBoxesPerWord; w <= last_word; ++w) {
      __syncthreads();
      uint64_t current = *reinterpret_cast<volatile unsigned long long*>(removed + w);
      const int64_t begin = max(rows.begin, w * kBoxesPerWord);
      const int64_t end = min(rows.end, (w + 1) * kBoxesPerWord);
      for (int64_t i = begin; i < end; ++i) {
        if ((current >> (i - w * kBoxesPerWord)) & 1ULL) {
          continue;
        }
        const uint64_t* row = mask + i * words;
        if (threadIdx.x == 0) {
          keep[i] = true;
        }
        current |= row[w];
        for (int64_t v = w + 1 + threadIdx.x; v <= last_word; v += blockDim.x) {
          atomicOr(removed + v, static_cast<unsigned long long>(row[v]));
        }
      }
    }
    __syncthreads();
  }
}

// Sorted order of the boxes and keep[] (bool, in that order), all on the device.
struct SortedKeep {
  at::Tensor order;   // [N] box indices by decreasing score (torchvision's unstable sort)
  at::Tensor sorted;  // [N] box indices by (group, score): order stably sorted by group
  at::Tensor keep;    // [N] bool: sorted[p] survives
};

SortedKeep sorted_keep(const at::Tensor& boxes, const at::Tensor& scores,
                       const std::optional<at::Tensor>& idxs, double iou_threshold, bool legacy) {
  check_nms_inputs(boxes, scores, idxs, at::kCUDA);
  const int64_t n = boxes.size(0);
  const int64_t words = words_for(n);
  TORCH_CHECK(words <= kMaxGridY, "nms: boxes has ", n, " rows; the CUDA kernel handles at most ",
              kMaxGridY * kBoxesPerWord);
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
  const int64_t* group_ptr = idxs.has_value() ? sorted_groups.data_ptr<int64_t>() : nullptr;

  const at::Tensor mask = at::empty({n * words}, boxes.options().dtype(at::kLong));
  const at::Tensor removed = at::zeros({words}, boxes.options().dtype(at::kLong));
  const at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t column_blocks = idxs.has_value() ? std::min(words, kColumnBlocksBatched) : words;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cuda", [&] {
    nms_mask_kernel<scalar_t><<<dim3(column_blocks, words), kBoxesPerWord, 0, stream>>>(
        sorted_boxes.data_ptr<scalar_t>(), group_ptr, n, words,
        threshold_as<scalar_t>(iou_threshold, legacy), legacy ? scalar_t(1) : scalar_t(0),
        reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  nms_reduce_kernel<<<idxs.has_value() ? words : 1, kReduceThreads, 0, stream>>>(
      reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()), group_ptr, n, words,
      reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()), keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {order, sorted, keep};
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                    const std::optional<at::Tensor>& idxs, double iou_threshold, bool legacy) {
  const c10::cuda::CUDAGuard guard(boxes.device());
  if (boxes.size(0) == 0) {
    check_nms_inputs(boxes, scores, idxs, at::kCUDA);
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const auto [order, sorted, keep] = sorted_keep(boxes, scores, idxs, iou_threshold, legacy);
  // The kept count sizes the result: this op syncs (nms_mask does not).
  const at::Tensor kept = sorted.masked_select(keep);
  if (!idxs.has_value()) {
    return kept;
  }
  const int64_t n = boxes.size(0);
  const at::Tensor kept_by_index = at::zeros({n}, keep.options()).index_fill_(0, kept, true);
  if (boxes.numel() > kTorchvisionResortAboveCuda) {
    const at::Tensor survivors = kept_by_index.nonzero().squeeze(1);
    const at::Tensor by_score =
        std::get<1>(scores.index_select(0, survivors).sort(/*dim=*/0, /*descending=*/true));
    return survivors.index_select(0, by_score);
  }
  return order.masked_select(kept_by_index.index_select(0, order));
}

at::Tensor nms_mask_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                         const std::optional<at::Tensor>& idxs, double iou_threshold, bool legacy) {
  const c10::cuda::CUDAGuard guard(boxes.device());
  if (boxes.size(0) == 0) {
    check_nms_inputs(boxes, scores, idxs, at::kCUDA);
    return at::zeros({0}, boxes.options().dtype(at::kBool));
  }
  const auto [order, sorted, keep] = sorted_keep(boxes, scores, idxs, iou_threshold, legacy);
  // Back to input order on the device: sorted is a permutation, so every entry is written.
  return at::empty_like(keep).scatter_(0, sorted, keep);
}

}  // namespace

TORCH_LIBRARY_IMPL(harness, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("nms_mask", &nms_mask_cuda);
}

}  // namespace harness
