// The only PYBIND11_MODULE of harness._C: one m.def per entry point.
#include <torch/extension.h>

#include "anchors/anchors.h"
#include "box_coder/box_coder.h"
#include "common/build_info.h"
#include "mask_targets/mask_targets.h"
#include "nms/nms.h"
#include "roi_align/roi_align.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "MLPerf Mask R-CNN harness operators (C++/CUDA)";

  m.def("cuda_compiled", &harness::cuda_compiled, "True when the CUDA kernels were built");
  m.def("cuda_archs", &harness::cuda_archs, "CUDA archs the kernels were built for, e.g. ['8.0']");
  m.def("torch_version", &harness::torch_version, "torch version the extension was built against");
  m.def("mask_targets", &harness::mask_targets,
        "[K, M, M] float32 0/1 targets: each ROI's object polygons cropped and rasterized as "
        "pycocotools does");
  m.def("roi_align_forward", &harness::roi_align_forward,
        "[K, C, ph, pw] ROIAlign of every ROI from its level's feature map");
  m.def("roi_align_backward", &harness::roi_align_backward,
        "gradients of the feature maps given the pooled gradient [K, C, ph, pw]");
  m.def("nms", &harness::nms,
        "int64 indices of the boxes greedy NMS keeps, by decreasing score (torchvision.ops.nms)");
  m.def("batched_nms", &harness::batched_nms,
        "nms within each group of equal idxs, all groups in one call (torchvision batched_nms)");
  m.def("generate_anchors", &harness::generate_anchors,
        "per-level float32 [H*W*A, 4] anchors of the MLPerf reference, all levels in one pass");
  m.def("encode_boxes", &harness::encode_boxes,
        "[N, 4] regression deltas moving proposals onto reference boxes (maskrcnn-benchmark)");
  m.def("decode_boxes", &harness::decode_boxes,
        "[N, 4k] boxes predicted by deltas from boxes, dw/dh clamped (maskrcnn-benchmark)");
}
