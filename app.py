"""Hugging Face Spaces entry point: launches the Gradio workbench.

Honours Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging
import os
import tempfile

import workbench  # noqa: F401  (offline environment before gradio is imported)
from workbench.ui.gradio_app import MAX_UPLOAD, build_demo


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    example_dir = tempfile.mkdtemp(prefix="drwb-examples-")
    demo = build_demo(example_dir)
    demo.queue(max_size=32, default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size=MAX_UPLOAD,
        allowed_paths=[example_dir],
    )


if __name__ == "__main__":
    main()
