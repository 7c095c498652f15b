"""Compose Hydra configs from the packaged `configs/` tree, with one-line errors for bad input."""
from __future__ import annotations

import difflib
import itertools
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from launch.errors import UserError

CONFIG_MODULE = "configs"
GROUPS = ("experiment", "data", "model", "trainer", "launcher", "logger", "debug")


def config_root() -> Path:
    """The installed `configs/` directory (package data, so it works after a plain install)."""
    return Path(str(resources.files(CONFIG_MODULE)))


def options(group: str) -> list[str]:
    """Names selectable in a config group, nested ones as `a/b` (e.g. `lightgcn/gowalla`); `_name` files are shared
    defaults of the others (`trainer/_base`), not options."""
    root = config_root() / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_"))


def option_keys(group: str, option: str) -> list[str]:
    """The dotted keys that a group option's own file sets (`trainer/gpu.yaml`: trainer.accelerator, trainer.devices,
    trainer.strategy), not those it inherits through its `defaults` list; [] for an unknown option."""
    from launch.runs import leaves

    path = config_root() / group / f"{option}.yaml"
    if not path.is_file():
        return []
    own = OmegaConf.load(path)
    with open_dict(own):
        own.pop("defaults", None)
    return leaves(own, group)


def experiments() -> list[str]:
    """Top-level experiments: one per paper (variants live in `experiment/<slug>/`)."""
    return sorted(p.stem for p in (config_root() / "experiment").glob("*.yaml"))


def variants_with_claims() -> list[str]:
    """Experiment variants `<slug>/<name>` whose own file declares `claims:` (e.g. `medida/qg`)."""
    root = config_root() / "experiment"
    found = []
    for path in sorted(root.glob("*/*.yaml")):
        if OmegaConf.load(path).get("claims"):
            found.append(path.relative_to(root).with_suffix("").as_posix())
    return found


def _closest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


def _all_keys(cfg, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            path = f"{prefix}{key}"
            keys.append(path)
            node = cfg._get_node(key)
            if isinstance(node, DictConfig):
                keys.extend(_all_keys(node, path + "."))
    return keys


def _check_overrides(overrides: list[str]) -> None:
    """Validate group choices before Hydra, so that the error names the closest valid options."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException as OverrideParseException

    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except OverrideParseException as err:
            first = str(err).strip().splitlines()[0]
            raise UserError(f"malformed override '{text}': {first}") from None
        key = override.key_or_group.lstrip("+~")
        if not key:
            raise UserError(f"malformed override '{text}': no key before '='")
        if key in GROUPS and not override.is_sweep_override() and override.value() is not None:
            value = str(override.value())
            valid = options(key)
            if value not in valid:
                raise UserError(f"unknown {key} '{value}'{_closest(value, valid)}; `zoo list` shows all")


# free-form mappings (null or {} in the config): a key under them is set as given, `early_stopping.patience=10` or
# `launcher.additional_parameters.reservation=foo`, without Hydra's `+` for a key the config does not have yet
OPEN_MAPPINGS = ("early_stopping", "launcher.additional_parameters")


def _open_mapping_override(text: str) -> str:
    key = text.split("=", 1)[0]
    if "=" in text and any(key == m or key.startswith(m + ".") for m in OPEN_MAPPINGS):
        return "++" + text  # Hydra's "set, adding the key if missing"
    return text


def compose(overrides: list[str]) -> DictConfig:
    """Compose `train.yaml` with command-line overrides; return a config with `experiment_name` set."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _check_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=[_open_mapping_override(o) for o in overrides],
                                return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(_explain(err, overrides)) from None
    choice = cfg.hydra.runtime.choices.get("experiment")
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.experiment_name = (choice or "default").replace("/", "-")
    if cfg.get("model") is None or cfg.get("data") is None:
        raise UserError(f"no model/data selected: pass experiment=<slug>{_closest('', experiments())} "
                        f"(one of: {', '.join(experiments())})")
    check_resolves(cfg)
    return cfg


def check_resolves(cfg: DictConfig) -> None:
    """Every interpolation resolves (e.g. `trainer.max_epochs=${oops}` does not): a one-line error before anything
    is built, not an InterpolationKeyError from deep inside the trainer."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise UserError(f"{key + ': ' if key else ''}{str(err).splitlines()[0]}") from None


def _explain(err: Exception, overrides: list[str]) -> str:
    message = " ".join(str(err).split())
    # Hydra: "Could not override 'model.foo'. ... Key 'foo' is not in struct"
    for text in overrides:
        key = text.split("=", 1)[0].lstrip("+~")
        if f"'{key}'" in message and ("not in struct" in message or "Could not override" in message):
            base = _safe_base(overrides)
            return f"unknown config key '{key}'{_closest(key, _all_keys(base) if base is not None else [])}" \
                   f" (prefix it with + to add a new key)"
    return message.split(" full_key:")[0][:400]


def _safe_base(overrides: list[str]):
    """The config composed from the group choices alone, for suggesting key names."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    groups = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return hydra_compose(config_name="train", overrides=groups)
    except Exception:  # noqa: BLE001 - only used to improve an error message
        return None


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Cartesian product of sweep overrides (`key=a,b`, `key=range(...)`), as Hydra's basic sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException as OverrideParseException

    parser = OverridesParser.create()
    axes: list[list[str]] = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except OverrideParseException as err:
            raise UserError(f"malformed override '{text}': {str(err).strip().splitlines()[0]}") from None
        if override.is_sweep_override():
            key = override.get_key_element()
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([text])
    return [list(combo) for combo in itertools.product(*axes)]


def sweep_values(override: str) -> list[str]:
    """The value(s) of one `key=...` override as compose reads them (quotes removed): one value, or each value of a
    sweep (`a,b`, `'a','b'`, `choice(a,b)`, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    values = [parser.parse_override(combo[0]).value() for combo in expand_sweep([override])]
    return ["" if value is None else str(value) for value in values]


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
