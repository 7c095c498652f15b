"""`zoo check`: rerun each paper's small-scale claims (the `claims:` block of its experiment config).

A claim names the runs it needs (override lists on top of `experiment=<slug>`; an `experiment=` entry
switches the base experiment) and boolean expressions over their final metric:

    claims:
      beats_mf:
        text: LightGCN K=3 Recall@20 >= 0.31 and >= 0.03 above MF-BPR
        metric: test/recall@20
        runs: {lightgcn: [], mf_30: [model.num_layers=0]}
        expect: ["lightgcn >= 0.31", "lightgcn >= mf_30 + 0.03"]
        baseline: {lightgcn: [model.num_layers=0]}   # the method swapped for its baseline: must fail

A run may also be `{train: [...], eval: [model.<hparam>=<value>, data.<hparam>=<value>, ...]}`: the model trained
with the `train` overrides, tested again with those hyperparameters of the module or the datamodule changed (for
settings read at test time, e.g. the fraction of frames that carry measurements, or PROSE's test-time input text).
The claim then compares one trained model under two settings:

        runs: {noda: [], prediction_only: {train: [], eval: [model.alpha=0.0]}}

A run may instead be a probe, `{probe: <module>:<function>, args: {...}}`: a function of this project that trains
nothing and returns a dict of metrics, for the cards' deterministic checks (a gradient norm on a known map, an
equivariance error, a tokenizer round trip):

        runs: {bptt: {probe: "lit_models.dynamics.gtf_plrnn:tent_map_gradient_norm", args: {alpha: 0.0}}}

A probe with a `seed` argument gets the seed of a `seed=<k>` override (`zoo check --seeds` sets one per seed) unless
its args give one; a probe without is deterministic. An eval run's settings pass the module's / datamodule's
constructor checks first (`_check_eval_settings`). The command line's overrides go under every run, whose own
overrides win where both set a key; the report and the results' .md name each run that kept its own setting.

A claim the implementation does not reproduce carries `known_gap: "<why>"`: its miss is then reported as KNOWN GAP,
not FAIL, but only with every measured value finite and every `floor:` expression met, sanity bounds (looser than
`expect`, calibrated on the recorded seeds) that a broken method would miss:

        expect: ["dmm <= 0.15"]
        floor: ["dmm <= 0.7 * identity"]
        known_gap: "..."

Runs are cached per process by their overrides (probes by their function and arguments), so runs shared between
claims train once.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import logging
import math
import operator
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from launch import config as zconfig
from launch.errors import UserError
from launch.runs import global_rank, override_key, write_atomic

CHECK_OVERRIDES = ["logger=none", "launcher=local", "progress_bar=false", "stage=fit_test",
                   "trainer.enable_model_summary=false"]
_RUN_CACHE: dict[tuple[str, ...], dict[str, float]] = {}
_TRAINED: dict[tuple[str, ...], dict] = {}  # trainer, model, datamodule of each cached run
_EVAL_CACHE: dict[tuple, dict[str, float]] = {}
_PROBE_CACHE: dict[tuple[str, str], dict[str, float]] = {}
PROBE_PACKAGES = ("lit_models.", "datamodules.", "benchmarks.")


@dataclass
class ClaimResult:
    slug: str
    claim: str
    text: str
    metric: str
    measured: dict[str, float]
    expect: list[str]
    outcomes: list[bool]
    seconds: float
    swapped: dict = field(default_factory=dict)
    known_gap: str | None = None  # a claim of the paper that this implementation does not reproduce, and why
    steps: dict[str, int] = field(default_factory=dict)  # optimiser steps each trained run took (probes: none)
    floor: list[str] = field(default_factory=list)  # sanity bounds that hold even where the claim is a known gap
    floor_outcomes: list[bool] = field(default_factory=list)
    kept_own: dict[str, list[str]] = field(default_factory=dict)  # per run: command-line overrides its own replaced

    @property
    def sane(self) -> bool:
        """Every measured value finite and every `floor` bound met: a known gap excuses a missed threshold, not a
        method that broke (a NaN compares False with everything, so it would read as a miss)."""
        return all(self.floor_outcomes) and all(math.isfinite(v) for v in self.measured.values())

    @property
    def passed(self) -> bool:
        return all(self.outcomes) and self.sane

    def report(self) -> str:
        values = ", ".join(f"{k}={v:.4g}" for k, v in self.measured.items())
        checks = "; ".join(f"{e} [{'ok' if ok else 'FAIL'}]" for e, ok in zip(self.expect, self.outcomes))
        floors = "".join(f"; floor {e} [{'ok' if ok else 'FAIL'}]" for e, ok in zip(self.floor, self.floor_outcomes))
        gap = f" [known gap: {self.known_gap}]" if self.verdict == "KNOWN GAP" else ""
        kept = kept_own_text(self.kept_own)
        return f"{self.slug}/{self.claim}: {self.verdict} ({values}) {checks}{floors}{gap}{kept}"

    @property
    def verdict(self) -> str:
        """PASS; KNOWN GAP (a miss the claim's `known_gap` explains, with every value finite and every floor met);
        FAIL."""
        if self.passed:
            return "PASS"
        return "KNOWN GAP" if self.known_gap and self.sane else "FAIL"


def kept_own_text(kept_own: dict[str, list[str]]) -> str:
    """" [run X kept its own a=1 (given a=2)]" for the runs that did not take all of the command line's overrides."""
    return "".join(f" [run {run} kept its own {', '.join(items)}]" for run, items in kept_own.items())


def claims_of(slug: str) -> DictConfig:
    cfg = zconfig.compose([f"experiment={slug}"])
    return cfg.get("claims") or OmegaConf.create({})


def train_once(slug: str, overrides: list[str], extra: list[str] = ()) -> dict[str, float]:
    """Final metrics of `experiment=<slug>` + overrides, trained without a run directory (cached)."""
    from launch import train

    key = _run_key(slug, overrides, extra)
    if key not in _RUN_CACHE:
        import lightning  # noqa: F401 - it sets its loggers to INFO on import; quiet them after that

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        cfg = zconfig.compose(CHECK_OVERRIDES + list(key))
        kept: dict = {}
        _RUN_CACHE[key] = train.run(cfg, make_run_dir=False, keep=kept)
        _TRAINED[key] = kept
    return _RUN_CACHE[key]


def _run_key(slug: str, overrides: list[str], extra: list[str] = ()) -> tuple[str, ...]:
    """Overrides of one claim run: the experiment, then `extra` (the user's, e.g. `trainer=gpu
    trainer.max_steps=15000`), then the run's own, which win where both set a key (a baseline's
    `trainer.max_steps=1` stays 1)."""
    base = [f"experiment={slug}"]
    if any(o.startswith("experiment=") for o in overrides):
        base = []
    return tuple(base + list(extra) + list(overrides))


def _hparam_updates(eval_overrides: list[str], targets: dict) -> dict[str, dict]:
    """{"model": {...}, "data": {...}} from `model.<hp>=<value>` / `data.<hp>=<value>` eval overrides; `targets`
    maps "model" / "data" to the hyperparameters they may change."""
    import yaml

    updates: dict[str, dict] = {group: {} for group in targets}
    for item in eval_overrides:
        name, sep, value = item.partition("=")
        group, _, hp = name.partition(".")
        if not sep or group not in targets or not hp:
            raise UserError(f"eval override '{item}' must look like model.<hyperparameter>=<value> or "
                            f"data.<hyperparameter>=<value>")
        if hp not in targets[group]:
            raise UserError(f"eval override '{item}': the {group} has no hyperparameter '{hp}'")
        updates[group][hp] = yaml.safe_load(value)
    return updates


def _check_eval_settings(objects: dict, updates: dict[str, dict], eval_overrides: list[str]) -> None:
    """Build the module / datamodule anew from its hyperparameters with the eval overrides applied and drop it: the
    constructor's checks (ranges, choices, shapes) then hold for the evaluated setting too, which is set on the
    trained objects' hparams directly. A failed check is a one-line error naming the eval overrides."""
    import numpy as np
    import torch

    for group, ups in updates.items():
        if not ups:
            continue
        obj, kwargs = objects[group], {**dict(objects[group].hparams), **ups}
        try:
            inspect.signature(type(obj)).bind(**kwargs)
        except TypeError as err:
            raise UserError(f"eval override {' '.join(eval_overrides)}: {type(obj).__name__} takes no such "
                            f"arguments: {err}") from None
        try:
            with torch.random.fork_rng(devices=[]):  # the rebuild draws initial weights: the test's stream stays as is
                numpy_state = np.random.get_state()
                try:
                    type(obj)(**kwargs)
                finally:
                    np.random.set_state(numpy_state)
        except UserError as err:
            raise UserError(f"eval override {' '.join(eval_overrides)}: {err}") from None
        except ValueError as err:
            raise UserError(f"eval override {' '.join(eval_overrides)}: {type(obj).__name__} refuses it: {err}") from None


def eval_once(slug: str, train_overrides: list[str], eval_overrides: list[str],
              extra: list[str] = ()) -> dict[str, float]:
    """Test metrics of the model trained with `train_overrides` (cached) after setting `eval_overrides` on its
    hyperparameters (`model.<hp>=...`) or on its datamodule's (`data.<hp>=...`: options read when the test loader
    is built, e.g. PROSE's test-time text); both are restored afterwards."""
    from launch import train

    key = _run_key(slug, train_overrides, extra)
    ekey = (key, tuple(eval_overrides))
    if ekey not in _EVAL_CACHE:
        train_once(slug, train_overrides, extra)
        kept = _TRAINED[key]
        model, trainer, datamodule = kept["model"], kept["trainer"], kept["datamodule"]
        targets = {"model": model.hparams, "data": datamodule.hparams}
        updates = _hparam_updates(list(eval_overrides), targets)
        _check_eval_settings({"model": model, "data": datamodule}, updates, list(eval_overrides))
        saved = {group: {k: targets[group][k] for k in ups} for group, ups in updates.items()}
        for group, ups in updates.items():
            targets[group].update(ups)
        try:
            trainer.test(model, datamodule=datamodule, verbose=False)
            metrics = train._floats(trainer.callback_metrics)
            if "global_step" in _RUN_CACHE[key]:  # the steps the evaluated model was trained for
                metrics["global_step"] = _RUN_CACHE[key]["global_step"]
            _EVAL_CACHE[ekey] = metrics
        finally:
            for group, old in saved.items():
                targets[group].update(old)
    return _EVAL_CACHE[ekey]


def resolve_probe(target: str):
    """The probe function `<module>:<function>`, the module in one of PROBE_PACKAGES (checked before it is imported);
    a one-line error otherwise."""
    module_name, sep, func_name = target.partition(":")
    if not sep or not module_name.startswith(PROBE_PACKAGES) or not func_name:
        raise UserError(f"probe '{target}' must look like <module>:<function> with the module in one of "
                        f"{', '.join(p.rstrip('.') for p in PROBE_PACKAGES)}")
    try:
        return getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"probe '{target}' not found: {err}") from None


