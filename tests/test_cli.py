"""The `zoo` command's contract: bad input is one clear line and exit status 2; good input composes."""
from __future__ import annotations

import pytest

from launch import config as zconfig
from launch.callbacks import resolve_precision
from launch.check import evaluate
from launch.errors import UserError
from tests.conftest import zoo_in_process, zoo_subprocess


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def test_unknown_experiment_names_closest():
    line = one_line_error(*zoo_in_process("train", "experiment=lightgcm")[::2])
    assert "unknown experiment 'lightgcm'" in line and "lightgcn" in line


def test_unknown_group_option():
    line = one_line_error(*zoo_in_process("train", "experiment=lightgcn", "trainer=gpus")[::2])
    assert "unknown trainer 'gpus'" in line and "gpu" in line


def test_unknown_key_names_closest():
    line = one_line_error(*zoo_in_process("train", "experiment=lightgcn", "model.num_layer=2")[::2])
    assert "unknown config key 'model.num_layer'" in line and "model.num_layers" in line


def test_malformed_override():
    line = one_line_error(*zoo_in_process("train", "experiment=lightgcn", "model.lr==")[::2])
    assert "override" in line


def test_sweep_needs_multirun_flag():
    line = one_line_error(*zoo_in_process("train", "experiment=lightgcn", "seed=1,2")[::2])
    assert "-m" in line


def test_unknown_command_and_missing_experiment():
    code, _, err = zoo_in_process("trian")
    assert code == 2 and "train" in err
    line = one_line_error(*zoo_in_process("train")[::2])
    assert "experiment=" in line


def test_slurm_resources_must_map():
    line = one_line_error(*zoo_in_process("train", "experiment=lightgcn", "launcher=slurm",
                                          "trainer.devices=auto")[::2])
    assert "trainer.devices" in line


def test_train_prints_its_config_and_help_and_open_mappings_take_new_keys(tmp_path):
    """Found by the README audit (stop 33): `zoo train ... --cfg job` (docker/README) and `zoo train --help` were
    malformed-override errors; `launcher.additional_parameters.<key>=` and `early_stopping.patience=` (README's resume
    example) were "unknown config key" (only Hydra's `+key` form worked); `progress_bar=maybe` trained. `--cfg job` prints the resolved config and
    the sbatch resources and creates nothing; a resumed run shows its saved config with the resume's changes."""
    from omegaconf import OmegaConf

    code, out, err = zoo_in_process("train", "--help")
    assert code == 0 and "--cfg job" in out, err
    root = tmp_path / "runs"
    code, out, err = zoo_in_process("train", "experiment=lightgcn", "launcher=slurm", "trainer=cpu",
                                    "launcher.additional_parameters.reservation=foo", "early_stopping.patience=7",
                                    f"runs_root={root}", "--cfg", "job")
    assert code == 0, err
    shown = OmegaConf.create(out.split("# sbatch resources")[0])
    assert shown.launcher.additional_parameters == {"reservation": "foo"} and shown.early_stopping.patience == 7
    assert "'slurm_additional_parameters': {'reservation': 'foo'}" in out and not root.exists()
    line = one_line_error(*zoo_in_process("train", "experiment=lightgcn", "early_stopping.patience=7",
                                          f"runs_root={root}")[::2])
    assert "early_stopping needs a monitor" in line and not root.exists()
    one_line_error(*zoo_in_process("train", "experiment=lightgcn", "--cfg", "all")[::2])
    line = one_line_error(*zoo_in_process("train", "experiment=lightgcn", "progress_bar=maybe",
                                          f"runs_root={root}")[::2])  # trained with a bar before
    assert "progress_bar must be auto, true or false" in line and not root.exists()

    tiny = ["experiment=lightgcn", "data=synthetic_graph", f"runs_root={root}", "run_id=shown", "logger=none",
            "progress_bar=false", "trainer.max_epochs=1"]
    assert zoo_in_process("train", *tiny)[0] == 0
    code, out, err = zoo_in_process("train", *tiny[:-1], "trainer.max_epochs=4", "--cfg=job")
    assert code == 0 and OmegaConf.create(out).trainer.max_epochs == 4, err
    assert OmegaConf.load(root / "lightgcn" / "shown" / "config.yaml").trainer.max_epochs == 1  # nothing written


def test_cli_subprocess_error_is_one_line():
    """The installed console script, not just `main()`: exit 2, no traceback."""
    proc = zoo_subprocess("train", "experiment=nope")
    one_line_error(proc.returncode, proc.stderr)


