// CPU greedy NMS: boxes are gathered per group into score-sorted structure-of-arrays, and each kept
// box suppresses the rest of its group in one branch-free loop the compiler vectorizes (on x86-64
// with an AVX2 clone picked at load time). Groups run in parallel.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/box_iou.h"
#include "common/nms_bitmask.h"
#include "nms/nms.h"

// target_clones("avx2") exists on x86 only: GCC rejects it for aarch64 (GH200) and other targets.
#if defined(__x86_64__) || defined(__i386__)
#define HARNESS_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define HARNESS_AVX2_CLONES
#endif

namespace harness {
namespace {

// Positions 0..n-1 bucketed by group: members[starts[g] .. starts[g + 1]) are group g's positions
// in ascending order; groups appear in ascending id.
struct Groups {
  std::vector<int64_t> members;
  std::vector<int64_t> starts;
};

Groups group_positions(const int64_t* group_of, int64_t n) {
  Groups groups;
  groups.members.resize(n);
  const auto [lo_it, hi_it] = std::minmax_element(group_of, group_of + n);
  const int64_t lo = *lo_it;
  const uint64_t range = static_cast<uint64_t>(*hi_it) - static_cast<uint64_t>(lo) + 1;
  if (range <= static_cast<uint64_t>(2 * n + 64)) {
    // Dense ids (levels x images, classes): a counting sort is linear.
    std::vector<int64_t> offset(range + 1, 0);
    for (int64_t p = 0; p < n; ++p) {
      ++offset[group_of[p] - lo + 1];
    }
    for (uint64_t g = 0; g < range; ++g) {
      if (offset[g + 1] > 0) {
        groups.starts.push_back(offset[g]);
      }
      offset[g + 1] += offset[g];
    }
    groups.starts.push_back(n);
    for (int64_t p = 0; p < n; ++p) {
      groups.members[offset[group_of[p] - lo]++] = p;
    }
    return groups;
  }
  std::vector<std::pair<int64_t, int64_t>> keyed(n);
  for (int64_t p = 0; p < n; ++p) {
    keyed[p] = {group_of[p], p};
  }
  std::sort(keyed.begin(), keyed.end());
  for (int64_t p = 0; p < n; ++p) {
    if (p == 0 || keyed[p].first != keyed[p - 1].first) {
      groups.starts.push_back(p);
    }
    groups.members[p] = keyed[p].second;
  }
  groups.starts.push_back(n);
  return groups;
}

// Marks every box in [0, count) whose IoU with box i exceeds `threshold`.
template <typename T>
HARNESS_AVX2_CLONES void suppress_overlaps(T ix1, T iy1, T ix2, T iy2, T iarea,
                                           const T* __restrict x1, const T* __restrict y1,
                                           const T* __restrict x2, const T* __restrict y2,
                                           const T* __restrict area, int64_t count, T threshold,
                                           T offset, uint8_t* __restrict removed) {
  for (int64_t j = 0; j < count; ++j) {
    const T iou = box_iou(ix1, iy1, ix2, iy2, iarea, x1[j], y1[j], x2[j], y2[j], area[j], offset);
    removed[j] |= static_cast<uint8_t>(iou > threshold);
  }
}

// Greedy NMS over the boxes `sorted[0 .. n)` (indices into `boxes`, best score first); sets
// kept[index] for the survivors.
template <typename T>
void greedy_nms(const T* boxes, const int64_t* sorted, int64_t n, T threshold, T offset,
                uint8_t* kept) {
  std::vector<T> soa(5 * n);
  T* x1 = soa.data();
  T* y1 = x1 + n;
  T* x2 = y1 + n;
  T* y2 = x2 + n;
  T* area = y2 + n;
  for (int64_t k = 0; k < n; ++k) {
    const T* b = boxes + 4 * sorted[k];
    x1[k] = b[0];
    y1[k] = b[1];
    x2[k] = b[2];
    y2[k] = b[3];
    area[k] = box_area(b[0], b[1], b[2], b[3], offset);
  }
  std::vector<uint8_t> removed(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    if (removed[i]) {
      continue;
    }
    kept[sorted[i]] = 1;
    const int64_t next = i + 1;
    suppress_overlaps(x1[i], y1[i], x2[i], y2[i], area[i], x1 + next, y1 + next, x2 + next,
                      y2 + next, area + next, n - next, threshold, offset, removed.data() + next);
  }
}

// Box indices by decreasing score, tied scores by increasing index: the stable sort torchvision's
// nms uses, so both keep the same box of a tied pair.
at::Tensor stable_order(const at::Tensor& scores) {
  return std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
}

// kept[i] = 1 for each box greedy NMS keeps within its group; `order` is stable_order(scores).
template <typename T>
std::vector<uint8_t> kept_boxes(const at::Tensor& boxes, const at::Tensor& order,
                                const std::optional<at::Tensor>& idxs, double iou_threshold,
                                bool legacy) {
  const int64_t n = boxes.size(0);
  const T threshold = threshold_as<T>(iou_threshold, legacy);
  const T offset = legacy ? T(1) : T(0);
  const T* box_data = boxes.data_ptr<T>();
  const int64_t* order_data = order.data_ptr<int64_t>();
  std::vector<uint8_t> kept(n, 0);
  if (!idxs.has_value()) {
    greedy_nms(box_data, order_data, n, threshold, offset, kept.data());
    return kept;
  }
  // Each group takes its members in the global order, which is also the stable order within it.
  const int64_t* group_data = idxs->data_ptr<int64_t>();
  std::vector<int64_t> group_of(n);
  for (int64_t p = 0; p < n; ++p) {
    group_of[p] = group_data[order_data[p]];
  }
  const Groups groups = group_positions(group_of.data(), n);
  std::vector<int64_t> sorted(n);
  for (int64_t p = 0; p < n; ++p) {
    sorted[p] = order_data[groups.members[p]];
  }
  const int64_t num_groups = static_cast<int64_t>(groups.starts.size()) - 1;
  at::parallel_for(0, num_groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t start = groups.starts[g];
      greedy_nms(box_data, sorted.data() + start, groups.starts[g + 1] - start, threshold, offset,
                 kept.data());
    }
  });
  return kept;
}

