"""``gpulens run``: recording an unmodified command.

``launch`` starts the command with ``_bootstrap/`` first on PYTHONPATH; its
``sitecustomize`` hands every Python process to ``autorun``, which records the
ones that train (through :func:`gpulens.track` and automatic step detection,
:mod:`gpulens.hooks.track.auto`); ``children`` follows the processes a training
process starts.  Below them, importing none of them: ``started`` (this
process' run), ``torch_import`` (a callback when ``import torch`` finishes);
the variables it sets and how a process reads them are
:mod:`gpulens.hooks.run_env`, which the track API reads too.
"""
