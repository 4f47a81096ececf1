"""The Dash dashboard: ``create_app(runs_root)`` (app.py), one module per page (pages/), figures as pure
functions (figures.py, panels.py), the security layer, the waitress server.  Runs are read through
:func:`gpulens.profiler.open_run` and understood through :class:`gpulens.profiler.RunAnalysis` (data.py)."""