def probe_once(target: str, args: dict, extra: list[str] = ()) -> dict[str, float]:
    """Metrics returned by the probe function `<module>:<function>` (a module of this project) called with `args`
    (cached); a probe with a `seed` argument that `args` leave out gets the seed of the command line's overrides
    `extra` (`given_seed`), if they set one."""
    func = resolve_probe(target)
    signature = inspect.signature(func)
    if "seed" in signature.parameters and "seed" not in args and (seed := given_seed(list(extra))) is not None:
        args = {**args, "seed": seed}
    key = (target, json.dumps(args, sort_keys=True))
    if key not in _PROBE_CACHE:
        try:  # bound first: a TypeError raised inside the probe is the probe's own, not a bad argument
            signature.bind(**args)
        except TypeError as err:
            raise UserError(f"probe '{target}' rejected its args {args}: {err}") from None
        metrics = func(**args)
        _PROBE_CACHE[key] = {k: float(v) for k, v in metrics.items()}
    return _PROBE_CACHE[key]


def measure(slug: str, spec, extra: list[str] = ()) -> dict[str, float]:
    """Metrics of one claim run: a list of overrides, {train: [...], eval: [...]}, or {probe: ..., args: {...}}."""
    if isinstance(spec, (dict, DictConfig)):
        if "probe" in spec:
            unknown = set(spec) - {"probe", "args"}
            if unknown:
                raise UserError(f"claim run {dict(spec)} has unknown keys {sorted(unknown)} (allowed: probe, args)")
            return probe_once(str(spec["probe"]), dict(spec.get("args") or {}), extra)
        unknown = set(spec) - {"train", "eval"}
        if unknown:
            raise UserError(f"claim run {dict(spec)} has unknown keys {sorted(unknown)} (allowed: train, eval, or "
                            f"probe, args)")
        return eval_once(slug, list(spec.get("train", [])), list(spec.get("eval", [])), extra)
    return train_once(slug, list(spec), extra)


