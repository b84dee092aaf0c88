"""Each operator beside the peer it replaces, on identical MLPerf-sized inputs.

Run: `.venv/bin/python -m pytest benchmarks/test_ops_bench.py --benchmark-only` (add
`--bench-device cuda` on a GPU machine). Groups pair `ours` with `peer`; RESULTS.md records the medians.
"""

# --- roi_align ---

# --- nms ---

# --- anchors / box coder ---

# --- mask targets ---
