"""``gpulens.track()``: record a training run from inside the training script.

    with gpulens.track(name="resnet50", batch_size=256) as run:
        for batch in run.loader(train_loader):
            with run.phase("forward"):
                loss = model(batch)
            with run.phase("backward"):
                loss.backward()
            with run.phase("optimizer"):
                opt.step(); opt.zero_grad()
            run.step(loss=loss)

Nothing here may hurt the training run: set-up problems disable recording
with one log line instead of raising, the hot-path methods swallow their own
errors, and all I/O happens on background threads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from gpulens.hooks.run_env import ENV_RUN_ID_SCOPE, without_autorun
from gpulens.hooks.track import run_end, runmeta
from gpulens.hooks.track.compile_time import CompileClock
from gpulens.hooks.track.lifecycle import Lifecycle
from gpulens.hooks.track.modelinfo import model_meta
from gpulens.hooks.track.options import RunOptions
from gpulens.hooks.track.profiling import ProfilerWindows
from gpulens.hooks.track.steps import StepRecorder, phase_slot
from gpulens.profiler.record.recorder import Recorder
from gpulens.profiler.store.runstore import new_run_id, rank_db_name, run_dir_in, runs_root, validate_run_id
from gpulens.profiler.store.schema import FLAG_COMPILE, FLAG_PROFILED

if TYPE_CHECKING:  # the attachments, imported when torch (or a store, or an exporter) is there
    from gpulens.hooks.track.auto import AutoSteps
    from gpulens.hooks.track.comm import CommTimer
    from gpulens.hooks.track.flops import StepFlops
    from gpulens.hooks.track.hidden_hooks import ModuleHooks
    from gpulens.hooks.track.whatif import WhatIf
    from gpulens.profiler.export.prometheus import RunExporter
    from gpulens.profiler.store.publisher import PublisherProcess

log = logging.getLogger("gpulens")
#: Seconds between looks for an initialised CUDA (to time the GPU side of steps) while there is none.
CUDA_CHECK_S = 1.0

_active_lock = threading.Lock()
_active: TrackedRun | None = None
_NULL = contextlib.nullcontext()


class _Phase:
    """A reusable context manager for one phase name (no allocation per use)."""

    __slots__ = ("_run", "_slot", "_name")

    def __init__(self, run: TrackedRun, slot: int, name: str | None) -> None:
        self._run = run
        self._slot = slot
        self._name = name

    def __enter__(self) -> None:
        run = self._run
        if run._recording:
            try:
                run._rec.enter(self._slot, self._name)
            except Exception as exc:
                run._hook_failed(exc)

    def __exit__(self, *exc: object) -> None:
        run = self._run
        if run._recording:
            try:
                run._rec.exit()
            except Exception as err:
                run._hook_failed(err)


class TrackedRun:
    """One recorded run (this process' rank).  Use :func:`track` to create it."""

    def __init__(self, name: str | None = None, *, options: RunOptions | None = None, **kwargs: Any) -> None:
        """``options`` (a :class:`RunOptions`), or its fields as keyword arguments (what :func:`track` takes)."""
        opts = options if options is not None else RunOptions(name=name, **kwargs)
        self.options = opts
        self.name: str = opts.name or "run"
        self.quiet = opts.quiet
        self.path: Path | None = None
        self.id: str | None = None
        self._recording = False
        self._closed = False
        self._nesting = 0
        self._failures = 0
        self._cuda_checked = 0.0
        self._phases: dict[str, _Phase] = {}
        self._recorder: Recorder | None = None
        self._lifecycle = Lifecycle(self._close_at_exit)
        self._windows: ProfilerWindows | None = None
        self._flops: StepFlops | None = None
        self._loader_hook = False  # hooks/track/loader_workers.py installed for this run
        self._compile_clock = CompileClock()
        self._auto_wanted = opts.auto
        self._auto: AutoSteps | None = None  # once torch is there (gpulens run)
        self._exporter: RunExporter | None = None
        self._publisher: PublisherProcess | None = None  # copies this rank's database to a run store (GPULENS_STORE)
        self._clock_stop: threading.Event | None = None  # ends rank 0's answers to clock pings
        self._clock_thread: threading.Thread | None = None
        self._clock_measured: dict[str, Any] | None = None  # kept for close: it may land while the run closes
        self.prometheus_url: str | None = None  # where the metrics are served (prometheus_port=...)
        self._phase_switched = False
        self._profile = opts.profile_config()
        self._model_meta = model_meta(opts.model, opts.optimizer)
        self._model = opts.model  # for DDP all-reduce timing once torch is attached; dropped at close
        self._comm: CommTimer | None = None
        self._child = opts.child  # a child process of the recording one (gpulens.hooks.launcher.children)
        self._whatif: WhatIf | None = None  # a measured what-if's stretch (hooks/track/whatif.py)
        self._forward_hooks: ModuleHooks | None = None  # an autocast what-if's hooks on track(model=)
        self._optimizer_hook: Any = None  # an optimizer what-if's global step pre-hook
        self._watcher: Any = None  # profile requests through the run folder (hooks/track/on_demand.py)
        self._capture: Any = None  # windows of slowdowns and of a non-finite loss (hooks/track/auto_capture.py)
        self._watch_thread: Any = None
        self._meta_seen: dict[str, Any] = {}  # set_meta values the run itself reads back (the probe's b_max)
        self._rank = 0
        self._slot = 0
        self._node_rank = 0
        self._auto_role = False
        self._id_settled = True
        self._job_run_id: str | None = None
        self._id_thread: threading.Thread | None = None  # reads rank 0's run id (hooks/track/jobid.py)
        try:
            self._start()
        except Exception as exc:
            log.warning("gpulens: recording disabled for this run: %s", exc)
            self._abandon_start(exc)
            return
        if opts.prometheus_port is not None:
            try:
                self._start_exporter(opts.prometheus_port, opts.prometheus_addr)
            except Exception as exc:  # the run is recorded and closed as usual, only not served
                log.warning("gpulens: Prometheus metrics not served (%s); recording goes on without them", exc)

    def _abandon_start(self, exc: BaseException) -> None:
        """Recording could not start: undo what did start (threads, handlers), so nothing is left half-open."""
        self._recording = False
        self._closed = True
        self._lifecycle.uninstall()
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            try:
                recorder.close("crashed", f"recording could not start: {type(exc).__name__}: {exc}")
            except Exception:
                pass

    # ------------------------------------------------------------------ set-up
    def _start(self) -> None:
        opts = self.options
        ranks = runmeta.rank_env()
        # only one process per node samples the node's GPUs and host
        sample_node = ranks["local_rank"] == 0
        # gpulens run's own process without a launcher's rank: a rank once it trains, its node's sampler if
        # only its children do (mp.spawn's parent); the run folder shows which (gpulens.profiler.store.members)
        self._auto_role = bool(opts.auto) and self._child is None and not runmeta.has_rank()
        pg_rank = None
        if self._child is not None:  # the recording parent samples the node; a child is torch's rank
            pg_rank = self._child.get("process_group_rank")
            ranks = {"rank": int(pg_rank) if pg_rank is not None else 0, "local_rank": 0,
                     "world_size": int(self._child.get("process_group_world_size") or 1), "local_world_size": 1,
                     "node_rank": ranks["node_rank"]}  # a child trains on its parent's node
            sample_node = False
        env_id = os.environ.get("GPULENS_RUN_ID")
        given = opts.run_id or env_id or runmeta.shared_run_id(self.name)
        # an id is the job's when given, or derived from something job-wide; a node's own id waits for the
        # process group, through which every rank learns rank 0's (hooks/track/jobid.py)
        self._id_settled = bool(opts.run_id) or ranks["world_size"] <= 1 or (
            os.environ.get(ENV_RUN_ID_SCOPE) == "job" if env_id else runmeta.job_wide_id())
        root = runs_root(opts.runs_dir)
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a generated id that is already taken is drawn again
            run_id = given or new_run_id(self.name)
            validate_run_id(run_id)
            path = run_dir_in(root, run_id)
            if given or not (path / rank_db_name(ranks["rank"])).exists():
                break
        path.mkdir(exist_ok=True)
        self.path, self.id = path, run_id
        meta = runmeta.start_meta(opts, run_id, self._profile, self._model_meta, ranks)
        if self._child is not None:
            meta["child"] = self._child
            from gpulens.profiler.record.proctree import announce_trainer

            announce_trainer(path)
        for claim in range(256 if self._child is not None else 1):
            try:  # a child takes the first free file from its rank on (the files are slots, see members.py)
                slot = ranks["rank"] + claim
                db = path / rank_db_name(slot)
                own = ranks["rank"] if self._child is None or pg_rank is not None else slot
                recorder = Recorder(db, {**meta, "rank": own}, opts.sampling, opts.nvml, sample_node)
                break
            except FileExistsError:
                if self._child is None or claim == 255:
                    raise
        self._recorder = recorder
        self._slot = slot  # the file's number: trace files are named by it (unique in the folder)
        ranks["rank"] = own
        from gpulens.profiler.store.publisher import start as start_publisher

        self._publisher = start_publisher(opts.store, db, self._target(ranks, pg_rank),
                                          env=without_autorun(os.environ))
        writer = recorder.writer
        self._emit = writer.step  # the row list as it is: nothing changes it once emitted
        if opts.auto_capture:
            self._emit = self._start_auto_capture(writer)
        self._rec = StepRecorder(self._emit, warmup_steps=opts.warmup_steps, batch_size=opts.batch_size,
                                 sync=self._sync if opts.sync_phases else None)
        self._rec.pre_step = self._pre_step
        self._rec.post_step = self._post_step
        self._rec.on_waits = lambda totals: writer.meta(data_wait_cpu=totals)
        self._rec.on_warmup = lambda steps: writer.meta(warmup_steps=steps)
        if opts.what_if:
            self._start_what_if(opts.what_if)
        if opts.flops_per_step:
            dtype = opts.flops_dtype or "bf16"
            writer.flops(-1, float(opts.flops_per_step), {dtype: float(opts.flops_per_step)}, "user")
        self._rank = ranks["rank"]
        self._node_rank = ranks["node_rank"]
        self._recording = True
        torch = sys.modules.get("torch")
        if torch is not None:
            self.attach_torch(torch)
        try:
            self._watch_requests(path, ranks["rank"])
        except Exception as exc:  # profiling on request is lost, not the recording
            log.warning("gpulens: profile requests will not be read (%s: %s)", type(exc).__name__, exc)
        self._lifecycle.install()
        if not self.quiet and not self._auto_wanted:  # gpulens run announced it already
            log.info("gpulens: recording run %s into %s", run_id, path)

    def _start_auto_capture(self, writer: Any) -> Any:
        """The step rows go to the writer and, one append more, to the slowdown watch (auto_capture.py)."""
        from gpulens.hooks.track.auto_capture import AutoCapture

        def say(kind: str, message: str) -> None:
            writer.event(kind, message)
            if not self.quiet:
                log.info("gpulens: %s", message)

        def stretch_pending() -> bool:  # a measured what-if yet to run or running: windows wait for its end
            return self._whatif is not None and self._whatif.state in ("waiting", "running")

        capture = self._capture = AutoCapture(lambda: self._windows, say, stretch_pending)
        write, seen = writer.step, capture.seen

        def emit(row: Any) -> None:
            write(row)
            seen(row)

        return emit

    def _watch_requests(self, path: Path, rank: int) -> None:
        """``gpulens profile`` asks through the run folder: a thread of this process reads it (on_demand.py)."""
        from gpulens.hooks.track.on_demand import POLL_INTERVAL_S, RequestWatcher
        from gpulens.profiler.record.sampling import SamplerThread, Task

        watcher = RequestWatcher(path, rank, lambda: self._windows, lambda: self._rec.step_index > 0)
        writer = self._recorder.writer if self._recorder is not None else None

        def failed(task: Task, exc: BaseException) -> None:
            if writer is not None:
                writer.event("request_error", f"{type(exc).__name__}: {exc}")

        self._watcher = watcher
        tasks = [Task("requests", POLL_INTERVAL_S, watcher.poll)]
        if self._capture is not None:
            tasks.append(Task("auto-capture", POLL_INTERVAL_S, lambda now: self._capture.poll()))
        self._watch_thread = SamplerThread("gpulens-requests", tasks, failed)
        self._watch_thread.start()

    def _target(self, ranks: dict[str, Any], pg_rank: Any) -> dict[str, Any]:
        """Where the publisher sends this process's database (gpulens.profiler.store.publisher)."""
        return {"run_id": self._job_run_id or self.id, "node": ranks["node_rank"], "rank": ranks["rank"],
                "settled": self._id_settled,
                # rank or node's sampler, or (a child without a process group) which free rank: the folder says
                "auto": self._auto_role or (self._child is not None and pg_rank is None)}

    def _on_job_run_id(self, run_id: str) -> None:
        """The job's run id, agreed through the process group (hooks/track/jobid.py): the store gets one run."""
        self._job_run_id = run_id
        self._id_settled = True
        if run_id != self.id and self._recorder is not None:  # also while closing: the database is still open
            self._recorder.writer.meta(job_run_id=run_id)
        if self._publisher is not None:
            child = self._child or {}
            self._publisher.retarget(self._target({"node_rank": self._node_rank, "rank": self._rank},
                                                  child.get("process_group_rank", 0)))

    def _start_what_if(self, text: str) -> None:
        from gpulens.hooks.track.whatif import WhatIf, parse_what_if

        try:
            plan = parse_what_if(text)
        except Exception as exc:  # a bad what-if costs the what-if, not the recording
            log.warning("gpulens: what-if not run: %s", exc)
            return
        if plan.at < self.options.warmup_steps + WhatIf.CACHED:
            plan = dataclasses.replace(plan, at=self.options.warmup_steps + WhatIf.CACHED)
        assert self._recorder is not None
        self._whatif = WhatIf(plan, self._recorder.writer.meta, self._probe_limit)  # also at close
        self._rec.step_flags = self._whatif.flags

    def _probe_limit(self) -> int | None:
        """The largest batch the batch-size probe found to fit (None: no probe ran in this run)."""
        probe = self._meta_seen.get("batch_probe")
        return probe.get("b_max") if isinstance(probe, dict) else None

    @property
    def has_what_if(self) -> bool:
        """A measured what-if is planned: training fetches go through :meth:`fetch_batch`."""
        return self._whatif is not None

    def what_if_forward_pre(self, module: Any, args: tuple[Any, ...],
                            kwargs: dict[str, Any] | None) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """A training forward of the loop's model begins (an autocast or channels-last what-if's stretch runs
        inside it): None, or the forward's new (args, kwargs)."""
        whatif = self._whatif
        if whatif is not None and self._recording:
            return whatif.forward_pre(self._rec.step_index, module, args, kwargs)
        return None

    def what_if_forward_post(self, output: Any) -> Any:
        """That forward ended (or raised): its output, back in the model's dtype after an autocast stretch."""
        whatif = self._whatif
        return whatif.forward_post(output) if whatif is not None else output

    def fetch_batch(self, real_next: Any, source: Any = None, loader: Any = None) -> Any:
        """A training batch: from the loader, or during a what-if's stretch from its cache (or, for
        ``num-workers``, from a temporary loader over ``source``, the live DataLoader iterator)."""
        whatif = self._whatif
        if whatif is None or not self._recording:
            return real_next()
        return whatif.fetch(self._rec.step_index, real_next, source, loader)

    def attach_torch(self, torch: ModuleType) -> None:
        """Profiler windows, FLOP counting and (``gpulens run``) step detection need torch.

        Called at start when the training code imported torch already, or by
        ``gpulens run``'s import hook the moment it does.
        """
        if not self._recording or self._recorder is None or self.path is None:
            return
        writer = self._recorder.writer
        try:
            if not self._loader_hook:
                from gpulens.hooks.track import loader_workers
                from gpulens.profiler.store.loader_workers import META_KEY

                loader_workers.install(torch, lambda times: writer.meta(**{META_KEY: times}))
                self._loader_hook = True
            self._start_ranges(torch)
            if self._windows is None:  # also without a schedule: a window may be asked for (gpulens profile)
                self._windows = ProfilerWindows(torch, self.path, self._slot, self._profile, writer)
                self._windows.begin_if_first()
            if self.options.count_flops and not self.options.flops_given and self._flops is None:
                from gpulens.hooks.track.flops import StepFlops

                self._flops = StepFlops(torch, writer.flops, at=self.options.flops_at(),
                                        roots=self._known_roots)
            if self._model is not None:
                self.attach_comm(torch, self._model)
            if self._auto_wanted and self._auto is None:
                from gpulens.hooks.track.auto import AutoSteps

                self._auto = AutoSteps(self, torch)
                self._auto.install()
            self._hook_what_if_forward(torch)
            self._hook_what_if_optimizer(torch)
        except Exception as exc:
            log.warning("gpulens: could not attach to torch (%s: %s); recording samples only", type(exc).__name__, exc)

    def _hook_what_if_forward(self, torch: ModuleType) -> None:
        """An autocast or channels-last what-if under ``track(model=...)``: the model's forward gets a pre- and a
        post-hook for it (under ``gpulens run`` the root modules' hooks of automatic steps call it instead)."""
        from gpulens.hooks.track.whatif import FORWARD_KINDS

        whatif = self._whatif
        if (whatif is None or whatif.plan.kind not in FORWARD_KINDS or self._auto_wanted or self._model is None
                or self._forward_hooks is not None):
            return
        from gpulens.hooks.track.hidden_hooks import ModuleHooks, gpulens_hook

        @gpulens_hook
        def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if torch.is_grad_enabled() and module.training:
                return self.what_if_forward_pre(module, args, kwargs)
            return None

        @gpulens_hook
        def post(module: Any, args: Any, output: Any) -> Any:
            return self.what_if_forward_post(output)

        self._forward_hooks = ModuleHooks(torch)
        self._forward_hooks.forward(self._model, pre, post, with_kwargs=True)

    def _hook_what_if_optimizer(self, torch: ModuleType) -> None:
        """An optimizer what-if: torch.optim's global step pre-hook hands every optimizer step to it (under
        ``gpulens run`` and ``track()`` alike: no optimizer needs to be named)."""
        from gpulens.hooks.track.whatif import OPTIMIZER

        whatif = self._whatif
        if whatif is None or whatif.plan.kind != OPTIMIZER or self._optimizer_hook is not None:
            return
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        from gpulens.hooks.track.hidden_hooks import gpulens_hook

        @gpulens_hook
        def pre(optimizer: Any, args: Any, kwargs: Any) -> None:
            if self._recording:
                whatif.optimizer_pre(self._rec.step_index, optimizer)

        self._optimizer_hook = register_optimizer_step_pre_hook(pre)

    def _known_roots(self) -> list[Any] | None:
        """Root modules known without a gc walk: those automatic step detection hooked, or track(model=)."""
        if self._auto is not None:
            return self._auto.root_modules()
        return [self._model] if self._model is not None else None

    def _start_ranges(self, torch: ModuleType) -> None:
        """Steps and phases as ranges in profiler windows' traces, and as NVTX ranges under Nsight Systems."""
        if self._rec.ranges is not None:
            return
        from gpulens.hooks.track.ranges import TraceRanges, under_nsight

        nvtx = self.options.nvtx if self.options.nvtx is not None else under_nsight()
        if not (self._profile.enabled or nvtx):
            return
        ranges = TraceRanges(torch, nvtx)
        if nvtx and not ranges.nvtx:
            log.info("gpulens: no NVTX ranges: this torch has no CUDA (NVTX) support")
        self._rec.ranges = ranges
        if ranges.nvtx:
            self.set_meta(nvtx=True)

    def attach_comm(self, torch: ModuleType, model: Any) -> None:
        """Time the gradient all-reduce of a (gloo) DDP model, stored per step as ``@comm``."""
        if self._comm is None:
            from gpulens.hooks.track.comm import CommTimer

            self._comm = CommTimer()
        if self._comm.attach(torch, model):
            self.set_meta(comm_timing="ddp-allreduce-hook")

    def _start_exporter(self, port: int, addr: str) -> None:
        from gpulens.profiler.export.prometheus import RunExporter

        if self._recorder is None:  # not recording (nothing to expose)
            return
        ranks = runmeta.rank_env()
        exporter = RunExporter(self._recorder.writer, self._recorder.gpus or [], run_id=self.id or "",
                               rank=ranks["rank"], local_rank=ranks["local_rank"], node_rank=ranks["node_rank"])
        try:
            bound = exporter.serve(port + ranks["local_rank"] if port else 0, addr)
        except BaseException:
            exporter.close()  # detach its taps from the writer
            raise
        self._exporter = exporter
        self.prometheus_url = f"http://{addr}:{bound}/metrics"
        if not self.quiet:
            log.info("gpulens: Prometheus metrics on http://%s:%d/metrics", addr, bound)

    def _sync(self) -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    # ------------------------------------------------------------------ hot path
    def step(self, samples: int | None = None, tokens: int | None = None, loss: Any = None) -> None:
        """Mark the end of a training step (call it once per optimizer step).

        ``samples`` defaults to the batch size seen by :meth:`loader` or given
        to :func:`track`; ``loss`` may be a tensor: CUDA tensors are copied
        asynchronously, never synchronised.
        """
        if not self._recording:
            return
        if self._auto is not None and self._auto.boundaries:
            self._stand_down_auto("run.step()")
        self._end_step(samples, tokens, loss, True)

    def auto_step(self, loss: Any = None) -> None:
        """A step boundary found by :class:`~gpulens.hooks.track.auto.AutoSteps` (or a framework callback)."""
        if self._recording:
            self._end_step(None, None, loss, False)

    def _end_step(self, samples: int | None, tokens: int | None, loss: Any, manual: bool) -> None:
        try:
            rec = self._rec
            if rec.gpu is None:
                if time.perf_counter() - self._cuda_checked >= CUDA_CHECK_S:
                    self._maybe_attach_cuda()
            elif rec.step_index & 7 == 0:
                rec.gpu.poll()
            rec.step(samples, tokens, loss, manual=manual)
        except Exception as exc:
            self._hook_failed(exc)

    def _stand_down_auto(self, why: str) -> None:
        """The training code marks steps itself: automatic boundaries would count them twice."""
        auto, self._auto = self._auto, None
        if auto is not None:
            auto.uninstall()
            self._rec.break_step()
            self._rec.drop_phases()
            log.info("gpulens: %s in the training code: automatic step detection off", why)

    def switch_phase(self, name: str | None) -> None:
        """End the phase begun by the last ``switch_phase`` and begin ``name`` (None: no phase).

        For framework callbacks, whose hooks mark where phases begin and end
        in different calls, so a ``with run.phase()`` block cannot span them.
        """
        if not self._recording:
            return
        try:
            if self._phase_switched:
                self._rec.exit()
                self._phase_switched = False
            if name is not None:
                slot, custom = phase_slot(name)
                self._rec.enter(slot, custom)
                self._phase_switched = True
        except Exception as exc:
            self._hook_failed(exc)

    def end_step_here(self, samples: int | None = None, tokens: int | None = None, loss: Any = None) -> None:
        """Step boundary from a framework callback: like :meth:`step`, keeps phase detection on."""
        if not self._recording:
            return
        if self._phase_switched:
            self.switch_phase(None)
        auto = self._auto
        if auto is not None:  # phase-only detection summed what went into backward during this step
            try:
                summed = auto.take_loss()
            except Exception:
                summed = None
            loss = summed if loss is None else loss
        self._end_step(samples, tokens, loss, True)

    def idle(self) -> None:
        """Between iterations (an epoch ended, evaluation runs): time until the next phase belongs to no step."""
        if self._recording:
            self._safe(self._rec.break_step)

    def phase(self, name: str) -> Any:
        """Context manager charging the time inside it to ``name``.

        ``data_wait``, ``forward``, ``backward`` and ``optimizer`` (and short
        aliases) are the standard split; other names are kept by name and
        count as "other" in the split.
        """
        ph = self._phases.get(name)
        if ph is None:
            slot, custom = phase_slot(name)
            ph = self._phases[name] = _Phase(self, slot, custom)
        return ph

    def loader(self, iterable: Iterable[Any]) -> Iterable[Any]:
        """Wrap a DataLoader (any iterable): time spent fetching a batch is data wait.

        If :meth:`step` is not called inside the loop, each iteration is one step.
        """
        if not self._recording:
            return iterable
        if self._auto is not None and self._auto.boundaries:
            self._stand_down_auto("run.loader()")
        return _TimedLoader(self, iterable)

    def _pre_step(self, step: int) -> int:
        """At the end of ``step``: advance the profiler window, stop FLOP counting; flags for the step."""
        flags = 0
        compiled = self._compile_clock.take()
        if compiled > 0.0:
            flags |= FLAG_COMPILE
            self._rec.measure("@compile", compiled)
        if self._flops is not None and self._flops.counting and self._flops.end(step):
            flags |= FLAG_PROFILED  # counting took a moment of this step (before the window moves on)
        if self._windows is not None and self._windows.on_step_end(step):
            flags |= FLAG_PROFILED
        if step == 1 and self._recorder is not None:
            backend = runmeta.distributed_backend()  # now: the script may destroy its group before exit
            if backend:
                self._recorder.writer.meta(distributed_backend=backend)
                self._start_clock_sync()
                self._agree_run_id()
        if self._comm is not None and self._comm.models:
            seconds = self._comm.take(time.perf_counter())
            if seconds is not None:
                self._rec.measure("@comm", seconds)
        return flags

    def _post_step(self, step: int, shape: Any) -> None:
        """As ``step`` opens: ranges while a window records; count its FLOPs if due (outside windows)."""
        ranges = self._rec.ranges
        if ranges is not None:
            ranges.set_profiler(self._windows is not None and self._windows.profiled(step))
        flops = self._flops
        if flops is not None and flops.want(step, shape):
            if self._windows is None or self._windows.idle_through(step):
                flops.begin(step, shape)  # never inside a profiler window: its trace would hold the count

    def _agree_run_id(self) -> None:
        """The job's run id from rank 0, through the process group's store (hooks/track/jobid.py)."""
        torch = sys.modules.get("torch")
        if torch is None or self.id is None:
            return
        try:
            rank = int(torch.distributed.get_rank())
        except Exception:
            return
        from gpulens.hooks.track.jobid import agree

        if rank == 0:
            self._on_job_run_id(self.id)
        self._id_thread = agree(torch, rank, self.id, self._id_settled and rank != 0, self._on_job_run_id)

    def _start_clock_sync(self) -> None:
        """Measure this node's clock against rank 0's through the job's store (hooks/track/clocksync.py)."""
        torch = sys.modules.get("torch")
        if torch is None or self._child is not None or self._clock_stop is not None:
            return
        from gpulens.hooks.track.clocksync import start

        ranks = runmeta.rank_env()
        self._clock_stop = threading.Event()
        self._clock_thread = start(torch, self._rank, ranks["local_rank"], ranks["node_rank"], ranks["world_size"],
                                   self._on_clock, self._clock_stop, nodes=runmeta.node_count())

    def _on_clock(self, measured: dict[str, Any]) -> None:
        """The clock thread's result: written at once, and kept, because in a short job it often arrives
        while the run is closing (after ``_closed`` is set, before the database closes)."""
        self._clock_measured = measured
        self.set_meta(clock=measured)

    def _maybe_attach_cuda(self) -> None:
        """Time the GPU side of steps once the training code has initialised CUDA (asked once a second)."""
        self._cuda_checked = time.perf_counter()
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return
        from gpulens.hooks.track.cuda import CudaStepTimer

        self._rec.gpu = CudaStepTimer(torch, self._emit, interval=self.options.cuda_timing_interval)
        if self._recorder is not None:
            self._recorder.writer.meta(cuda_device=torch.cuda.current_device(), **runmeta.torch_meta())

    def _safe(self, fn: Any, *args: Any) -> bool:
        """Call a recording hook; a failure stops recording, never the training loop."""
        try:
            fn(*args)
            return True
        except Exception as exc:
            self._hook_failed(exc)
            return False

    def _hook_failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures == 1:
            log.warning("gpulens: step recording failed (%s: %s); recording of steps stops, training goes on",
                        type(exc).__name__, exc)
            self._recording = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if self._nesting > 0:
            self._nesting -= 1
            return False
        if exc_type is None:
            self.close("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted", "KeyboardInterrupt")
        elif issubclass(exc_type, SystemExit) and exc.code in (0, None):
            self.close("finished")
        else:
            self.close("crashed", f"{exc_type.__name__}: {exc}")
        return False

    def close(self, status: str = "finished", error: str | None = None) -> None:
        """Stop recording and write the final status; safe to call twice.

        In this order: the hooks stop (the last automatic step ends first), the helper threads get their last
        moment, the parts attached to the run close, the database gets its final status and metadata, the store
        its last round, and the run says how it ended."""
        global _active
        if self._nesting > 0:
            self._nesting -= 1
            return
        if self._closed:
            return
        self._closed = True
        self._stop_hooks()
        self._join_helpers()
        with _active_lock:
            if _active is self:
                _active = None
        self._lifecycle.uninstall()
        recorder = self._recorder
        if recorder is None:
            return
        final_meta, children = self._final_meta()
        self._close_parts()
        try:
            recorder.close(status, error, steps=self._rec.step_index, **runmeta.torch_meta(), **final_meta)
        except Exception as exc:
            log.warning("gpulens: closing run %s failed: %s", self.id, exc)
            return
        if self._publisher is not None:  # the final status and the last rows, to the store too
            self._publisher.close()
        if children and self.path is not None:  # the files named as what they hold: rank-<torch rank>.db
            try:
                from gpulens.profiler.store.members import tidy

                tidy(self.path)
            except OSError as exc:
                log.debug("gpulens: run files not renamed: %s", exc)
        if not self.quiet and self._child is None:  # the parent speaks for the run
            self._say_how_it_ended(status, recorder, children)

    def _stop_hooks(self) -> None:
        """Nothing of the training loop is timed after this."""
        if self._flops is not None:  # a step cut short has an incomplete count, and the last step may end at
            self._flops.abandon()  # interpreter exit: no meta copy runs then, and none starts
        if self._auto is not None:
            self._auto.finish()  # while recording is on: the last iteration's update ends its step
        if self._loader_hook:
            from gpulens.hooks.track import loader_workers

            self._loader_hook = False
            loader_workers.uninstall()
        self._recording = False
        self._model = None
        if self._comm is not None:
            self._comm.close()

    def _join_helpers(self) -> None:
        """The clock pings and the job's run id: a short job can end before they land."""
        if self._clock_thread is not None:
            # a pinging rank gives them a moment to land in its metadata, and rank 0 answers the peers that
            # asked before it lets them go
            if self._rank == 0 and self._clock_stop is not None:
                self._clock_stop.set()
            from gpulens.hooks.track.clocksync import CLOSE_WAIT_S

            self._clock_thread.join(timeout=CLOSE_WAIT_S)
            if self._clock_measured is not None and self._recorder is not None:
                self._recorder.writer.meta(clock=self._clock_measured)
        if self._id_thread is not None:  # rank 0's run id may not have reached this rank yet
            from gpulens.hooks.track.clocksync import CLOSE_WAIT_S

            self._id_thread.join(timeout=CLOSE_WAIT_S)

    def _final_meta(self) -> tuple[dict[str, Any], dict[int, int]]:
        """What the run's metadata says at the end (how steps were found, the backend), and the child ranks
        that trained when this process did not."""
        meta: dict[str, Any] = {}
        children: dict[int, int] = {}
        self._rec.close_waits()
        if self._rec.waits.waits:
            meta["data_wait_cpu"] = self._rec.waits.as_meta()
        if self._auto is not None:
            meta["auto"] = self._auto.describe()
            if not self._auto.updates and self._child is None:
                children = run_end.child_ranks(self.path)
                if children:
                    meta["auto"]["children"] = sorted(children)
                    meta["role"] = "node"  # its node's sampler: the ranks are its children
                elif not self.quiet:
                    print("gpulens: no training step found (no optimizer.step, GradScaler.step or backward in this "
                          "process or a child of it): recorded device and host samples only", file=sys.stderr)
        elif self._auto_wanted:
            meta["auto"] = {"mode": "time-only", "boundary": None,
                            "reason": "torch was never imported" if "torch" not in sys.modules
                            else "steps were marked by the training code"}
        try:
            backend = runmeta.distributed_backend()
            if backend:
                meta["distributed_backend"] = backend
        except Exception as exc:
            log.debug("gpulens: no distributed backend read: %s", exc)
        return meta, children

    def _close_parts(self) -> None:
        """The exporter, a what-if, the profiler windows and the GPU timer: each closes on its own."""
        if self._capture is not None:  # first: no window is asked for while the windows close
            self._capture.closed = True
        if self._exporter is not None:
            self._exporter.close()
        if self._whatif is not None:
            self._safe(self._whatif.close, self._rec.step_index)
        if self._forward_hooks is not None:
            self._safe(self._forward_hooks.remove)
        if self._optimizer_hook is not None:
            self._safe(self._optimizer_hook.remove)
        try:
            if self._windows is not None:
                self._windows.close()
        except Exception as exc:
            log.warning("gpulens: could not finish profiling: %s", exc)
        if self._watch_thread is not None:  # its last tick answers what the windows' close settled
            self._watcher.closing = True
            self._safe(self._watch_thread.stop)
        try:
            gpu = self._rec.gpu
            if gpu is not None:
                gpu.flush()
        except Exception as exc:
            log.warning("gpulens: could not resolve the last GPU timings: %s", exc)

    def _say_how_it_ended(self, status: str, recorder: Recorder, children: dict[int, int]) -> None:
        if children:
            steps = (f"training ran in {len(children)} child process(es), recorded as rank(s) "
                     f"{', '.join(str(r) for r in sorted(children))} ({sum(children.values())} steps)")
        else:
            steps = f"{self._rec.step_index} steps"
            recreated = recorder.writer.recreated
            if recreated:  # say what the database holds, not what passed through
                when = time.strftime("%H:%M:%S", time.localtime(recreated[-1][0]))
                steps += (f", but the run's database was deleted during the run: it holds what came after "
                          f"{when} ({sum(n for _, n in recreated):,} rows before were deleted with it)")
        from gpulens.fmt import shown_path

        print(f"gpulens: run {self.id} {status}: {steps} -> gpulens report {shown_path(self.path)}",
              file=sys.stderr)
        if self.options.advise and self._rank == 0:
            run_end.print_top_advice(self.path)

    def orphan(self) -> None:
        """In a forked child: this run belongs to the parent; stop feeding it and never close it here.

        The child has a copy of the run without its threads, and the database
        connection must not be used across fork; the parent goes on writing.
        """
        self._recording = False
        self._closed = True
        self._lifecycle.uninstall()  # its SIGTERM handler and atexit close the parent's run: not here
        auto, self._auto = self._auto, None
        if auto is not None:
            auto.uninstall()  # the wrappers and module hooks of this process' copy of torch
        flops = self._flops
        if flops is not None and flops.counting:  # forked in the middle of a FLOP-counted step
            flops.abandon()

    def _close_at_exit(self, status: str, error: str | None) -> None:
        self._nesting = 0  # the interpreter is leaving: nested track() blocks end with it
        self.close(status, error)

    # ------------------------------------------------------------------ for gpulens' own hooks
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def recording(self) -> bool:
        return self._recording

    @property
    def step_recorder(self) -> StepRecorder:
        """The step and phase accounting (for :class:`~gpulens.hooks.track.auto.AutoSteps`' hot path)."""
        return self._rec

    def set_meta(self, **values: Any) -> None:
        """Add to this rank's metadata (a probe result, how steps were found, ...)."""
        if "batch_probe" in values:
            self._meta_seen["batch_probe"] = values["batch_probe"]
        if self._recorder is not None and not self._closed:
            self._recorder.writer.meta(**values)

    def watch_script_exit(self) -> None:
        """``gpulens run``: the script's uncaught exception, Ctrl-C or ``sys.exit(n)`` decides the status."""
        self._lifecycle.watch_script_exit()

    def close_at_exit(self) -> None:
        """Close as the interpreter would at exit (multiprocessing children leave through ``os._exit``)."""
        self._lifecycle.at_exit()

    def let_framework_mark_steps(self, steps_by: str) -> None:
        """A framework callback says where steps end (``lightning``, ``hf``).

        Automatic boundaries stand down; for the HF Trainer, which has no
        hooks around forward and backward, gpulens run's hooks keep timing
        the phases inside its steps.
        """
        auto = self._auto
        if auto is not None:
            if steps_by == "lightning":
                self._stand_down_auto("the Lightning callback")
            else:
                auto.phases_only()
        elif steps_by == "hf" and "torch" in sys.modules:
            self._auto_wanted = True
            self.attach_torch(sys.modules["torch"])
            if self._auto is not None:
                self._auto.phases_only()
        self.set_meta(steps_by=steps_by)

    @property
    def steps(self) -> int:
        return self._rec.step_index if self._recorder is not None else 0

    def _repr_html_(self) -> str:
        """Jupyter shows the run so far inline (cards, top suggestions, a step-time sparkline)."""
        if self.path is None:
            return "<div class='gpulens-run'><b>gpulens</b>: this run is not recording</div>"
        if self._recorder is not None and not self._closed:
            self._recorder.writer.sync(timeout=2.0)  # the latest steps, not those of the last flush
        return run_end.html_view(self)


class _TimedLoader:
    def __init__(self, run: TrackedRun, iterable: Iterable[Any]) -> None:
        self._run = run
        self._iterable = iterable

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterable, name)

    def __iter__(self) -> Iterator[Any]:
        run = self._run
        rec = run._rec
        it = iter(self._iterable)
        first = True
        while True:
            active = run._recording and run._safe(rec.loader_next, first)
            try:
                batch = (run.fetch_batch(it.__next__, it, self._iterable) if active and run.has_what_if
                         else next(it))
            except StopIteration:
                if active:
                    run._safe(rec.loader_end)
                return
            except BaseException:
                if active:
                    run._safe(rec.exit)
                raise
            if active:
                run._safe(rec.loader_got, batch)
            first = False
            yield batch


