"""The track API: :func:`gpulens.track` and the ``TrackedRun`` it returns (``tracking``), with the parts a run
composes: step and phase accounting (``steps``), CUDA timing (``cuda``), profiler windows (``profiling``),
automatic steps (``auto``), FLOPs (``flops``), DDP timing (``comm``), measured what-ifs (``whatif``), how a run
ends (``lifecycle``, ``run_end``).  Imported lazily: importing this package imports none of them (nor torch).
"""
