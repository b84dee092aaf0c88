// COCO RLEs of mask probabilities pasted into an image, without the image: the ops
// harness::mask_rle and harness::resize_bilinear (schemas in csrc/ops.cpp, CPU kernels in
// mask_rle_cpu.cpp; evaluation post-processing, host only).
//
// A plane [Hs, Ws] (a mask with its zero border) is resized bilinearly to its integer box, with the
// arithmetic of ATen's CPU upsample_bilinear2d (align_corners=False, no scale factor), thresholded
// (value > threshold, compared in float32 as torch compares a float32 tensor with a Python float)
// and clipped to the image; the image's runs (column-major, COCO's order) come from the box's
// pixels alone and are written as COCO's compressed RLE string.
//
// `arithmetic` names how the resize rounds, so that the thresholded pixels equal those of ATen's
// kernel bit for bit:
//   "aten"  call at::upsample_bilinear2d for each box (exact wherever ATen runs; the slow path),
//   "fused" ATen's kernels compiled with FMA (its AVX2 build): fused multiply-adds, below,
//   "plain" ATen's DEFAULT build: every product and sum rounded on its own.
// harness/ops/mask_rle.py tells which of "fused"/"plain" this process's ATen computes by comparing
// resize_bilinear with F.interpolate, and falls back to "aten" when neither matches.
#pragma once

#include <ATen/ATen.h>

#include <string_view>

namespace harness {

enum class ResizeArithmetic { kAten, kFused, kPlain };

namespace detail {

inline ResizeArithmetic parse_arithmetic(std::string_view op, std::string_view arithmetic) {
  if (arithmetic == "aten") return ResizeArithmetic::kAten;
  if (arithmetic == "fused") return ResizeArithmetic::kFused;
  if (arithmetic == "plain") return ResizeArithmetic::kPlain;
  TORCH_CHECK(false, op, ": arithmetic must be 'aten', 'fused' or 'plain', got '", arithmetic, "'");
}

inline void check_plane(std::string_view op, const char* name, const at::Tensor& t, int64_t dims) {
  TORCH_CHECK(t.dim() == dims, op, ": ", name, " must have ", dims, " dims, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.size(-1) >= 1 && t.size(-2) >= 1, op, ": ", name, " must not be empty, got ",
              t.sizes());
}

// masks: [D, Hs, Ws] float32; boxes: [D, 4] int64 (x1, y1, x2, y2), both ends inclusive, the
// integer box each plane is resized to; height, width: the image's size.
inline void check_mask_rle_args(const at::Tensor& masks, const at::Tensor& boxes, int64_t height,
                                int64_t width) {
  TORCH_CHECK(masks.dim() == 3, "mask_rle: masks must be [D, Hs, Ws], got ", masks.sizes());
  if (masks.size(0) > 0) check_plane("mask_rle", "masks", masks, 3);
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0),
              "mask_rle: boxes must be [D=", masks.size(0), ", 4], got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kLong, "mask_rle: boxes must be int64, got ",
              boxes.scalar_type());
  TORCH_CHECK(boxes.device().is_cpu(), "mask_rle: boxes must be on the CPU, got ", boxes.device());
  TORCH_CHECK(height >= 1 && width >= 1, "mask_rle: the image must not be empty, got ", height,
              " x ", width);
}

}  // namespace detail

}  // namespace harness
