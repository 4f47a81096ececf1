"""Hugging Face Trainer callback: ``Trainer(..., callbacks=[GpuLensCallback()])``.

A step is one optimizer step (``on_step_end``); with gradient accumulation
the micro-batches fold into it.  The Trainer has no hooks around forward and
backward, so the phases inside a step come from the hooks ``gpulens run``
uses (DataLoader fetches, ``backward``, ``optimizer.step``, the model's
forward) in phase-only mode.  Evaluation belongs to no step.
"""
from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from gpulens.integrations._common import end_run, start_run


class GpuLensCallback(TrainerCallback):
    """Record ``trainer.train()`` as a gpulens run; keyword arguments go to :func:`gpulens.track`."""

    def __init__(self, name: str | None = None, **track_kwargs: Any) -> None:
        self.name = name
        self.track_kwargs = track_kwargs
        self.run: Any = None
        self._batch: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        batch = args.per_device_train_batch_size * max(args.gradient_accumulation_steps, 1)
        config = {"learning_rate": args.learning_rate, "gradient_accumulation_steps": args.gradient_accumulation_steps,
                  "per_device_train_batch_size": args.per_device_train_batch_size,
                  "bf16": args.bf16, "fp16": args.fp16, "max_steps": args.max_steps,
                  "num_train_epochs": args.num_train_epochs}
        name = self.name or (args.run_name if args.run_name and args.run_name != args.output_dir else None) \
            or (type(model).__name__ if model is not None else "hf-trainer")
        self.run = start_run(name, self.track_kwargs, "hf", model=model, optimizer=optimizer, batch_size=batch,
                             config=config)
        # samples per step from the arguments: accelerate's loader fetches one batch ahead, so
        # counting fetches would shift one micro-batch into the previous step
        self._batch = batch  # this rank's samples per optimizer step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run is not None:
            self.run.end_step_here(samples=self._batch)

    def _pause(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run is not None:
            self.run.idle()

    on_epoch_end = _pause
    on_evaluate = _pause

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        end_run(self.run)
        self.run = None
