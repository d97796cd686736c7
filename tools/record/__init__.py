"""Re-recording the shipped results: ``python -m tools.record WHAT …`` from the checkout (``--help`` lists them).

Every file names its machine, load average and the command that re-creates it.
"""