// Contiguous inputs, or nullopt for an empty one (nothing to compute).
struct NmsInputs {
  at::Tensor boxes;
  at::Tensor scores;
  std::optional<at::Tensor> idxs;
};

NmsInputs contiguous_inputs(const at::Tensor& boxes, const at::Tensor& scores,
                            const std::optional<at::Tensor>& idxs) {
  check_nms_inputs(boxes, scores, idxs, at::kCPU);
  return {boxes.contiguous(), scores.contiguous(),
          idxs.has_value() ? std::optional<at::Tensor>(idxs->contiguous()) : std::nullopt};
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                   const std::optional<at::Tensor>& idxs, double iou_threshold, bool legacy) {
  const NmsInputs in = contiguous_inputs(boxes, scores, idxs);
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order = stable_order(in.scores);
  std::vector<uint8_t> kept;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    kept = kept_boxes<scalar_t>(in.boxes, order, in.idxs, iou_threshold, legacy);
  });
  if (idxs.has_value() && boxes.numel() > kTorchvisionResortAboveCpu) {
    // torchvision orders these survivors with an unstable sort of their scores taken in index
    // order; the same call reproduces its order of ties.
    std::vector<int64_t> survivors;
    for (int64_t i = 0; i < n; ++i) {
      if (kept[i]) {
        survivors.push_back(i);
      }
    }
    const at::Tensor survivor_t = at::tensor(survivors, at::kLong);
    const at::Tensor by_score =
        std::get<1>(in.scores.index_select(0, survivor_t).sort(/*dim=*/0, /*descending=*/true));
    return survivor_t.index_select(0, by_score);
  }
  const int64_t* order_data = order.data_ptr<int64_t>();
  std::vector<int64_t> result;
  for (int64_t p = 0; p < n; ++p) {
    if (kept[order_data[p]]) {
      result.push_back(order_data[p]);
    }
  }
  return at::tensor(result, at::kLong);
}

at::Tensor nms_mask_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                        const std::optional<at::Tensor>& idxs, double iou_threshold, bool legacy) {
  const NmsInputs in = contiguous_inputs(boxes, scores, idxs);
  at::Tensor mask = at::zeros({boxes.size(0)}, boxes.options().dtype(at::kBool));
  if (boxes.size(0) == 0) {
    return mask;
  }
  const at::Tensor order = stable_order(in.scores);
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_mask_cpu", [&] {
    const std::vector<uint8_t> kept =
        kept_boxes<scalar_t>(in.boxes, order, in.idxs, iou_threshold, legacy);
    std::copy(kept.begin(), kept.end(), mask.data_ptr<bool>());
  });
  return mask;
}

}  // namespace

