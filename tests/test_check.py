"""`zoo check` runs of the form {train: [...], eval: [...]}: one trained model, tested again under other test-time
hyperparameters, trained once and restored afterwards; and probe runs {probe: <module>:<function>, args: {...}}, the
cards' deterministic checks, each of which must pass and fail with its baseline."""
from __future__ import annotations

from pathlib import Path

import pytest

from launch import check
from launch.errors import UserError

TINY = ["data.n_train=4", "data.n_test=2", "data.steps_per_epoch=2", "data.batch_size=2", "trainer.max_steps=2",
        "model.rollout=12", "model.error_start=6", "model.error_end=12", "model.width=8", "model.modes=4"]


def test_eval_variant_reuses_the_trained_model_and_restores_hparams():
    trained = check.measure("semilinear_operator", [], TINY)
    n_runs = len(check._RUN_CACHE)
    variant = check.measure("semilinear_operator", {"train": [], "eval": ["model.alpha=0.0"]}, TINY)
    assert len(check._RUN_CACHE) == n_runs  # no second training
    model = check._TRAINED[check._run_key("semilinear_operator", [], TINY)]["model"]
    assert model.hparams.alpha == 1.0  # restored
    # one-step error of the predictor does not depend on alpha; the assimilated rollout does
    assert variant["test/one_step_rel_l2"] == pytest.approx(trained["test/one_step_rel_l2"])
    assert variant["test/rel_l2"] != pytest.approx(trained["test/rel_l2"])


PROSE_TINY = ["data.num_train=64", "data.num_val=16", "data.num_test=16", "data.eval_batch_size=16",
              "data.batch_size=16", "trainer.max_steps=2", "model.max_gen_len=8"]


def test_eval_variant_sets_and_restores_datamodule_hparams():
    """`data.<hp>=<value>` eval overrides act on the trained run's datamodule (PROSE: the test-time input text)."""
    trained = check.measure("prose", [], PROSE_TINY)
    n_runs = len(check._RUN_CACHE)
    variant = check.measure("prose", {"train": [], "eval": ["data.eval_text=other_family"]}, PROSE_TINY)
    assert len(check._RUN_CACHE) == n_runs  # no second training
    datamodule = check._TRAINED[check._run_key("prose", [], PROSE_TINY)]["datamodule"]
    assert datamodule.hparams.eval_text == "own"  # restored
    assert variant["test/rel_l2"] != pytest.approx(trained["test/rel_l2"], rel=1e-9, abs=0)  # other input text
    # a setting read when the test split is generated: the split is rebuilt, then restored
    unseen = check.measure("prose", {"train": [], "eval": ["data.test_param_range=[0.3, 0.5]"]}, PROSE_TINY)
    assert unseen["test/rel_l2"] != pytest.approx(trained["test/rel_l2"], rel=1e-9, abs=0)
    assert datamodule.hparams.test_param_range is None
    again = check.measure("prose", {"train": [], "eval": ["data.eval_text=own"]}, PROSE_TINY)
    assert again["test/rel_l2"] == pytest.approx(trained["test/rel_l2"], rel=1e-6)


@pytest.mark.parametrize("bad", [["alpha=0"], ["model.no_such_hparam=1"], ["data.no_such_hparam=1"],
                                 ["trainer.max_steps=1"]])
def test_eval_override_errors_are_one_line(bad):
    with pytest.raises(UserError):
        check.measure("semilinear_operator", {"train": [], "eval": bad}, TINY)


def test_unknown_run_keys_are_rejected():
    with pytest.raises(UserError, match="unknown keys"):
        check.measure("semilinear_operator", {"train": [], "evaluate": []}, TINY)


def _probe_claims() -> list[tuple[str, str]]:
    """(experiment, claim) for every claim whose runs are all probes (no training): cheap enough to run here."""
    from launch import config as zconfig

    found = []
    for slug in zconfig.experiments():
        for name, claim in check.claims_of(slug).items():
            specs = list(claim.runs.values()) + list(claim.baseline.values())
            if all(isinstance(s, dict) or hasattr(s, "keys") for s in specs) and all("probe" in s for s in specs):
                found.append((slug, name))
    return found


PROBE_CLAIMS = _probe_claims()


def test_the_cards_deterministic_checks_are_probe_claims():
    expected = {("gtf_plrnn", "bounded_gradients"), ("gtf_plrnn", "alpha_star"),
                ("itransformer", "permutation_equivariance"), ("dysts_benchmark", "timescale_alignment"),
                ("dysts_benchmark", "determinism"), ("prose", "tokenizer_round_trip"), ("medida", "full_observations")}
    assert expected <= set(PROBE_CLAIMS), PROBE_CLAIMS


@pytest.mark.parametrize("slug,claim", PROBE_CLAIMS)
def test_probe_claim_passes_and_fails_with_its_baseline(slug, claim):
    result = check.run_claim(slug, claim)
    assert result.passed, result.report()
    swapped = check.run_claim(slug, claim, swap_baseline=True)
    assert not swapped.passed, swapped.report()


