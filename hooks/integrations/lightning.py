"""Lightning callback: ``Trainer(callbacks=[GpuLensCallback()])``.

Works with both import paths, ``lightning`` (``lightning.pytorch``) and
``pytorch_lightning``: the class derives from the Callback of each one that
is installed, so either Trainer accepts it.

Phases come from Lightning's own hooks: data wait until
``on_train_batch_start``, forward until ``on_before_backward``, backward
until ``on_after_backward``, optimizer from ``on_before_optimizer_step``
(after the closure) to ``on_train_batch_end``.  A step is one optimizer step:
with ``accumulate_grad_batches`` the micro-batches fold into it.  Validation,
epoch ends and checkpoints in between belong to no step.
"""
from __future__ import annotations

from typing import Any

from gpulens.hooks.track.steps import infer_batch_size
from gpulens.integrations._common import end_run, loss_of, start_run


def _bases() -> tuple[type, ...]:
    bases: list[type] = []
    try:
        from lightning.pytorch import Callback as LightningCallback

        bases.append(LightningCallback)
    except ImportError:
        pass
    try:
        from pytorch_lightning import Callback as PLCallback

        if PLCallback not in bases:
            bases.append(PLCallback)
    except ImportError:
        pass
    if not bases:
        raise ImportError("gpulens.integrations.lightning needs lightning or pytorch_lightning installed")
    return tuple(bases)


class GpuLensCallback(*_bases()):  # type: ignore[misc]
    """Record the fit as a gpulens run (each rank its own database, as with ``track()``).

    ``name`` defaults to the LightningModule's class name; other keyword
    arguments go to :func:`gpulens.track` (``runs_dir``, ``profile_every``,
    ``prometheus_port``, ...).
    """

    def __init__(self, name: str | None = None, **track_kwargs: Any) -> None:
        super().__init__()
        self.name = name
        self.track_kwargs = track_kwargs
        self.run: Any = None
        self._global_step = 0
        self._samples = 0
        self._losses: list[Any] = []  # the open step's micro-batch losses

    # ------------------------------------------------------------------ lifecycle
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = getattr(trainer, "optimizers", None) or []
        config = {"max_epochs": trainer.max_epochs, "accumulate_grad_batches": trainer.accumulate_grad_batches,
                  "precision": str(getattr(trainer, "precision", "")), "strategy": type(trainer.strategy).__name__}
        try:
            config["hparams"] = dict(pl_module.hparams)
        except Exception:
            pass
        self.run = start_run(self.name or type(pl_module).__name__, self.track_kwargs, "lightning",
                             model=pl_module, optimizer=optimizers[0] if optimizers else None, config=config)
        self._global_step = trainer.global_step

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        end_run(self.run)
        self.run = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        end_run(self.run, exception)
        self.run = None

    # ------------------------------------------------------------------ phases and steps
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.run is not None:
            self.run.switch_phase("forward")
            self._samples += infer_batch_size(batch) or 0

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self.run is not None:
            self.run.switch_phase("backward")

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        if self.run is not None:
            self.run.switch_phase(None)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.run is not None:
            self.run.switch_phase("optimizer")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        run = self.run
        if run is None:
            return
        run.switch_phase(None)
        loss = loss_of(outputs)
        if loss is not None and hasattr(loss, "detach"):
            self._losses.append(loss.detach())
        if trainer.global_step != self._global_step:  # an optimizer step happened: the step ends here
            self._global_step = trainer.global_step
            run.end_step_here(samples=self._samples or None, loss=self._step_loss())
            self._samples = 0
        run.switch_phase("data_wait")  # Lightning fetches the next batch after this hook

    def _step_loss(self) -> Any:
        """The sum of the step's micro-batch losses as Lightning hands them over (``accumulate_grad_batches``
        divides each by k before backward and in ``outputs``): the mean micro-batch loss, what went into
        backward, as the other integrations record it.  On the device, no sync."""
        losses, self._losses = self._losses, []
        if not losses:
            return None
        try:
            return sum(losses[1:], losses[0])
        except Exception:
            return None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.run is not None:  # the epoch's first fetch is the first step's data wait
            self.run.switch_phase(None)
            self.run.idle()
            self.run.switch_phase("data_wait")

    def _pause(self, *args: Any) -> None:
        if self.run is not None:
            self.run.switch_phase(None)
            self.run.idle()

    on_train_epoch_end = _pause
    on_validation_start = _pause
    on_validation_end = _pause
    on_save_checkpoint = _pause
