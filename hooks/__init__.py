"""Attaching to training, in three parts that import in one direction.

``track`` is the API a training script calls (:func:`gpulens.track`: steps, phases, profiler windows, the
run's lifetime); ``launcher`` is ``gpulens run``, which records an unmodified command through that API; the
framework callbacks (``hooks/integrations``, installed as ``gpulens.integrations``) call it too.
``run_env`` (the variables ``gpulens run`` sets) sits beside them because the launcher sets them and the API
reads them.
"""
