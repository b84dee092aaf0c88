"""The DALI data pipeline (COCO reader, decode on the GPU or CPU, resize, flip, normalize) and its
iterators into `harness.data.batch.Batch`es. Built through `harness.data.build_train_loader` and
`build_val_loader`; this package imports harness.data, never the reverse at import time."""
