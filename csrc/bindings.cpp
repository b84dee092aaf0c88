// The PYBIND11_MODULE of harness._C: how it was built, and test hooks. The operators are not
// here: importing the module registers them in PyTorch's dispatcher (csrc/ops.cpp), where
// harness/ops/ calls them as torch.ops.harness.*.
#include <torch/extension.h>

#include "common/build_info.h"
#include "nms/nms.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "MLPerf Mask R-CNN harness operators (C++/CUDA), registered as torch.ops.harness";

  m.def("cuda_compiled", &harness::cuda_compiled, "True when the CUDA kernels were built");
  m.def("cuda_archs", &harness::cuda_archs, "CUDA archs the kernels were built for, e.g. ['8.0']");
  m.def("torch_version", &harness::torch_version, "torch version the extension was built against");
  m.def("_nms_column_words", &harness::nms_column_words,
        "test hook: [words, 2] column words each row block of the CUDA batched NMS computes");
  m.def("_nms_bitmask_emulation", &harness::nms_bitmask_emulation,
        "test hook: the CUDA bitmask NMS run serially on the host over (group, score)-sorted "
        "boxes; bool keep in that order");
}