def given_seed(extra: list[str]) -> int | None:
    """The seed the command line's overrides set (`seed=<k>`, which `zoo check --seeds` adds per seed), read as a run
    reads it (`launch.train._seed`: `seed=3.0` is 3); None when none is given or it is null: a probe with a `seed`
    argument then keeps its own default (0, the configs' seed)."""
    if not any(override_key(o) == "seed" for o in extra):
        return None
    from launch import train

    return train._seed(OmegaConf.from_dotlist([o.lstrip("+~") for o in extra if override_key(o) == "seed"]))


def kept_own_settings(runs: dict, extra: list[str]) -> dict[str, list[str]]:
    """Per run of a claim, the command line's overrides (`extra`) that the run's own overrides replace (see
    `_run_key`: the run's own win), as "<own> (given <extra>)": such a run did not run under the setting the
    results' header names, e.g. a baseline's `trainer.max_steps=1`, or a claim that fixes its own budget."""
    kept: dict[str, list[str]] = {}
    for name, spec in runs.items():
        if isinstance(spec, dict) and "probe" in spec:  # the overrides do not reach a probe (only a seed)
            continue
        own = [*spec.get("train", []), *spec.get("eval", [])] if isinstance(spec, dict) else spec
        own_by_key = {override_key(o): o for o in own}
        replaced = [f"{own_by_key[override_key(o)]} (given {o})" for o in extra
                    if override_key(o) in own_by_key and own_by_key[override_key(o)] != o]
        if replaced:
            kept[name] = replaced
    return kept


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.USub: operator.neg}
_FUNCS = {"max": max, "min": min, "abs": abs}


