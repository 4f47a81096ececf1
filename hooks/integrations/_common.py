"""What the framework callbacks share: starting (or joining) the run, and leaving it cleanly."""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("gpulens")


def start_run(name: str | None, kwargs: dict[str, Any], steps_by: str, **known: Any) -> Any:
    """``track()`` with the framework's facts, the user's keyword arguments winning.

    Under ``gpulens run`` this joins the active run; automatic step boundaries
    then stand down (the framework says where steps end), and ``steps_by`` is
    recorded so the run says how its steps were found.
    """
    from gpulens.hooks.track.tracking import track

    options = {k: v for k, v in known.items() if v is not None}
    options.update(kwargs)
    run = track(name, **options)
    if run.closed:
        return None
    run.let_framework_mark_steps(steps_by)
    return run


def end_run(run: Any, exception: BaseException | None = None) -> None:
    if run is None:
        return
    try:
        run.switch_phase(None)
        if exception is None:
            run.close("finished")
        elif isinstance(exception, KeyboardInterrupt):
            run.close("interrupted", "KeyboardInterrupt")
        else:
            run.close("crashed", f"{type(exception).__name__}: {exception}")
    except Exception as exc:  # a callback must never fail the training
        log.warning("gpulens: closing the run failed: %s", exc)


def loss_of(outputs: Any) -> Any:
    """The loss in a training step's outputs (a tensor, or a mapping with 'loss')."""
    if isinstance(outputs, dict):
        return outputs.get("loss")
    if hasattr(outputs, "loss"):
        return outputs.loss
    return outputs if hasattr(outputs, "item") else None
