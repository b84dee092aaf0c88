// The bitmask NMS of the CUDA kernels, as HOST_DEVICE functions so that a CPU test runs the same
// arithmetic (harness._C._nms_bitmask_cpu).
//
// Boxes are sorted by group, then by score within each group, so every group is a contiguous run
// of rows. Word w of row i holds one bit per column w * 64 + k: set when column box j > i is in
// row i's group and overlaps it by more than the threshold. A row only ever needs the words from
// its own word to its group's last word, so batched NMS does per-group work: a row block (64 rows)
// touches the column words [first row's word, last row's group end), never other groups' words.
#pragma once

#include <cstdint>

#include "common/box_iou.h"
#include "common/macros.h"

namespace harness {

constexpr int kBoxesPerWord = 64;  // one bit per box in a uint64 mask word

// Rows or words [begin, end).
struct Span {
  int64_t begin;
  int64_t end;
};

HOST_DEVICE_INLINE int64_t words_for(int64_t n) { return (n + kBoxesPerWord - 1) / kBoxesPerWord; }

// Rows of the group holding row i: `groups` ([n] int64, ascending) may be null for one group.
HOST_DEVICE_INLINE Span group_rows(const int64_t* groups, int64_t n, int64_t i) {
  if (groups == nullptr) {
    return {0, n};
  }
  const int64_t g = groups[i];
  int64_t lo = 0;  // first row whose group is >= g
  int64_t hi = i;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (groups[mid] < g) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  const int64_t begin = lo;
  lo = i + 1;  // first row whose group is > g
  hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (groups[mid] <= g) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return {begin, lo};
}

// The column words row block `block` needs: from its own word (columns before it precede every
// row of the block) to the word holding the last row of its last row's group.
HOST_DEVICE_INLINE Span column_words(const int64_t* groups, int64_t n, int64_t block) {
  const int64_t last_row =
      (block + 1) * kBoxesPerWord < n ? (block + 1) * kBoxesPerWord - 1 : n - 1;
  return {block, words_for(group_rows(groups, n, last_row).end)};
}

// True when row i starts its group (the reduction walks each group from its first row).
HOST_DEVICE_INLINE bool starts_group(const int64_t* groups, int64_t i) {
  return i == 0 || (groups != nullptr && groups[i] != groups[i - 1]);
}

// Word `word` of row i: bits of the columns in that word after i and in i's group (column_group
// is that of each of the word's columns, `cols` of them) whose IoU with row i exceeds threshold.
// col holds (x1, y1, x2, y2, area) per column.
template <typename T>
HOST_DEVICE_INLINE uint64_t overlap_bits(const T* row_box, T row_area, int64_t row_group, int64_t i,
                                         int64_t word, const T (*col)[5],
                                         const int64_t* column_group, int cols, T threshold,
                                         T offset) {
  uint64_t bits = 0;
  const int64_t first = word * kBoxesPerWord;
  for (int k = 0; k < cols; ++k) {
    if (first + k > i && column_group[k] == row_group &&
        box_iou(row_box[0], row_box[1], row_box[2], row_box[3], row_area, col[k][0], col[k][1],
                col[k][2], col[k][3], col[k][4], offset) > threshold) {
      bits |= uint64_t{1} << k;
    }
  }
  return bits;
}

}  // namespace harness