def evaluate(expression: str, names: dict[str, float]):
    """Evaluate a claim expression: numbers, run names, + - * /, comparisons, max/min/abs. Nothing else."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise UserError(f"claim expression '{expression}' uses unknown run '{node.id}'")
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Compare):
            left, result = ev(node.left), True
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                result = result and _OPS[type(op)](left, right)
                left = right
            return result
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise UserError(f"claim expression '{expression}' has an unsupported part: {ast.dump(node)[:80]}")

    try:
        return ev(ast.parse(expression, mode="eval"))
    except SyntaxError:
        raise UserError(f"claim expression '{expression}' is not valid") from None


def run_claim(slug: str, name: str, *, swap_baseline: bool = False, extra: list[str] = ()) -> ClaimResult:
    """Measure one claim. With `swap_baseline`, the runs listed under `baseline:` replace the method's
    runs: a correct claim must then fail."""
    claims = claims_of(slug)
    if name not in claims:
        raise UserError(f"experiment '{slug}' has no claim '{name}' (has: {', '.join(claims) or 'none'})")
    claim = claims[name]
    runs = {k: _plain(v) for k, v in claim.runs.items()}
    swapped = {}
    if swap_baseline:
        if not claim.get("baseline"):
            raise UserError(f"claim {slug}/{name} names no baseline to swap in")
        swapped = {k: _plain(v) for k, v in claim.baseline.items()}
        runs.update(swapped)
    start = time.perf_counter()
    measured, steps = {}, {}
    for run_name, spec in runs.items():
        metrics = measure(slug, spec, extra)
        if claim.metric not in metrics:
            raise UserError(f"claim {slug}/{name}: run '{run_name}' logged no '{claim.metric}' "
                            f"(has: {', '.join(sorted(metrics))})")
        measured[run_name] = metrics[claim.metric]
        if "global_step" in metrics:
            steps[run_name] = int(metrics["global_step"])
    expect, floor = list(claim.expect), list(claim.get("floor") or [])
    outcomes = [bool(evaluate(e, measured)) for e in expect]
    return ClaimResult(slug, name, claim.get("text", name), claim.metric, measured, expect, outcomes,
                       time.perf_counter() - start, swapped, claim.get("known_gap"), steps, floor,
                       [bool(evaluate(e, measured)) for e in floor], kept_own_settings(runs, list(extra)))


def _plain(spec):
    return OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else list(spec)


def check(slug: str, out_dir: Path | None = None, *, names: list[str] | None = None,
          extra: list[str] = ()) -> list[ClaimResult]:
    """Run the claims `names` (default: all) of `slug`, every run with the `extra` overrides (see `_run_key`)."""
    known = list(claims_of(slug))
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise UserError(f"experiment '{slug}' has no claim {', '.join(map(repr, unknown))} "
                        f"(has: {', '.join(known) or 'none'})")
    results = [run_claim(slug, name, extra=list(extra)) for name in (names or known)]
    if out_dir is not None:
        write_results(slug, results, out_dir, list(extra), order=known)
    return results


# overrides that change where and how a check reports, not what it measures: not recorded as its setting
NOT_A_SETTING = ("runs_root", "progress_bar", "logger")


def write_results(slug: str, results: list[ClaimResult], out_dir: Path, extra: list[str] = (),
                  order: list[str] | None = None) -> None:
    """`<slug>.json` and `<slug>.md` under out_dir; `extra` (overrides on top of every run, e.g. a longer schedule on
    a GPU) is recorded in both, since such results are not the card's setting.

    A check of some claims (`--claim`) updates those claims and keeps the others' last results when the earlier
    file was written with the same `extra` (each claim keeps its own `when`); results under other overrides are
    replaced, so one file never mixes settings. `order`: the experiment's claim names, in config order (claims no
    longer in it are dropped). Both files are written atomically (a temporary file, then a rename)."""
    (out_dir / slug).parent.mkdir(parents=True, exist_ok=True)  # a variant `<slug>/<dataset>` gets a subfolder
    extra = [o for o in extra if override_key(o).split(".")[0] not in NOT_A_SETTING]
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    claims = {c["claim"]: c for c in _previous_claims(out_dir / f"{slug}.json", list(extra))}
    claims.update({r.claim: asdict(r) | {"passed": r.passed, "verdict": r.verdict, "when": when} for r in results})
    names = [n for n in order if n in claims] if order is not None else list(claims)
    rows = [claims[n] for n in names]
    payload = {"slug": slug, "when": when, "overrides": list(extra),
               "passed": all(c["verdict"] != "FAIL" for c in rows), "claims": rows}
    header = f"# zoo check {slug}" + (f" {' '.join(extra)}" if extra else "")
    lines = [header, "", "| claim | measured | expected | result | seconds | steps | when |",
             "|---|---|---|---|---|---|---|"]
    for c in rows:
        measured = ", ".join(f"{k}={v:.4g}" for k, v in c["measured"].items())
        steps = ", ".join(f"{k}={v}" for k, v in c.get("steps", {}).items())
        expected = "; ".join(c["expect"] + [f"floor {f}" for f in c.get("floor", [])])
        lines.append(f"| {c['claim']} | {measured} | {expected} | {c['verdict']} "
                     f"| {c['seconds']:.1f} | {steps} | {c.get('when', '')[:16]} |")
    kept = [f"- {c['claim']}:{kept_own_text(c['kept_own'])}" for c in rows if c.get("kept_own")]
    if kept:  # the header's overrides did not reach these runs
        lines += ["", "Runs that kept their own setting over the overrides above:", *kept]
    if global_rank() == 0:  # under DDP every rank measured the same (synced) values: rank zero writes them
        _write_results_files({out_dir / f"{slug}.json": json.dumps(payload, indent=2),
                              out_dir / f"{slug}.md": "\n".join(lines) + "\n"})


def _write_results_files(texts: dict[Path, str]) -> None:
    """Write each file atomically; a target that cannot be written (a folder in its place, a full disk) is a one-line
    error naming it (the claims' values are in the report printed above), and is checked for all files before any
    is written, so a pair is never half made."""
    for path in texts:
        if path.is_dir():
            raise UserError(f"cannot write the check results: {path} is a folder")
    for path, text in texts.items():
        try:
            write_atomic(path, text)
        except OSError as err:
            raise UserError(f"cannot write the check results: {path}: {err.strerror or err}") from None


def _previous_claims(path: Path, extra: list[str]) -> list[dict]:
    """The claims of an earlier results file written with the same overrides; none when there is no such file, it
    does not parse (e.g. from an older layout), or its overrides differ."""
    try:
        data = json.loads(path.read_text())
        if data.get("overrides", []) != extra:
            return []
        return [c for c in data["claims"] if {"claim", "measured", "expect", "passed", "verdict"} <= set(c)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


MAX_SEEDS = 1000  # a bound on `--seeds` ranges (0-10000000000 tried to build the list)


def parse_seeds(text: str) -> list[int]:
    """`--seeds` of `zoo check`: "0,1,2" or an inclusive range "0-4" (or both, "0-2,7"); distinct integers >= 0."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise UserError(f"--seeds takes integers like 0,1,2 or 0-4, got {text!r}") from None
        if first < 0 or last < first:
            raise UserError(f"--seeds: bad range {part.strip()!r} in {text!r} (integers >= 0, low-high)")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise UserError(f"--seeds: at most {MAX_SEEDS} seeds, got {text!r}")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds repeats a seed: {text!r}")
    return seeds


def seed_dir(out_dir: Path, seed: int) -> Path:
    """Where `zoo check --seeds` writes one seed's results (`<out>/seed<k>/<slug>.json`, `.md`): the plain
    `<out>/<slug>.json` that `zoo list` reads stays the single-seed check's."""
    return out_dir / f"seed{seed}"


def check_at_seed(slug: str, out_dir: Path, names: list[str] | None, extra: list[str],
                  seed: int | None = None) -> list[ClaimResult]:
    """`check` at one seed of `zoo check --seeds` (`seed=<k>` after `extra`, results under `seed_dir`); seed None:
    `check` as configured."""
    if seed is None:
        return check(slug, out_dir, names=names, extra=extra)
    return check(slug, seed_dir(out_dir, seed), names=names, extra=[*extra, f"seed={seed}"])


def seed_report(result: ClaimResult, seed: int | None) -> str:
    """A claim's report line, tagged "[seed k]" when it comes from one seed of `zoo check --seeds`."""
    return result.report() if seed is None else f"[seed {seed}] {result.report()}"


def clear_cache() -> None:
    """Forget the cached runs (and the trained models they keep): between seeds nothing is shared."""
    for cache in (_RUN_CACHE, _TRAINED, _EVAL_CACHE):
        cache.clear()


def summarize_seeds(slug: str, seeds: list[int], out_dir: Path) -> list[str]:
    """Per claim over the seeds of `zoo check --seeds`: how many seeds pass, each run's value as mean +- sample std
    (min, max), as `zoo runs --over seed` shows them, and every seed's verdict, from the per-seed results under
    `seed_dir`; written to `<slug>.seeds.md` and `<slug>.seeds.json` in out_dir and returned as printable lines. A
    seed without results (its job failed) shows as missing."""
    from launch.summary import mean_std, mean_std_text

    per_seed: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        path = seed_dir(out_dir, seed) / f"{slug}.json"
        if path.exists():
            per_seed[seed] = {c["claim"]: c for c in json.loads(path.read_text())["claims"]}
    names = list(dict.fromkeys(name for claims in per_seed.values() for name in claims))
    rows, lines = [], []
    table = ["| claim | seeds passing | values over seeds: mean ± std (min, max) | per seed |", "|---|---|---|---|"]
    for name in names:
        results = {seed: per_seed.get(seed, {}).get(name) for seed in seeds}
        found = {seed: r for seed, r in results.items() if r is not None}
        runs = list(dict.fromkeys(k for r in found.values() for k in r["measured"]))
        stats, texts = {}, []
        for run in runs:
            values = [float(r["measured"][run]) for r in found.values() if run in r["measured"]]
            mean, std = mean_std(values)
            stats[run] = {"mean": mean, "std": None if len(values) < 2 else std, "min": min(values),
                          "max": max(values), "n": len(values)}
            texts.append(f"{run} {mean_std_text(values)} ({min(values):.4g}, {max(values):.4g})")
        passing = sum(r["passed"] for r in found.values())
        verdicts = {seed: (r["verdict"] if r is not None else "missing") for seed, r in results.items()}
        rows.append({"claim": name, "passing": passing, "verdicts": verdicts, "values": stats,
                     "expect": next(iter(found.values()))["expect"]})
        values_text = "; ".join(texts)
        per_seed_text = ", ".join(f"{seed}: {v}" for seed, v in verdicts.items())
        table.append(f"| {name} | {passing}/{len(seeds)} | {values_text} | {per_seed_text} |")
        lines.append(f"{slug}/{name}: {passing}/{len(seeds)} seeds pass ({values_text}; {per_seed_text})")
    header = f"# zoo check {slug} --seeds {','.join(map(str, seeds))}"
    (out_dir / f"{slug}.seeds.md").parent.mkdir(parents=True, exist_ok=True)
    _write_results_files({out_dir / f"{slug}.seeds.md": "\n".join([header, "", *table]) + "\n",
                          out_dir / f"{slug}.seeds.json": json.dumps({"slug": slug, "seeds": seeds, "claims": rows},
                                                                     indent=2)})
    return lines


def status(slug: str, out_dir: Path, n_claims: int | None = None) -> str:
    """Claim status for `zoo list`: from the last `zoo check` results written under out_dir; of `n_claims` (the
    config's), those without a result are counted as not checked. An unreadable results file says so."""
    path = out_dir / f"{slug}.json"
    if not path.exists():
        return "not checked"
    try:
        data = json.loads(path.read_text())
        claims = list(data["claims"])
        n = len(claims)
        ok = sum(bool(c["passed"]) for c in claims)
        gaps = sum(c.get("verdict") == "KNOWN GAP" for c in claims)
        days = sorted({str(c.get("when", data.get("when", "?")))[:10] for c in claims} or {str(data.get("when"))[:10]})
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"results unreadable ({path.name}: {type(err).__name__})"
    gap_text = f", {gaps} known gap" if gaps else ""
    unchecked = (n_claims - n) if n_claims is not None and n_claims > n else 0
    gap_text += f", {unchecked} not checked" if unchecked else ""
    extra = f", with {' '.join(data['overrides'])}" if data.get("overrides") else ""
    when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"  # claims rerun alone keep their own date
    return f"{ok}/{n} pass{gap_text} ({when}{extra})"
