"""Recording one rank: the NVML / GPM device sampler, the psutil host sampler, the process tree, the
sampler threads, and the :class:`~gpulens.profiler.record.recorder.Recorder` that owns them and a writer.

Data flows one way: samplers -> writer (:mod:`gpulens.profiler.store`); nothing here reads a run.
"""