def test_sweep_expansion():
    combos = zconfig.expand_sweep(["experiment=lightgcn", "seed=1,2", "model.num_layers=0,3"])
    assert len(combos) == 4
    assert ["experiment=lightgcn", "seed=2", "model.num_layers=3"] in combos


def test_list_shows_every_experiment():
    code, out, _ = zoo_in_process("list")
    assert code == 0
    for slug in zconfig.experiments():
        assert slug in out


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_claim_expressions_are_safe():
    assert evaluate("a >= max(b, c) + 0.03", {"a": 0.34, "b": 0.27, "c": 0.25})
    assert not evaluate("a >= b + 0.012", {"a": 0.28, "b": 0.28})
    with pytest.raises(UserError):
        evaluate("__import__('os')", {})
    with pytest.raises(UserError):
        evaluate("a > zzz", {"a": 1.0})


def test_check_results_files_and_list_status(tmp_path):
    from launch.check import ClaimResult, status, write_results

    ok = ClaimResult("demo", "a", "text", "test/recall@20", {"m": 0.34, "b": 0.27}, ["m >= b + 0.03"], [True], 1.0)
    gap = ClaimResult("demo", "b", "text", "test/recall@20", {"m": 0.31, "l": 0.34}, ["m >= l"], [False], 1.0,
                      known_gap="not reproduced at CPU scale")
    bad = ClaimResult("demo", "c", "text", "test/recall@20", {"m": 0.2}, ["m >= 0.3"], [False], 1.0)
    assert (ok.verdict, gap.verdict, bad.verdict) == ("PASS", "KNOWN GAP", "FAIL")
    assert "known gap: not reproduced" in gap.report()
    write_results("demo", [ok, gap, bad], tmp_path)
    assert "| a | m=0.34, b=0.27 | m >= b + 0.03 | PASS" in (tmp_path / "demo.md").read_text()
    assert status("demo", tmp_path).startswith("1/3 pass, 1 known gap")
    assert status("other", tmp_path) == "not checked"
    write_results("demo/variant", [ok], tmp_path)  # `zoo check <slug>/<variant>` (e.g. medida/qg)
    assert status("demo/variant", tmp_path).startswith("1/1 pass")
    # of a config's 3 claims, 1 checked: the others are counted (it read "1/1 pass"); where a check reported is not
    # its setting; an unreadable results file is a status, not a traceback in `zoo list`
    write_results("demo", [ok], tmp_path, ["runs_root=/tmp/x", "progress_bar=false", "trainer.max_steps=9"])
    assert status("demo", tmp_path, 3).startswith("1/1 pass, 2 not checked")
    assert status("demo", tmp_path, 3).endswith("with trainer.max_steps=9)")
    (tmp_path / "demo.json").write_text("{not json")
    assert status("demo", tmp_path, 3) == "results unreadable (demo.json: JSONDecodeError)"


def test_flag_mistakes_are_one_line():
    for args in (("check", "prose", "--claim"), ("check", "prose", "--bogus"), ("bench", "nosuch"), ("list", "x"),
                 ("runs", "--nope")):
        code, out, err = zoo_in_process(*args)
        one_line_error(code, err)


def test_check_of_one_claim_keeps_the_other_claims_results(tmp_path):
    """`zoo check <slug> --claim c` after a full check: c's entry is replaced, the others stay (with their own time),
    in config order; a claim gone from the config is dropped; results under other overrides are not mixed in."""
    import json

    from launch.check import ClaimResult, status, write_results

    def result(name, passed, value):
        return ClaimResult("demo", name, "text", "m", {"m": value}, ["m >= 1"], [passed], 1.0)

    order = ["a", "b", "c"]
    write_results("demo", [result("a", True, 2.0), result("b", True, 3.0), result("c", False, 0.5)], tmp_path,
                  order=order)
    first = json.loads((tmp_path / "demo.json").read_text())
    write_results("demo", [result("c", True, 1.5)], tmp_path, order=order)
    data = json.loads((tmp_path / "demo.json").read_text())
    assert [c["claim"] for c in data["claims"]] == order and data["passed"]
    assert [c["measured"]["m"] for c in data["claims"]] == [2.0, 3.0, 1.5]
    assert data["claims"][0]["when"] == first["claims"][0]["when"]
    assert status("demo", tmp_path).startswith("3/3 pass")
    data["claims"][0]["when"] = "2026-01-02T03:04:05+0000"  # a claim last checked on another day: status shows the span
    (tmp_path / "demo.json").write_text(json.dumps(data))
    assert status("demo", tmp_path).startswith(f"3/3 pass (2026-01-02 to {data['when'][:10]}")
    md = (tmp_path / "demo.md").read_text()
    assert "| a | m=2 |" in md and "| c | m=1.5 |" in md and "| c | m=0.5 |" not in md
    write_results("demo", [result("c", True, 1.7)], tmp_path, order=["a", "c"])  # claim b removed from the config
    assert [c["claim"] for c in json.loads((tmp_path / "demo.json").read_text())["claims"]] == ["a", "c"]
    write_results("demo", [result("b", False, 0.1)], tmp_path, ["trainer.max_steps=9"], order=order)
    data = json.loads((tmp_path / "demo.json").read_text())
    assert [c["claim"] for c in data["claims"]] == ["b"] and data["overrides"] == ["trainer.max_steps=9"]
    assert status("demo", tmp_path).startswith("0/1 pass")
    (tmp_path / "demo.json").write_text("{not json")  # an unreadable earlier file is replaced, not an error
    write_results("demo", [result("a", True, 2.0)], tmp_path, order=order)
    assert status("demo", tmp_path).startswith("1/1 pass")
    assert not list(tmp_path.glob("*.tmp"))


