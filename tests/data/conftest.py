"""Every data test runs with an empty home (so ~/.cache is a fresh folder),
without $TINYGRAD_CNN_DATA, and without the network: only file:// URLs open."""
import urllib.request

import pytest

from tinygrad_cnn.data import download


@pytest.fixture(autouse=True)
def offline_and_isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(download.DATA_ENV, raising=False)

    def local_only(url, *args, **kwargs):
        if not url.startswith("file:"):
            raise AssertionError(f"a test tried to reach the network: {url}")
        return urllib.request.urlopen(url, *args, **kwargs)

    monkeypatch.setattr(download, "urlopen", local_only)
