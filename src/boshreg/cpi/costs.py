"""What a config drive costs, said the same way by every tool that gives a verdict."""

from __future__ import annotations

PORTABLE = "portable"
PINNED = "pinned"

DRIVE_DEPENDENCY = (
    "the agent reads its user data from the drive first; take the drive away (a provider turning config "
    "drives off, a rebuild) and the VM cannot find its registry or settings; may block live migration on "
    "older clouds"
)
PERSONALITY_COST = (
    "injected (personality) files exist only on the config drive, never on the metadata service; compute "
    "API microversion 2.57 and later refuse them with 400; evacuation, shelve/unshelve and cross-cell "
    "resize rebuild the drive and lose them"
)