def test_check_accepts_variants_that_declare_claims():
    from launch import config as zconfig

    variants = zconfig.variants_with_claims()
    assert "medida/qg" in variants
    assert "pig/helmholtz2d" not in variants  # `claims: null` (paper-scale variant without its own claims)
    with pytest.raises(UserError, match="unknown experiment 'medida/nope'"):
        from launch.cli import cmd_check

        cmd_check(["medida/nope"])


def test_check_one_claim_with_overrides_on_every_run(monkeypatch, tmp_path):
    """`zoo check <slug> --claim NAME key=value ...`: only that claim, the overrides on every run but before each
    run's own (a baseline's `trainer.max_steps=1` wins), and recorded with the results."""
    from launch import check
    from launch.cli import cmd_check

    seen = []

    def fake_measure(slug, spec, extra=()):
        seen.append((slug, list(spec), list(extra)))
        return {"test/node_rmse_cells": 0.1 if not spec else 3.0, "global_step": 4000.0 if not spec else 1.0}

    monkeypatch.setattr(check, "measure", fake_measure)
    out = tmp_path / "checks"
    assert cmd_check(["um2n", "--claim", "node_rmse", "trainer.max_steps=4000", "--out", str(out)]) == 0
    assert {s[0] for s in seen} == {"um2n"} and all(s[2] == ["trainer.max_steps=4000"] for s in seen)
    assert len(seen) == len(check.claims_of("um2n")["node_rmse"].runs)  # that claim's runs only
    key = check._run_key("um2n", ["model.mover=identity", "trainer.max_steps=1"], ["trainer.max_steps=4000"])
    assert key == ("experiment=um2n", "trainer.max_steps=4000", "model.mover=identity", "trainer.max_steps=1")
    table = (out / "um2n.md").read_text()
    assert "zoo check um2n trainer.max_steps=4000" in table and "| um2n=4000, identity=1 |" in table
    assert check.status("um2n", out).endswith("with trainer.max_steps=4000)")
    with pytest.raises(UserError, match="has no claim 'nope'"):
        cmd_check(["um2n", "--claim", "nope", "--out", str(out)])
    with pytest.raises(UserError, match="key=value"):
        cmd_check(["um2n", "max_steps", "--out", str(out)])
    with pytest.raises(UserError, match="--all takes no"):
        cmd_check(["--all", "--claim", "node_rmse"])
    with pytest.raises(UserError, match="needs --launcher slurm"):
        cmd_check(["um2n", "launcher.partition=gpu", "--out", str(out)])
    # a mistyped key and an output folder that cannot be made fail before any claim runs
    seen.clear()
    with pytest.raises(UserError, match="unknown config key 'trainer.max_stepz'"):
        cmd_check(["um2n", "--claim", "node_rmse", "trainer.max_stepz=4000", "--out", str(out)])
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match="--out .*afile/checks: cannot create it"):
        cmd_check(["um2n", "--claim", "node_rmse", "--out", str(tmp_path / "afile" / "checks")])
    assert not seen


