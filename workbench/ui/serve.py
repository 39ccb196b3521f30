"""Serve the Gradio workbench: the launch that ``app.py`` (the Spaces entry) and ``drwb bench --only
server`` share, so a benchmark measures exactly the served app and no module imports a face.

Honours Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT and binds 127.0.0.1 unless told otherwise.
``--data DIR`` or ``DRWB_DATA`` enables the dataset browser on an IDRiD-layout folder; the browser reads
only that folder (it is added to ``allowed_paths``), uploads and the synthetic examples.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import workbench  # noqa: F401  (offline environment before gradio is imported)
from workbench.analysis import Workbench, profile_from_env
from workbench.ui.gradio_app import APP_CSS, MAX_UPLOAD, build_demo

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DR Workbench (Gradio)")
    parser.add_argument("--data", help="IDRiD-layout folder to browse (default: $DRWB_DATA)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.data and not Path(args.data).is_dir():  # a typed path: say so rather than drop the tab
        parser.error(f"--data {args.data}: no such folder (the Dataset browser needs an IDRiD-layout folder)")
    data = args.data or os.environ.get("DRWB_DATA")
    data_dir = Path(data) if data and Path(data).is_dir() else None
    if data and data_dir is None:  # from the environment (a deployment): serve without the browser
        log.warning("DRWB_DATA=%s is not a folder: the Dataset browser tab is left out", data)
    example_dir = tempfile.mkdtemp(prefix="drwb-examples-")
    demo = build_demo(Workbench(profile=profile_from_env()), example_dir, data_dir)
    demo.queue(max_size=32, default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size=MAX_UPLOAD,
        css=APP_CSS,
        allowed_paths=[example_dir] + ([str(data_dir)] if data_dir else []),
    )


if __name__ == "__main__":
    main()