def test_probe_runs_are_cached_by_function_and_args():
    target = "lit_models.dynamics.card_probes:tent_map_gradient_norm"
    first = check.measure("gtf_plrnn", {"probe": target, "args": {"alpha": 0.7}})
    n = len(check._PROBE_CACHE)
    assert check.measure("gtf_plrnn", {"probe": target, "args": {"alpha": 0.7}}) == first
    assert len(check._PROBE_CACHE) == n
    check.measure("gtf_plrnn", {"probe": target, "args": {"alpha": 0.5}})
    assert len(check._PROBE_CACHE) == n + 1


@pytest.mark.parametrize("spec,message", [
    ({"probe": "os:getcwd"}, "must look like"),
    ({"probe": "lit_models.dynamics.card_probes"}, "must look like"),
    ({"probe": "lit_models.dynamics.card_probes:no_such_probe"}, "not found"),
    ({"probe": "lit_models.dynamics.card_probes:tent_alpha_star", "args": {"no_such_arg": 1}}, "rejected its args"),
    ({"probe": "lit_models.dynamics.card_probes:tent_alpha_star", "kwargs": {}}, "unknown keys"),
])
def test_bad_probe_runs_are_one_line_errors(spec, message):
    with pytest.raises(UserError, match=message):
        check.measure("gtf_plrnn", spec)


def test_a_known_gap_excuses_a_miss_not_a_broken_method():
    """A claim with a `known_gap` that misses reads KNOWN GAP (the claim tests xfail) only with every value finite
    and every `floor` bound met: a method that broke completely (the untrained decoder's 0.0 in place of PROSE's 1.0,
    a NaN metric) read KNOWN GAP before and its test xfailed (review, stop 40)."""
    from launch.check import ClaimResult

    def result(measured, floor_ok=()):
        return ClaimResult("demo", "c", "text", "test/m", measured, ["m >= 0.95"], [False], 1.0, known_gap="why",
                           floor=["m >= 0.8"][:len(floor_ok)], floor_outcomes=list(floor_ok))

    assert result({"m": 0.9}, [True]).verdict == "KNOWN GAP"
    assert result({"m": 0.0}, [False]).verdict == "FAIL"
    assert "floor m >= 0.8 [FAIL]" in result({"m": 0.0}, [False]).report()
    assert result({"m": float("nan")}).verdict == "FAIL"
    passing = ClaimResult("demo", "c", "text", "test/m", {"m": 1.0}, ["m >= 0.95"], [True], 1.0)
    assert passing.verdict == "PASS" and not ClaimResult(
        "demo", "c", "text", "test/m", {"m": 1.0, "b": float("inf")}, ["m >= 0.95"], [True], 1.0).passed


def test_every_known_gap_claim_has_a_floor_over_its_own_runs():
    """Every claim that carries a `known_gap` names `floor` bounds (else a broken method would xfail), and they are
    expressions over the claim's own runs."""
    import yaml

    from launch.check import evaluate

    root = Path(__file__).resolve().parents[1] / "configs" / "experiment"
    gaps = 0
    for path in sorted(root.glob("*.yaml")):
        for name, claim in (yaml.safe_load(path.read_text()).get("claims") or {}).items():
            if not claim.get("known_gap"):
                continue
            gaps += 1
            assert claim.get("floor"), f"{path.stem}/{name} has a known_gap and no floor"
            names = {run: 1.0 for run in claim["runs"]}
            for expression in claim["floor"]:
                evaluate(expression, names)  # a one-line UserError for a run the claim does not have
    assert gaps >= 10


def test_eval_override_outside_the_constructors_range_is_refused():
    """An eval override goes through the module's own checks (NODA: alpha in [0, 1]); before, alpha=2 was set on the
    trained model's hparams unchecked and tested."""
    with pytest.raises(UserError, match=r"model\.alpha=2\.0.*alpha and train_alpha must be in \[0, 1\]"):
        check.measure("semilinear_operator", {"train": [], "eval": ["model.alpha=2.0"]}, TINY)
    model = check._TRAINED[check._run_key("semilinear_operator", [], TINY)]["model"]
    assert model.hparams.alpha == 1.0  # untouched


def test_the_eval_rebuild_leaves_the_random_streams_and_reports_unknown_arguments():
    """The rebuild that runs the constructor's checks draws initial weights: it must not move the global torch / numpy
    streams a test reads after it; and an hparam the constructor does not take is named as such."""
    import numpy as np
    import torch

    check.measure("semilinear_operator", [], TINY)
    model = check._TRAINED[check._run_key("semilinear_operator", [], TINY)]["model"]
    torch.manual_seed(7)
    np.random.seed(7)
    check._check_eval_settings({"model": model}, {"model": {"alpha": 0.5}}, ["model.alpha=0.5"])
    after = torch.rand(1), np.random.rand()
    torch.manual_seed(7)
    np.random.seed(7)
    assert (torch.rand(1), np.random.rand()) == after
    with pytest.raises(UserError, match="takes no such arguments"):
        check._check_eval_settings({"model": model}, {"model": {"no_such": 1}}, ["model.no_such=1"])


