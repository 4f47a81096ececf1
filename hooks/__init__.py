"""Attaching to training: track(), step and phase timing, DataLoader wait."""
from gpulens.hooks.tracking import TrackedRun, track

__all__ = ["track", "TrackedRun"]
