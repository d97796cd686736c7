"""Shared fixtures: keep measured caches out of the user's home during tests."""

import pytest


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point lrdlab's measurement cache (``$LRDLAB_CACHE``) at a fresh temporary folder."""
    monkeypatch.setenv("LRDLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
