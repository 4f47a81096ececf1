"""A run on disk: its schema, the writer (batched, off the training thread, crash-safe), the reader API,
where runs live (runs root, run ids), the metric catalog, the clock, and importing foreign traces as runs.

Everything that reads a run goes through :func:`gpulens.profiler.open_run` (the reader).
"""
