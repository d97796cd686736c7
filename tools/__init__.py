"""Developer tools of the checkout, not part of the installed package: ``python -m tools.record …`` re-records the
files in ``data/`` (and the explorers' reference data), ``python -m tools.readme`` rewrites the generated blocks of
the README and docs/ from them."""
