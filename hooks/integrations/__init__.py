"""Framework callbacks: record a run from inside Lightning or the Hugging Face Trainer.

Import the one for your framework (each imports its framework, nothing else):
``gpulens.integrations.lightning.GpuLensCallback`` and
``gpulens.integrations.hf.GpuLensCallback``.
"""
