"""``python -m boshreg.agent``: the agent-side command, standard library only."""

import sys

from boshreg.agent.cli import main

sys.exit(main(prog="python -m boshreg.agent"))
