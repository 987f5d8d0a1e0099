"""The measurements behind ``tools/analysis_tools/benchmark.py``, one module
per table: ``latency`` (backbone inference and training step), ``haar``
(the wavelet transforms), ``operators`` (aten operator counts) and
``detector`` (training throughput of a detector config) and
``onnx_runtime`` (ONNX Runtime against PyTorch eager). Beneath them:
``backbones`` (the rows and the one backbone training step), ``timing``
(precisions and timed calls), ``memory`` (peak memory, the allocator),
``official_formulation`` (the network as the official code computes it)
and ``report`` (printing, failed rows, the JSON file).

A new kind of row is one more module here, a function that measures the
rows and one that prints them, plus its flag and a few lines in
``benchmark.py``'s ``run`` that call them and record the rows in the JSON.

It sits beside the tool rather than in ``wavevit_mm``: a measuring rig is
not part of the installed package.
"""
