"""``drwb bench``: speed and memory measured on this machine, printed as JSON.

``models``: preprocessing, analysis, throughput and peak memory of single processes (the table of every
benchmark); ``explainers``: each explanation method's time and memory; ``server``: the Gradio app in its
own process driven by concurrent ``gradio_client`` analysts; ``runtimes``: PyTorch against ONNX Runtime;
``precision``: fp32 against bf16 for the lesion and landmark networks;
``timing``: the median-of-repeats rule they share.
"""

from __future__ import annotations

from workbench.bench.models import BENCHMARKS, run_benchmarks, time_call

__all__ = ["BENCHMARKS", "run_benchmarks", "time_call"]
