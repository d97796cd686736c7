"""Re-recording the shipped results: ``python -m tools.record WHAT …`` from the checkout (``--help`` lists them).

Every file names its machine, load average and the command that re-creates it. Files recorded before the tools
moved out of the package name that command as ``lrdlab record WHAT …``; :func:`current_command` gives today's.
"""

from __future__ import annotations

OLD_PREFIX, PREFIX = "lrdlab record ", "python -m tools.record "


def current_command(command: str) -> str:
    """A recorded command as it is run today (``lrdlab record X`` became ``python -m tools.record X``)."""
    return PREFIX + command[len(OLD_PREFIX):] if command.startswith(OLD_PREFIX) else command
