"""The Gradio face launched on 127.0.0.1 and driven through gradio_client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from workbench.synthetic import make_fundus
from workbench.ui.gradio_app import build_demo


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    demo = build_demo(str(tmp_path_factory.mktemp("examples")))
    demo.queue(max_size=8).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def test_inspect_endpoint_returns_crop_and_verdict(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "fundus.png"
    Image.fromarray(make_fundus(4, size=(356, 536)).image).save(path)
    crop_path, report = client.predict(handle_file(str(path)), "clahe", api_name="/inspect")
    with Image.open(crop_path) as crop:
        assert crop.size == (512, 512)
    assert "Gradeable" in report and "NOT" not in report


def test_corrupt_upload_errors_and_app_keeps_serving(client: Client, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(Exception, match="truncated or corrupt|not a recognised image"):
        client.predict(handle_file(str(bad)), "none", api_name="/inspect")
    good = tmp_path / "ok.png"
    Image.fromarray(make_fundus(5, size=(356, 536)).image).save(good)
    _, report = client.predict(handle_file(str(good)), "none", api_name="/inspect")
    assert "Quality" in report