def test_check_seeds_runs_each_claim_per_seed_and_summarises(monkeypatch, tmp_path, capsys):
    """`zoo check <slug> --claim NAME --seeds 0-2`: every run once per seed (`seed=<k>` after the user's overrides,
    before the run's own), each seed's results under <out>/seed<k>/, and the summary (seeds passing, mean +- sample std,
    each seed's verdict) in <out>/<slug>.seeds.md; a failing seed makes the exit status 1. The single-seed results
    that `zoo list` reads are left alone."""
    import json

    from launch import check
    from launch.cli import cmd_check

    seen = []
    ratio = {0: 0.40, 1: 0.70, 2: 0.50}  # the method's value per seed: seed 1 misses "um2n <= 0.6"

    def fake_measure(slug, spec, extra=()):
        seed = int(next(o for o in extra if o.startswith("seed=")).split("=")[1])
        seen.append((list(spec), list(extra)))
        return {"test/interp_ratio": ratio[seed] if not spec else 1.0, "global_step": 400.0 if not spec else 1.0}

    monkeypatch.setattr(check, "measure", fake_measure)
    out = tmp_path / "checks"
    assert cmd_check(["um2n", "--claim", "interpolation_ratio", "--seeds", "0-2", "trainer.max_steps=50",
                      "--out", str(out)]) == 1
    n_runs = len(check.claims_of("um2n")["interpolation_ratio"].runs)
    assert len(seen) == 3 * n_runs
    assert {tuple(extra) for _, extra in seen} == {("trainer.max_steps=50", f"seed={k}") for k in range(3)}
    for k in range(3):
        payload = json.loads((out / f"seed{k}" / "um2n.json").read_text())
        assert payload["overrides"] == ["trainer.max_steps=50", f"seed={k}"]
        assert payload["claims"][0]["measured"]["um2n"] == ratio[k]
    assert not (out / "um2n.json").exists()  # `zoo list` still shows the last single-seed check
    summary = json.loads((out / "um2n.seeds.json").read_text())["claims"][0]
    assert summary["passing"] == 2 and summary["verdicts"] == {"0": "PASS", "1": "FAIL", "2": "PASS"}
    assert summary["values"]["um2n"]["mean"] == pytest.approx(0.5333, abs=1e-4)
    assert summary["values"]["um2n"]["min"] == 0.4 and summary["values"]["um2n"]["max"] == 0.7
    table = (out / "um2n.seeds.md").read_text()
    assert "| interpolation_ratio | 2/3 | um2n 0.5333 ± 0.15 (0.4, 0.7)" in table  # sample std, as `zoo runs`
    printed = capsys.readouterr().out
    assert "[seed 1] um2n/interpolation_ratio: FAIL" in printed
    assert "um2n/interpolation_ratio: 2/3 seeds pass" in printed

    # a seed whose results are missing (its SLURM job died) shows as missing
    (out / "seed1" / "um2n.json").unlink()
    (line,) = check.summarize_seeds("um2n", [0, 1, 2], out)
    assert "2/3 seeds pass" in line and "1: missing" in line

    assert check.parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad, message in [("0,x", "integers"), ("3-1", "bad range"), ("0,0", "repeats"), ("-1", "integers")]:
        with pytest.raises(UserError, match=message):
            check.parse_seeds(bad)
    with pytest.raises(UserError, match="not both"):
        cmd_check(["um2n", "--seeds", "0,1", "seed=3", "--out", str(out)])


