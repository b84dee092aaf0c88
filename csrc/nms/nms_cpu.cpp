// CPU greedy NMS: boxes are gathered per group into score-sorted structure-of-arrays, and each kept
// box suppresses the rest of its group in one branch-free loop the compiler vectorizes (with an
// AVX2 clone picked at load time). Groups run in parallel.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/box_iou.h"
#include "nms/nms.h"

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
__attribute__((target_clones("avx2", "default"))) void suppress_overlaps(
    T ix1, T iy1, T ix2, T iy2, T iarea, const T* __restrict x1, const T* __restrict y1,
    const T* __restrict x2, const T* __restrict y2, const T* __restrict area, int64_t count,
    T threshold, uint8_t* __restrict removed) {
  for (int64_t j = 0; j < count; ++j) {
    const T iou = box_iou(ix1, iy1, ix2, iy2, iarea, x1[j], y1[j], x2[j], y2[j], area[j]);
    removed[j] |= static_cast<uint8_t>(iou > threshold);
  }
}

// Greedy NMS over the boxes `sorted[0 .. n)` (indices into `boxes`, best score first); sets
// kept[index] for the survivors.
template <typename T>
void greedy_nms(const T* boxes, const int64_t* sorted, int64_t n, T threshold, uint8_t* kept) {
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
    area[k] = box_area(b[0], b[1], b[2], b[3]);
  }
  std::vector<uint8_t> removed(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    if (removed[i]) {
      continue;
    }
    kept[sorted[i]] = 1;
    const int64_t next = i + 1;
    suppress_overlaps(x1[i], y1[i], x2[i], y2[i], area[i], x1 + next, y1 + next, x2 + next,
                      y2 + next, area + next, n - next, threshold, removed.data() + next);
  }
}

// Box indices by decreasing score, tied scores by increasing index: the stable sort torchvision's
// nms uses, so both keep the same box of a tied pair.
at::Tensor stable_order(const at::Tensor& scores) {
  return std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
}

template <typename T>
at::Tensor nms_kernel(const at::Tensor& boxes, const at::Tensor& scores,
                      const std::optional<at::Tensor>& idxs, double iou_threshold) {
  const int64_t n = boxes.size(0);
  const T threshold = threshold_as<T>(iou_threshold);
  const T* box_data = boxes.data_ptr<T>();
  const at::Tensor order = stable_order(scores);
  const int64_t* order_data = order.data_ptr<int64_t>();
  std::vector<uint8_t> kept(n, 0);

  if (!idxs.has_value()) {
    greedy_nms(box_data, order_data, n, threshold, kept.data());
  } else {
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
        greedy_nms(box_data, sorted.data() + start, groups.starts[g + 1] - start, threshold,
                   kept.data());
      }
    });
  }

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
        std::get<1>(scores.index_select(0, survivor_t).sort(/*dim=*/0, /*descending=*/true));
    return survivor_t.index_select(0, by_score);
  }
  std::vector<int64_t> result;
  for (int64_t p = 0; p < n; ++p) {
    if (kept[order_data[p]]) {
      result.push_back(order_data[p]);
    }
  }
  return at::tensor(result, at::kLong);
}

}  // namespace

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const std::optional<at::Tensor>& idxs, double iou_threshold) {
  check_nms_inputs(boxes, scores, idxs, at::kCPU);
  if (boxes.size(0) == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor boxes_c = boxes.contiguous();
  const std::optional<at::Tensor> idxs_c =
      idxs.has_value() ? std::optional<at::Tensor>(idxs->contiguous()) : std::nullopt;
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_cpu", [&] {
    result = nms_kernel<scalar_t>(boxes_c, scores, idxs_c, iou_threshold);
  });
  return result;
}

}  // namespace harness