at::Tensor nms_column_words(const at::Tensor& sorted_groups) {
  TORCH_CHECK(sorted_groups.dim() == 1 && sorted_groups.scalar_type() == at::kLong &&
                  sorted_groups.is_cpu(),
              "nms_column_words: sorted_groups must be a 1-D int64 CPU tensor, got ",
              sorted_groups.sizes(), " ", sorted_groups.scalar_type());
  const at::Tensor groups = sorted_groups.contiguous();
  const int64_t n = groups.size(0);
  TORCH_CHECK(n == 0 || (groups.diff() >= 0).all().item<bool>(),
              "nms_column_words: sorted_groups must be non-decreasing");
  const int64_t words = words_for(n);
  at::Tensor out = at::empty({words, 2}, groups.options());
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t b = 0; b < words; ++b) {
    const Span span = column_words(groups.data_ptr<int64_t>(), n, b);
    dst[2 * b] = span.begin;
    dst[2 * b + 1] = span.end;
  }
  return out;
}

at::Tensor nms_bitmask_emulation(const at::Tensor& sorted_boxes,
                                 const std::optional<at::Tensor>& sorted_groups,
                                 double iou_threshold, bool legacy) {
  TORCH_CHECK(sorted_boxes.dim() == 2 && sorted_boxes.size(1) == 4 &&
                  sorted_boxes.scalar_type() == at::kFloat && sorted_boxes.is_cpu(),
              "nms_bitmask_emulation: sorted_boxes must be a [N, 4] float32 CPU tensor");
  const int64_t n = sorted_boxes.size(0);
  const at::Tensor boxes = sorted_boxes.contiguous();
  const at::Tensor groups_t = sorted_groups.has_value()
                                  ? sorted_groups->contiguous()
                                  : at::zeros({n}, boxes.options().dtype(at::kLong));
  TORCH_CHECK(groups_t.dim() == 1 && groups_t.size(0) == n && groups_t.scalar_type() == at::kLong,
              "nms_bitmask_emulation: sorted_groups must be [N] int64");
  const int64_t* groups = sorted_groups.has_value() ? groups_t.data_ptr<int64_t>() : nullptr;
  const int64_t* group_ids = groups_t.data_ptr<int64_t>();
  const float* b = boxes.data_ptr<float>();
  const float threshold = threshold_as<float>(iou_threshold, legacy);
  const float offset = legacy ? 1.0f : 0.0f;
  const int64_t words = words_for(n);
  // Words outside each row block's span are never written; the reduction must never read them.
  std::vector<uint64_t> mask(n * words, 0);
  std::vector<uint8_t> written(n * words, 0);
  for (int64_t block = 0; block < words; ++block) {
    const Span cols = column_words(groups, n, block);
    for (int64_t c = cols.begin; c < cols.end; ++c) {
      float col[kBoxesPerWord][5];
      int64_t col_group[kBoxesPerWord];
      const int count = static_cast<int>(std::min<int64_t>(n - c * kBoxesPerWord, kBoxesPerWord));
      for (int k = 0; k < count; ++k) {
        const float* box = b + 4 * (c * kBoxesPerWord + k);
        for (int v = 0; v < 4; ++v) col[k][v] = box[v];
        col[k][4] = box_area(box[0], box[1], box[2], box[3], offset);
        col_group[k] = group_ids[c * kBoxesPerWord + k];
      }
      const int64_t row_end = std::min<int64_t>(n, (block + 1) * kBoxesPerWord);
      for (int64_t i = block * kBoxesPerWord; i < row_end; ++i) {
        const float* row = b + 4 * i;
        written[i * words + c] = 1;
        mask[i * words + c] =
            overlap_bits(row, box_area(row[0], row[1], row[2], row[3], offset), group_ids[i], i, c,
                         col, col_group, count, threshold, offset);
      }
    }
  }
  // The reduction, one group after another (the CUDA kernel runs groups in parallel).
  std::vector<uint64_t> removed(words, 0);
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  bool* keep_data = keep.data_ptr<bool>();
  for (int64_t start = 0; start < n; ++start) {
    if (!starts_group(groups, start)) continue;
    const Span rows = group_rows(groups, n, start);
    const int64_t last_word = (rows.end - 1) / kBoxesPerWord;
    for (int64_t i = rows.begin; i < rows.end; ++i) {
      const int64_t w = i / kBoxesPerWord;
      if ((removed[w] >> (i % kBoxesPerWord)) & 1ULL) continue;
      keep_data[i] = true;
      for (int64_t v = w; v <= last_word; ++v) {
        TORCH_CHECK(written[i * words + v], "nms_bitmask_emulation: row ", i, " read word ", v,
                    " that no block wrote");
        removed[v] |= mask[i * words + v];
      }
    }
  }
  return keep;
}

TORCH_LIBRARY_IMPL(harness, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("nms_mask", &nms_mask_cpu);
}

}  // namespace harness