def test_cli_audit_cases_are_one_line_and_write_nothing(tmp_path):
    """Found by a read-only audit of the CLI's bad-input contract (stop 32); each was a traceback, a late failure or a
    wrong action before: an override with no key (`=5`, Hydra's ValueError); an interpolation that does not resolve
    (an InterpolationKeyError from inside the trainer, in train, check and eval); `zoo check <slug> experiment=<other>`
    (accepted: it would train the other paper's model under these claims); `--out ""` (wrote into the current
    folder); a huge --seeds range (MemoryError); a results file that is a folder (a traceback after every claim had
    run); `zoo runs --csv <folder>` (a traceback that left a .tmp file); `zoo eval out=<folder>` (refused only after
    the evaluation)."""
    tiny = ["experiment=lightgcn", "data=synthetic_graph", f"runs_root={tmp_path / 'runs'}", "logger=csv",
            "progress_bar=false", "trainer.max_epochs=1"]
    for args in (("train", *tiny, "=5"), ("train", *tiny, "trainer.max_epochs=${oops}"),
                 ("check", "pde_barron", "trainer.max_epochs=${oops}", "--out", str(tmp_path / "c0")),
                 ("check", "pde_barron", "experiment=lightgcn", "--out", str(tmp_path / "c1")),
                 ("check", "pde_barron", "--out", ""),
                 ("check", "pde_barron", "--seeds", "0-10000000000", "--out", str(tmp_path / "c2"))):
        code, out, err = zoo_in_process(*args)
        one_line_error(code, err)
    assert not (tmp_path / "runs").exists()
    (tmp_path / "c3" / "pde_barron.json").mkdir(parents=True)
    code, out, err = zoo_in_process("check", "pde_barron", "--claim", "preconditioning_matters", "--out",
                                    str(tmp_path / "c3"))
    one_line_error(code, err)
    assert "is a folder" in err and "PASS" not in out  # refused before the claim ran

    code, _, err = zoo_in_process("train", *tiny, "run_id=r")
    assert code == 0, err
    ckpt = tmp_path / "runs" / "lightgcn" / "r" / "checkpoints" / "last.ckpt"
    code, out, err = zoo_in_process("eval", f"ckpt={ckpt}", "data.batch_size=${oops}")
    one_line_error(code, err)
    code, out, err = zoo_in_process("eval", f"ckpt={ckpt}", f"out={tmp_path}")
    one_line_error(code, err)
    assert "test/recall@20" not in out  # refused before the evaluation
    code, out, err = zoo_in_process("eval", f"ckpt={ckpt.parent.parent}")  # the run directory: its last.ckpt named
    assert f"ckpt={ckpt}" in one_line_error(code, err)
    loose = tmp_path / "loose" / "x.ckpt"  # a checkpoint outside a run: where its config was looked for
    loose.parent.mkdir()
    loose.write_bytes(ckpt.read_bytes())
    assert "<run>/checkpoints/" in one_line_error(*zoo_in_process("eval", f"ckpt={loose}")[::2])
    (tmp_path / "table").mkdir()
    code, out, err = zoo_in_process("runs", "--root", str(tmp_path / "runs"), "--csv", str(tmp_path / "table"))
    one_line_error(code, err)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_check_leaves_no_out_folder_and_a_probe_only_check_refuses_a_malformed_value(tmp_path):
    """The CLI audit's leftovers (stop 32): an error found after `--out` was made left the empty folder (here: a
    claim the paper does not have), and a probe-only claim recorded `trainer.max_epochs=abc` as its results' setting
    without applying it (exit 0)."""
    code, _, err = zoo_in_process("check", "pde_barron", "--claim", "nosuch", "--out", str(tmp_path / "new" / "a"))
    one_line_error(code, err)
    assert not (tmp_path / "new").exists()
    code, out, err = zoo_in_process("check", "gtf_plrnn", "--claim", "alpha_star", "trainer.max_epochs=abc",
                                    "--out", str(tmp_path / "c"))
    one_line_error(code, err)
    assert "trainer.max_epochs must be an integer" in err and "PASS" not in out
    assert not (tmp_path / "c").exists()


def test_status_list_and_eval_take_help_and_status_takes_root_anywhere(tmp_path):
    """`zoo status|list|eval --help` print their usage (exit 0; they were errors); `zoo status` takes --root before
    or after the run and as --root=R (only `<id> --root R` worked), and a run id is not a glob pattern ('a[2]'
    showed run a2). Found by the CLI audit (stop 32)."""
    for command in ("status", "list", "eval"):
        try:
            code = zoo_in_process(command, "--help")[0]
        except SystemExit as stop:  # argparse's --help (the console script exits with it)
            code = stop.code
        assert code == 0, command
    root = tmp_path / "runs"
    for run in ("a2", "a[2]x"):
        (root / "lightgcn" / run).mkdir(parents=True)
    code, _, err = zoo_in_process("status", "--root", str(root), "a[2]")
    one_line_error(code, err)
    assert "no run 'a[2]'" in err
    for args in (("--root", str(root), "nosuch"), ("nosuch", f"--root={root}")):
        code, _, err = zoo_in_process("status", *args)
        assert code == 2 and "no run 'nosuch'" in err, err


def test_check_says_a_logger_override_has_no_effect(tmp_path):
    """`zoo check ... logger=wandb` was accepted and silently ignored (claim runs never log): it now says so."""
    code, _, err = zoo_in_process("check", "prose", "--claim", "tokenizer_round_trip", "logger=wandb",
                                  "--out", str(tmp_path))
    assert code == 0, err
    assert "logger=wandb has no effect" in err
    code, _, err = zoo_in_process("check", "prose", "--claim", "tokenizer_round_trip", "--out", str(tmp_path))
    assert code == 0 and "no effect" not in err
