"""Hugging Face Spaces entry point: launches the Gradio workbench (``workbench.ui.serve``).

Honours Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT and binds 127.0.0.1 unless told otherwise.
``--data DIR`` or ``DRWB_DATA`` enables the dataset browser on an IDRiD-layout folder.
"""

from __future__ import annotations

from workbench.ui.serve import main

if __name__ == "__main__":
    main()
