"""The one base of every error a user can cause: what failed, and how to fix it.

The command line prints these as one line (or JSON) with exit code 2; anything else that escapes is
a bug and keeps its traceback. Standard library only: the agent side derives from it inside VMs.
"""

from __future__ import annotations


class BoshregError(Exception):
    """A problem the user can act on; ``fix`` says how (a key to set, an option to give)."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)
