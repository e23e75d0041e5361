"""Applications built on mtl_fast, not part of its core: the demo, the benchmark harness, the demo's datasets,
the classic MTL network and the per-task-loop baseline. The core never imports from here."""
