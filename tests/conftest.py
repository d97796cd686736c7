"""Shared fixtures: one torch thread, and measured caches kept out of the user's home during tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch thread for the whole suite: on a shared, oversubscribed CPU, 2-thread BLAS/LAPACK calls wait on
    each other's time slices (seen here: a 1000×512 SVD took 14 s on 2 threads, 0.09 s on 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point lrdlab's measurement cache (``$LRDLAB_CACHE``) at a fresh temporary folder."""
    monkeypatch.setenv("LRDLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
