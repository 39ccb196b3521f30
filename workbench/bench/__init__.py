"""``drwb bench``: speed and memory measured on this machine, printed as JSON.

``models``: preprocessing, analysis, explainers, throughput and peak memory of single processes;
``server``: the Gradio app in its own process driven by concurrent ``gradio_client`` analysts.
"""

from __future__ import annotations

from workbench.bench.models import BENCHMARKS, run_benchmarks, time_call

__all__ = ["BENCHMARKS", "run_benchmarks", "time_call"]
