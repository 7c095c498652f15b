"""`zoo runs` and the table a sweep prints at its end: what differs between runs, their final metrics, and the
mean +- std over seeds per setting."""
from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

import pytest
import yaml

from launch import cli, summary
from tests.conftest import zoo_subprocess


def fake_run(root: Path, run_id: str, seed: int, layers: int, recall: float | None, experiment: str = "lightgcn"):
    run = root / experiment / run_id
    (run / "checkpoints").mkdir(parents=True)
    config = {"experiment_name": experiment, "run_id": run_id, "runs_root": str(root), "seed": seed,
              "data": {"seed": seed, "batch_size": 64},
              "model": {"num_layers": layers, "dims": [64, 64]},
              "logger": {"save_dir": f"{root}/{experiment}/{run_id}"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "meta.json").write_text(json.dumps({"created": f"2026-12-04T10:00:0{seed}"}))
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")  # only its presence is read
    if recall is not None:
        (run / "final_metrics.json").write_text(json.dumps({"test/recall@20": recall, "val/recall@20": 0.5,
                                                            "epoch": 3, "global_step": 30}))
    return run


@pytest.fixture
def sweep_root(tmp_path) -> Path:
    root = tmp_path / "runs"
    fake_run(root, "s-0", 0, 1, 0.30)
    fake_run(root, "s-1", 1, 1, 0.34)
    fake_run(root, "s-2", 2, 1, 0.35)
    fake_run(root, "s-3", 0, 2, 0.40)
    fake_run(root, "s-4", 1, 2, None)  # unfinished: counted, not averaged
    fake_run(root, "other-0", 0, 3, 0.9)
    return root


def test_varying_keys_ignore_bookkeeping_and_run_id_paths(sweep_root):
    records = summary.collect(sweep_root, "lightgcn", sweep="s")
    assert [r.run_id for r in records] == ["s-0", "s-3", "s-1", "s-4", "s-2"]  # by creation time
    # logger.save_dir differs only by the run id, run_id/runs_root are bookkeeping, batch_size/dims never differ
    assert summary.varying_keys(records) == ["data.seed", "model.num_layers", "seed"]
    assert summary.default_metrics(records) == ["test/recall@20"]
    # how a run was watched is not a setting (launcher.wait showed as a column of a SLURM sweep)
    for record, value in zip(records, (True, False, True, False, True)):
        record.config.update({"launcher.wait": value, "progress_bar": not value})
    assert summary.varying_keys(records) == ["data.seed", "model.num_layers", "seed"]


def test_mean_and_sample_std_over_seeds_per_setting(sweep_root, tmp_path):
    table = summary.build(summary.collect(sweep_root, "lightgcn", sweep="s"), over="seed")
    # data.seed follows seed in every run (an interpolation): not a setting of its own
    assert table.columns == ["experiment", "model.num_layers", "runs", "test/recall@20"]
    by_layers = {row["model.num_layers"]: row for row in table.numbers}
    one, two = by_layers[1], by_layers[2]
    assert (one["finished"], one["runs"], two["finished"], two["runs"]) == (3, 3, 1, 2)
    assert one["test/recall@20 mean"] == pytest.approx(statistics.fmean([0.30, 0.34, 0.35]))
    assert one["test/recall@20 std"] == pytest.approx(statistics.stdev([0.30, 0.34, 0.35]))
    assert two["test/recall@20 mean"] == pytest.approx(0.40) and two["test/recall@20 n"] == 1
    rows = {row[1]: row for row in table.rows}
    assert rows["1"][2:] == ["3/3", "0.33 ± 0.026"] and rows["2"][2:] == ["1/2", "0.4"]
    out = tmp_path / "table.csv"
    summary.write_csv(table, out)
    written = list(csv.DictReader(out.open()))
    assert len(written) == 2 and float(written[0]["test/recall@20 mean"]) == pytest.approx(0.33)


def test_plot_of_the_metrics_against_the_setting(sweep_root, tmp_path, capsys):
    out = tmp_path / "plots" / "sweep.png"
    assert cli.main(["runs", "lightgcn", "--root", str(sweep_root), "--sweep", "s", "--over", "seed",
                     "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(out.parent.glob("*.tmp*"))
    capsys.readouterr()
    assert cli.main(["runs", "--root", str(sweep_root), "--plot", str(out)]) == 2
    assert "--plot needs --over" in capsys.readouterr().err
    only_seeds = summary.build([r for r in summary.collect(sweep_root, sweep="s") if r.config["model.num_layers"] == 1],
                               over="seed")
    with pytest.raises(summary.UserError, match="differs"):
        summary.plot(only_seeds, out)
    assert summary.can_plot(summary.build(summary.collect(sweep_root, sweep="s"), over="seed"))
    unfinished = summary.collect(sweep_root, sweep="s")
    for r in unfinished:  # a sweep whose runs all failed: settings to group by, but no metric to plot
        r.metrics = None
    table = summary.build(unfinished, over="seed")
    assert table.settings == ["model.num_layers"] and not table.metrics and not summary.can_plot(table)
    assert not summary.can_plot(summary.build(summary.collect(sweep_root, sweep="s")))  # per-run table


def test_zoo_runs_cli(sweep_root, tmp_path, capsys):
    out = tmp_path / "per_run.csv"
    assert cli.main(["runs", "lightgcn", "--root", str(sweep_root), "--metric", "val/recall@20",
                     "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 runs" in printed and "other-0" in printed
    assert "stopped" in printed  # s-4: a last.ckpt but no final metrics
    rows = list(csv.DictReader(out.open()))
    assert [r["status"] for r in rows].count("done") == 5
    for argv, message in ((["runs", "nope", "--root", str(sweep_root)], "experiments there: lightgcn"),
                          (["runs", "--root", str(sweep_root), "--over", "sed"], "did you mean 'seed'"),
                          (["runs", "--root", str(tmp_path / "absent")], "no runs root")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_torn_run_is_skipped_by_zoo_runs_and_a_one_line_error_for_status_and_eval(sweep_root, capsys):
    """A run whose config.yaml or final_metrics.json is torn (a full disk, a killed copy): `zoo runs` lists the
    others and says which it skipped; `zoo status` / `zoo eval` of that run are one-line errors (exit 2)."""
    torn = fake_run(sweep_root, "torn", 3, 1, 0.2)
    (torn / "config.yaml").write_text("{{{")
    half = fake_run(sweep_root, "half", 4, 1, 0.2)
    (half / "final_metrics.json").write_text('{"test/recall@20": 0.')
    assert cli.main(["runs", "lightgcn", "--root", str(sweep_root)]) == 0
    captured = capsys.readouterr()
    assert "6 runs" in captured.out and "other-0" in captured.out
    assert f"skipping {torn}: config.yaml is unreadable" in captured.err
    assert f"skipping {half}: final_metrics.json is unreadable" in captured.err
    for argv in (["status", str(torn)], ["eval", f"ckpt={torn / 'checkpoints' / 'last.ckpt'}"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "config.yaml is not a readable config" in err and len(err.strip().splitlines()) == 1, err


def test_a_local_sweep_ends_with_the_table_over_seeds(runs_root):
    proc = zoo_subprocess("train", "-m", "experiment=lightgcn", "data=synthetic_graph", "debug=fast", "logger=none",
                          "seed=0,1", "model.num_layers=0,1", f"runs_root={runs_root}", check=True, timeout=300)
    assert "mean ± std over seed" in proc.stdout
    sweep_files = sorted(p.suffix for p in (runs_root / "sweeps").iterdir())
    assert sweep_files == [".csv", ".png"]  # the table's numbers and the plot against model.num_layers
    summary_lines = [line for line in proc.stdout.splitlines() if "lightgcn" in line and "2/2" in line]
    assert len(summary_lines) == 2, proc.stdout[-3000:]
    finals = [json.loads(p.read_text())["test/recall@20"] for p in sorted(runs_root.glob("lightgcn/*-[02]/final_metrics.json"))]
    assert len(finals) == 2  # runs 0 and 2: num_layers 0 at seeds 0 and 1
    expected = f"{statistics.fmean(finals):.4g} ± {statistics.stdev(finals):.2g}"
    assert any(expected in line for line in summary_lines), (expected, summary_lines)


def test_unfinished_slurm_runs_show_their_job_state(tmp_path, monkeypatch, capsys):
    """A run without final metrics shows the state sacct reports for its latest job (one sacct call for all)."""
    root = tmp_path / "runs"
    for run_id, jobs in (("a-0", "70\n77"), ("a-1", "78_1"), ("a-2", "79")):
        run = fake_run(root, run_id, 0, int(run_id[-1]), None)
        (run / "slurm").mkdir()
        (run / "slurm" / "jobs.txt").write_text(jobs + "\n")
    fake_run(root, "a-3", 1, 3, 0.5)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    (bin_dir / "sacct").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {calls}\n"
                                   "printf '77|RUNNING\\n78_1|CANCELLED by 0\\n79|COMPLETED\\n'\n")
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    status = {r.run_id: r.status for r in summary.collect(root)}
    assert status == {"a-0": "running (job 77)", "a-1": "cancelled (job 78_1)", "a-2": "stopped", "a-3": "done"}
    assert calls.read_text().count("\n") == 1 and "77,78_1,79" in calls.read_text()


def test_descriptive_keys_and_every_test_metric(tmp_path):
    """Across experiments the claim texts and paper blocks differ but are no settings (they made a table of 116
    columns); every test metric is shown (the first 6 alphabetically were, which dropped claim metrics such as
    PROSE's test/valid_frac); a metric no run has, or a plot file matplotlib cannot write, is a one-line error."""
    root = tmp_path / "runs"
    for i, experiment in enumerate(("prose", "medida")):
        run = fake_run(root, f"r-{i}", 0, 1, 0.3, experiment=experiment)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config |= {"claims": {"c": {"text": f"claim of {experiment}"}}, "paper": {"title": experiment}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        metrics = {f"test/m{k}": float(k) for k in range(8)} | {"test/valid_frac": 1.0}
        (run / "final_metrics.json").write_text(json.dumps(metrics))
    records = summary.collect(root)
    assert not [k for k in summary.varying_keys(records) if k.startswith(("claims.", "paper."))]
    assert "test/valid_frac" in summary.default_metrics(records) and len(summary.default_metrics(records)) == 9
    with pytest.raises(cli.UserError, match="--metric test/nosuch: no run has it"):
        summary.build(records, ["test/nosuch"])
    code = cli.main(["runs", "--root", str(root), "--over", "seed", "--plot", str(tmp_path / "x.txt")])
    assert code == 2


def test_a_sweep_id_is_matched_whole(sweep_root):
    """`--sweep s` lists the runs `s-<i>` of that sweep only: a run of another sweep whose id starts with it (here
    sweep `s-9`'s run `s-9-0`) was listed too (found by the CLI audit, stop 32)."""
    fake_run(sweep_root, "s-9-0", 0, 1, 0.5)
    assert sorted(r.run_id for r in summary.collect(sweep_root, "lightgcn", sweep="s")) == [f"s-{i}" for i in range(5)]
    assert [r.run_id for r in summary.collect(sweep_root, "lightgcn", sweep="s-9")] == ["s-9-0"]


def test_a_variant_is_named_as_in_zoo_train(tmp_path, capsys):
    """`zoo runs insr/advection1d` finds the runs of `zoo train experiment=insr/advection1d`, which live under
    runs/insr-advection1d/ (it was an error naming only the dashed form; README audit, stop 33)."""
    root = tmp_path / "runs"
    fake_run(root, "v1", 0, 1, 0.25, experiment="insr-advection1d")
    for name in ("insr/advection1d", "insr-advection1d"):
        assert cli.main(["runs", name, "--root", str(root)]) == 0
        assert "v1" in capsys.readouterr().out


def test_status_shows_where_each_jobs_log_is(tmp_path, monkeypatch, capsys):
    """A sweep's job array keeps its logs in the sweep's `slurm/` folder, not in the run's: `zoo status` names the log
    of each job, wherever it is."""
    root = tmp_path / "runs"
    single, element = fake_run(root, "r", 0, 1, 0.3), fake_run(root, "s-1", 1, 1, 0.3)
    for run, jobs in ((single, "70\n77"), (element, "78_1")):
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "trainer": {"max_epochs": 3}, "checkpoint": {}}))
        (run / "slurm").mkdir()
        (run / "slurm" / "jobs.txt").write_text(jobs + "\n")
    (single / "slurm" / "77_0_log.out").write_text("")
    sweep_logs = root / "lightgcn" / "sweep-s" / "slurm"
    sweep_logs.mkdir(parents=True)
    (sweep_logs / "78_1_0_log.out").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\nprintf '70|PREEMPTED\\n77|COMPLETED\\n78_1|COMPLETED\\n'\n")
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert cli.main(["status", "r", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "slurm job 70: PREEMPTED\n" in out  # its log is gone: no path
    assert f"slurm job 77: COMPLETED  logs {single / 'slurm' / '77_0_log.out'}" in out
    assert cli.main(["status", "s-1", "--root", str(root)]) == 0
    assert f"slurm job 78_1: COMPLETED  logs {sweep_logs / '78_1_0_log.out'}" in capsys.readouterr().out


def test_across_experiments_only_what_differs_within_one_is_a_column(tmp_path):
    """Runs of several experiments: their models and data differ by construction (the experiment column says which),
    and their loggers (W&B group, tags) only watch them; a table of two experiments had ~50 such columns (README
    audit, stop 38). What differs between runs of one experiment stays."""
    root = tmp_path / "runs"
    for i, (experiment, layers) in enumerate((("lightgcn", 1), ("lightgcn", 2), ("ultragcn", 1))):
        run = fake_run(root, f"r-{i}", 0, layers, 0.3, experiment=experiment)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["data"]["batch_size"] = 64 if experiment == "lightgcn" else 512
        config["logger"]["wandb"] = {"group": f"sweep-{i}", "tags": [experiment]}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert summary.varying_keys(summary.collect(root)) == ["model.num_layers"]
    assert summary.varying_keys(summary.collect(root, "ultragcn")) == []


def test_plot_of_a_setting_that_is_sometimes_unset(tmp_path):
    """The x-axis setting holds None in some runs and text in others (e.g. a scheduler given in one sweep only):
    the plot sorts them by their text (it was a TypeError traceback comparing None with str, exit 1)."""
    root = tmp_path / "runs"
    for i, (value, seed) in enumerate(((None, 0), ("cosine", 0), (None, 1), ("cosine", 1), ([1, 2], 0))):
        run = fake_run(root, f"s-{i}", seed, 1, 0.3 + 0.01 * i)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"]["scheduler"] = value
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    table = summary.build(summary.collect(root), over="seed")
    assert table.settings == ["model.scheduler"]
    out = tmp_path / "p.png"
    summary.plot(table, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