def _broken_probe(n: int = 1) -> dict[str, float]:
    return {"value": len(n)}  # a bug inside the probe: TypeError (len of an int)


def _seeded_probe(seed: int = 0) -> dict[str, float]:
    return {"value": float(seed)}


def test_a_probes_own_type_error_is_not_read_as_bad_args(monkeypatch):
    from lit_models.dynamics import card_probes

    monkeypatch.setattr(card_probes, "broken_probe", _broken_probe, raising=False)
    spec = {"probe": "lit_models.dynamics.card_probes:broken_probe", "args": {"n": 3}}
    with pytest.raises(TypeError, match="len"):  # the probe's traceback, not "rejected its args"
        check.measure("gtf_plrnn", spec)
    with pytest.raises(UserError, match="rejected its args"):  # a bad argument still is one
        check.measure("gtf_plrnn", {"probe": spec["probe"], "args": {"m": 3}})


def test_seeds_reach_probes_that_take_a_seed(monkeypatch):
    """`zoo check --seeds` adds seed=<k> to the overrides: a probe with a seed argument gets it (before, every seed
    measured the probe's default seed, so "5/5 seeds" was one measurement repeated); an explicit args seed wins; a
    probe without one is deterministic and runs as it is."""
    from lit_models.dynamics import card_probes

    monkeypatch.setattr(card_probes, "seeded_probe", _seeded_probe, raising=False)
    target = "lit_models.dynamics.card_probes:seeded_probe"
    assert check.measure("gtf_plrnn", {"probe": target}, ["seed=3"]) == {"value": 3.0}
    assert check.measure("gtf_plrnn", {"probe": target}, ["seed=4"]) == {"value": 4.0}
    assert check.measure("gtf_plrnn", {"probe": target}) == {"value": 0.0}
    assert check.measure("gtf_plrnn", {"probe": target, "args": {"seed": 7}}, ["seed=3"]) == {"value": 7.0}
    # the seed read as a run reads it (`seed=3.0` is 3, `+seed=5` too, null keeps the default), and only for probes
    # that take one: a probe without a seed runs whatever the seed override says (review of stop 41)
    assert check.measure("gtf_plrnn", {"probe": target}, ["seed=3.0"]) == {"value": 3.0}
    assert check.measure("gtf_plrnn", {"probe": target}, ["+seed=5"]) == {"value": 5.0}
    assert check.measure("gtf_plrnn", {"probe": target}, ["seed=null"]) == {"value": 0.0}
    unseeded = {"probe": "lit_models.dynamics.card_probes:tent_alpha_star"}
    assert check.measure("gtf_plrnn", unseeded, ["seed=null"]) == check.measure("gtf_plrnn", unseeded)
    with pytest.raises(UserError, match="seed must be an integer"):
        check.measure("gtf_plrnn", {"probe": target}, ["seed=abc"])


def test_a_probe_outside_the_project_is_refused_before_it_is_imported(monkeypatch):
    imported = []
    monkeypatch.setattr(check.importlib, "import_module", lambda name: imported.append(name))
    with pytest.raises(UserError, match="must look like"):
        check.measure("gtf_plrnn", {"probe": "os:getcwd"}, ["seed=1"])
    assert imported == []


def test_runs_that_keep_their_own_setting_over_the_command_line_are_reported(tmp_path):
    """`zoo check prose trainer.max_steps=3000`: a claim run that sets its own trainer.max_steps keeps it (a baseline's
    max_steps=1 must stay 1); the report and the results' .md now say so instead of a header that names 3000 alone."""
    runs = {"fused": ["model.dim_emb=64", "trainer.max_steps=1500"], "data_only": ["model.text_input=false"],
            "probe": {"probe": "x:y"}, "variant": {"train": ["trainer.max_steps=10"], "eval": ["model.alpha=0"]}}
    extra = ["trainer.max_steps=3000", "seed=1", "model.alpha=0.3"]
    kept = check.kept_own_settings(runs, extra)
    assert kept == {"fused": ["trainer.max_steps=1500 (given trainer.max_steps=3000)"],
                    "variant": ["trainer.max_steps=10 (given trainer.max_steps=3000)",
                                "model.alpha=0 (given model.alpha=0.3)"]}
    assert check.kept_own_settings({"fused": runs["fused"]}, ["trainer.max_steps=1500"]) == {}  # the same value
    result = check.ClaimResult("prose", "symbols_valid", "t", "test/valid_frac", {"fused": 1.0}, ["fused >= 0.95"],
                               [True], 1.0, kept_own={"fused": kept["fused"]})
    assert "[run fused kept its own trainer.max_steps=1500 (given trainer.max_steps=3000)]" in result.report()
    check.write_results("prose", [result], tmp_path, extra)
    md = (tmp_path / "prose.md").read_text()
    assert md.startswith("# zoo check prose trainer.max_steps=3000 seed=1")
    assert "- symbols_valid: [run fused kept its own trainer.max_steps=1500 (given trainer.max_steps=3000)]" in md
