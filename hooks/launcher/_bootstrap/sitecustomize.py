"""gpulens run: start recording in every Python process the wrapped command starts.

``gpulens run`` puts this directory first on PYTHONPATH, so Python imports
this file at start-up, before the user's script.  It hands over to
``gpulens.hooks.launcher.autorun`` (which decides whether this process records), then
runs the sitecustomize it shadows, if there is one, as Python would have.
"""


def _gpulens_autorun() -> None:
    import os
    import sys

    if os.environ.get("GPULENS_AUTORUN") is None:
        return
    try:
        from gpulens.hooks.launcher import autorun
    except Exception as exc:  # another interpreter without gpulens: say so once, run the script anyway
        if not os.environ.get("GPULENS_AUTORUN_WARNED"):
            os.environ["GPULENS_AUTORUN_WARNED"] = "1"
            print(f"gpulens: not recording: gpulens is not importable by {sys.executable} ({exc})",
                  file=sys.stderr)
        return
    autorun.start()


def _chain_next_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_gpulens_autorun()
_chain_next_sitecustomize()
