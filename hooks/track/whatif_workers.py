"""The ``num-workers=N`` what-if's stretch: the live DataLoader's next batches, loaded by N workers.

A worker count cannot be changed on a live DataLoader iterator, and a second
loader with its own sampler would load other samples.  So the stretch takes
the next index batches from the live iterator's own sampler iterator
(``_sampler_iter``, private in torch: where it is missing the what-if is
skipped with that reason) and hands exactly those to a temporary DataLoader
with N workers and the run's dataset, collate function, pinning and timeout.
When they are served the loop goes back to its own iterator, which goes on
after the taken indices: no batch is skipped or repeated.  With 0 workers in
the run the order is the run's exactly; with workers, the batches they had
already prefetched come after the stretch (a few places later, never lost).

Failures stay out of the loop: a temporary loader that cannot start its
workers, or whose worker fails, hands the batches it had not served to an
in-process loader over the same indices, so the loop receives them as it
would have; only an error the data itself raises there (the same error the
run's own loader would raise on that sample) reaches the loop, as it would
without gpulens.  The temporary loader seeds its workers from a private
generator: the training's random numbers are not drawn from.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any

from gpulens.hooks.track import loader_workers

log = logging.getLogger("gpulens")


def why_not(source: Any, torch: Any) -> str | None:
    """Why a workers stretch cannot run over ``source`` (the loop's live iterator); None when it can."""
    try:
        from torch.utils.data.dataloader import _BaseDataLoaderIter, _DatasetKind
    except Exception as exc:  # a torch without these internals
        return f"this torch's DataLoader has no iterator internals gpulens knows ({type(exc).__name__})"
    if not isinstance(source, _BaseDataLoaderIter):
        return "the loop's batches do not come from a torch DataLoader"
    if getattr(source, "_dataset_kind", None) != _DatasetKind.Map:
        return "an iterable dataset has no sampler order that a second loader could share"
    if getattr(source, "_sampler_iter", None) is None or not hasattr(source, "_index_sampler"):
        return "the DataLoader iterator keeps no sampler iterator (torch's internals changed)"
    try:
        from torch.utils.data.datapipes.datapipe import IterDataPipe, MapDataPipe

        if isinstance(getattr(source, "_dataset", None), (IterDataPipe, MapDataPipe)):
            return "a DataPipe dataset shards itself across workers; a second loader would change its order"
    except Exception:
        pass
    return None


class WorkersStretch:
    """Serves ``count`` index batches taken from ``source``'s sampler through a temporary loader.

    ``loader`` is the DataLoader itself where the entry point knows it
    (``run.loader(...)``): its ``multiprocessing_context``, ``worker_init_fn``
    and ``prefetch_factor`` then carry over; from an iterator alone they do
    only when the run has workers (torch keeps them on the iterator then).
    """

    def __init__(self, source: Any, workers: int, count: int, torch: Any, loader: Any = None) -> None:
        self._torch = torch
        self._source = source
        self._loader = loader
        self._auto_collation = bool(source._auto_collation)
        self._taken: list[Any] = []
        self._rest: list[Any] = []  # what the in-process loader serves after a failure
        # both loaders are built before an index is taken: one that cannot be built costs the run nothing
        with_workers = self._make(self._taken, workers)
        self._in_process = self._make(self._rest, 0)
        self._taken.extend(itertools.islice(source._sampler_iter, count))
        self._served = 0
        self._iter: Any = None
        self.workers = workers
        self.fell_back: str | None = None  # why the rest was loaded in-process
        try:
            with loader_workers.untimed():
                self._iter = iter(with_workers)
        except Exception as exc:  # workers cannot start (no /dev/shm, a context that cannot pickle the dataset)
            self._fall_back(exc)

    @property
    def taken(self) -> int:
        return len(self._taken)

    def next(self) -> tuple[bool, Any]:
        """(True, batch), or (False, None) once every taken batch was served."""
        if self._served >= len(self._taken):
            return False, None
        try:
            batch = next(self._iter)
        except StopIteration:  # fewer batches than indices: cannot happen with a batch sampler list; be safe
            self.close()
            return False, None
        except Exception as exc:
            if self.fell_back is not None:
                raise  # the data's own error, raised in-process as the run's loader would
            self._fall_back(exc)
            batch = next(self._iter)
        self._served += 1
        return True, batch

    def close(self) -> None:
        """Stop the temporary workers (the stretch is over, or the run ended inside it)."""
        it, self._iter = self._iter, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception as exc:
                log.debug("gpulens: what-if workers did not shut down cleanly: %s", exc)

    # ------------------------------------------------------------------ the temporary loaders
    def _fall_back(self, exc: BaseException) -> None:
        self.fell_back = f"{type(exc).__name__}: {exc}"
        log.warning("gpulens: what-if num-workers=%d: the temporary workers failed (%s); the stretch's remaining "
                    "batches load in the training process", self.workers, self.fell_back)
        self.close()
        self._rest[:] = self._taken[self._served:]
        self._iter = iter(self._in_process)

    def _make(self, indices: list[Any], workers: int) -> Any:
        torch, src, loader = self._torch, self._source, self._loader
        generator = torch.Generator()
        generator.manual_seed(int(getattr(src, "_base_seed", 0)) & 0x7FFF_FFFF_FFFF_FFFF)
        kwargs: dict[str, Any] = {"num_workers": workers, "collate_fn": src._collate_fn,
                                  "pin_memory": bool(getattr(src, "_pin_memory", False)),
                                  "timeout": getattr(src, "_timeout", 0) if workers else 0, "generator": generator}
        if workers:
            kwargs["worker_init_fn"] = getattr(loader, "worker_init_fn", getattr(src, "_worker_init_fn", None))
            kwargs["prefetch_factor"] = (getattr(loader, "prefetch_factor", None)
                                         or getattr(src, "_prefetch_factor", None) or 2)
            context = getattr(loader, "multiprocessing_context", None)
            if context is not None:
                kwargs["multiprocessing_context"] = context
        if self._auto_collation:
            return torch.utils.data.DataLoader(src._dataset, batch_sampler=indices, **kwargs)
        return torch.utils.data.DataLoader(src._dataset, sampler=indices, batch_size=None, **kwargs)
