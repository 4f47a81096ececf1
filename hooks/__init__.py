"""Attaching to training: track(), step and phase timing, DataLoader wait, profiler windows."""
