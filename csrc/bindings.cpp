// The only PYBIND11_MODULE of harness._C: one m.def per entry point.
#include <torch/extension.h>

#include "common/build_info.h"
#include "mask_targets/mask_targets.h"
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
}