def track(name: str | None = None, **kwargs: Any) -> TrackedRun:
    """Start recording a run; use as a context manager (or call ``close()``).

    Keyword arguments: ``runs_dir`` (default ``$GPULENS_DIR`` or
    ./gpulens-runs), ``run_id``, ``batch_size``, ``config`` (a dict stored
    with the run), ``sampling`` (:class:`SamplingConfig`), ``sync_phases``
    (synchronise CUDA at phase boundaries for exact host phase times; off by
    default because it slows training), ``warmup_steps`` (left out of
    throughput figures, default 2), ``quiet``; profiling: ``profile``
    (a :class:`ProfileConfig`, or False), ``profile_every`` (default 500
    steps, 0 turns windows off), ``profile_steps`` (active steps per window,
    default 3); FLOPs: ``count_flops`` (default True: one step is counted
    with torch's FLOP formulas -- ``flops_step``, by default the first
    profiler window's warm-up step, or step 5 without windows), or give ``flops_per_step`` /
    ``flops_per_sample`` / ``flops_per_token`` (e.g. 6N for a transformer)
    with ``flops_dtype``; advisor inputs: ``model`` and ``optimizer`` (parameter
    count, wrapper, optimizer type), ``target_batch`` (global batch you want);
    ``advise=False`` skips the top-3 suggestions printed when the run ends;
    ``store`` (default ``$GPULENS_STORE``): a run-store URL (``s3://``,
    ``gs://``, ``file://``) this rank also publishes what it records to,
    from a process of its own (see :mod:`gpulens.profiler.store.publisher`).

    A ``track()`` inside an active one returns the active run: nested blocks
    share it and only the outermost closes it.
    """
    global _active
    with _active_lock:
        if _active is not None and not _active._closed:
            _active._nesting += 1
            log.info("gpulens: track(%r) inside an active run: reusing run %s", name, _active.id)
            return _active
    run = TrackedRun(name, **kwargs)
    if not run._closed:
        with _active_lock:
            _active = run
    return run


def active_run() -> TrackedRun | None:
    """The run this process is recording now, if any (a probe stores its result there)."""
    with _active_lock:
        return _active if _active is not None and not _active._closed else None
