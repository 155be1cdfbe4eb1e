"""Shared fixtures: the real Flickr8k sample (optional) and a tiny generated shapes set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgcap.data.shapes import generate_shapes


@pytest.fixture(autouse=True)
def _user_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Data modules built without a cache_dir use the user's cache folder: a temporary one here,
    so tests leave nothing in the home directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user_cache")))


@pytest.fixture(scope="session")
def flickr8k_sample() -> Path:
    """The 160-image Flickr8k sample named by IMGCAP_FLICKR8K_SAMPLE (read-only; skip when unset)."""
    value = os.environ.get("IMGCAP_FLICKR8K_SAMPLE")
    if not value:
        pytest.skip("set IMGCAP_FLICKR8K_SAMPLE to the Flickr8k sample folder to run this test")
    path = Path(value).expanduser().resolve()
    if not (path / "Images").is_dir():
        pytest.skip(f"IMGCAP_FLICKR8K_SAMPLE={value} has no Images/ folder")
    return path


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated shapes set (40 images at 32 px, split 32/4/4); treat it as read-only."""
    return generate_shapes(
        tmp_path_factory.mktemp("shapes") / "set", num_images=40, image_size=32, seed=0
    )
