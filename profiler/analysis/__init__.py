"""What a run means: the summary (``gpulens report --json``), the kernel view of the profiler windows
(``trace/``: parsing and one analyzer per module), peaks and MFU, the batch-size memory model, and the
advisor (``advisor/``: measurements, one rule module per family).  Pure functions of what the reader
returns; :class:`~gpulens.profiler.analysis.run_analysis.RunAnalysis` is the one front door.
"""
