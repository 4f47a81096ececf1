"""Data out: ``gpulens export`` (parquet, CSV) and ``gpulens.load(run)`` round-trip against the reader API,
on a real CPU training run recorded with the fake NVML (GPU series) and on a recorded H100 sample run."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
torch = pytest.importorskip("torch")

import gpulens  # noqa: E402
from gpulens.cli import main  # noqa: E402
from gpulens.profiler import RunAnalysis, open_run  # noqa: E402

from fakes.fake_pynvml import FakeNvml  # noqa: E402
from helpers import fast_sampling  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gpulens.track("export", runs_dir=root, quiet=True, nvml=FakeNvml(gpus=1), sampling=fast_sampling(),
                       profile=gpulens.ProfileConfig(first=5, every=100, warmup=1, active=2), advise=False) as run:
        for x in run.loader([torch.randn(16, 32) for _ in range(40)]):
            with run.phase("forward"):
                loss = model(x).pow(2).mean()
            with run.phase("backward"):
                loss.backward()
            with run.phase("optimizer"):
                opt.step()
                opt.zero_grad()
            run.step(loss=loss)
    return run.path


def _check_steps(frame, run_path: Path) -> None:
    with open_run(run_path) as run:
        for rank in run.ranks:
            steps = run.steps(rank)
            mine = frame[frame["rank"] == rank]
            assert len(mine) == len(steps)
            for col in ("step", "t_start", "t_end", "data_wait", "forward", "backward", "optimizer", "other",
                        "samples", "loss", "flags"):
                np.testing.assert_array_equal(mine[col].to_numpy(dtype=np.float64),
                                              np.asarray(steps.columns[col], dtype=np.float64), err_msg=col)
            np.testing.assert_allclose(mine["duration_s"].to_numpy(), steps.duration)
            assert (mine["warmup"] == ((steps.flags & 1) != 0)).all()


def _check_series(frame, run_path: Path) -> None:
    with open_run(run_path) as run:
        infos = [i for i in run.series_list() if i.count]
        assert infos
        assert len(frame) == sum(len(run.series(i.metric, i.gpu, rank=i.rank)) for i in infos)
        for info in infos:
            s = run.series(info.metric, info.gpu, rank=info.rank)
            mine = frame[(frame["metric"] == info.metric) & (frame["gpu"] == info.gpu) & (frame["rank"] == info.rank)]
            np.testing.assert_array_equal(mine["t"].to_numpy(), s.t, err_msg=info.metric)
            np.testing.assert_array_equal(mine["value"].to_numpy(), s.v, err_msg=info.metric)
            assert set(mine["unit"].astype(str)) == {info.unit}


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_round_trips_against_the_reader(trained: Path, tmp_path: Path, fmt: str, capsys) -> None:
    out = tmp_path / "out"
    assert main(["export", str(trained), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    files = {t: out / f"{t}.{fmt}" for t in ("steps", "series", "kernels", "suggestions")}
    assert all(p.is_file() for p in files.values()) and "rows (series)" in printed
    _check_steps(read(files["steps"]), trained)
    _check_series(read(files["series"]), trained)
    with open_run(trained) as run:
        analysis = RunAnalysis(run)
        report = analysis.report().as_dict()
    kernels = read(files["kernels"])
    assert list(kernels["name"]) == [k["name"] for k in report["kernels"]]  # a CPU run: none, with the columns
    assert list(kernels.columns) == ["name", "calls", "total_us", "mean_us", "max_us", "share", "category",
                                     "tensor_core"]
    suggestions = read(files["suggestions"])
    assert list(suggestions["id"]) == [s["id"] for s in report["suggestions"]["suggestions"]]
    assert not list(out.glob("*.tmp"))  # files appear whole


def test_load_gives_the_same_tables(trained: Path, tmp_path: Path) -> None:
    run = gpulens.load(trained)
    _check_steps(run.steps, trained)
    _check_series(run.series, trained)
    assert run.report["run"]["id"] == run.id
    assert list(run.kernels.columns)[:3] == ["name", "calls", "total_us"]
    assert gpulens.load(str(trained)).path == run.path and gpulens.load(run).path == run.path


def test_h100_sample_run_exports_every_gpu_series(tmp_path: Path) -> None:
    out = tmp_path / "h100"
    assert main(["export", str(SAMPLES / "h100-gpt-small-batch"), "--what", "series,kernels", "--out",
                 str(out)]) == 0
    with open_run(SAMPLES / "h100-gpt-small-batch") as run:
        report = RunAnalysis(run, persist=False).report(suggestions=False).as_dict()
    kernels = pd.read_parquet(out / "kernels.parquet")
    assert len(kernels) == len(report["kernels"]) > 10
    np.testing.assert_allclose(kernels["total_us"], [k["total_us"] for k in report["kernels"]])
    frame = pd.read_parquet(out / "series.parquet")
    assert {"gpu.power", "gpu.energy", "gpm.sm_active", "host.cpu"} <= set(frame["metric"].astype(str))
    _check_series(frame, SAMPLES / "h100-gpt-small-batch")


def test_bad_export_input_is_one_line(trained: Path, tmp_path: Path, capsys) -> None:
    for args in (["export", str(tmp_path / "missing")],
                 ["export", str(trained), "--what", "steps,frames", "--out", str(tmp_path / "x")],
                 ["export", str(trained), "--format", "xlsx"]):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's own one-line error
            code = exc.code
        assert code == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err
    assert not (tmp_path / "x").exists()


def test_without_pandas_the_error_says_what_to_install(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    assert main(["export", str(trained), "--out", str(tmp_path / "y")]) == 2
    assert "pip install 'gpulens[data]'" in capsys.readouterr().err
    with pytest.raises(gpulens.profiler.errors.GpulensError, match="gpulens\\[data\\]"):
        _ = gpulens.load(trained).steps
