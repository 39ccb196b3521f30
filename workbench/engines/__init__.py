"""Batch engines: the local one (``workbench.reports.batch.analyze_files``) and Ray (``ray_engine``).

Both call ``workbench.reports.batch.analyze_one`` per image, so reports and summary rows are the same.
"""

__all__: list[str] = []
