"""Trajectories of chaotic flows and maps for dynamical-systems-reconstruction papers (GTF-shPLRNN, ...).

``DystsDataModule(name="Lorenz")`` integrates any ``dysts.flows.<Name>`` offline (no network), or iterates any
discrete map ``dysts.maps.<Name>`` (``name="Henon"``, ``"Logistic"``, ...):

- ``num_trajectories`` trajectories of ``n_points`` samples each with ``make_trajectory(n,
  pts_per_period=..., resample=True, method=..., rtol=..., atol=...)``. Trajectory 0 starts from the system's
  default ``ic`` (the paper card's offline default); trajectory k > 0 starts from the default ``ic`` plus a
  Gaussian perturbation of relative size ``ic_scale`` drawn from ``numpy.random.default_rng((seed, k))``,
  followed by ``burn_in`` discarded samples so that it starts on the attractor. Integration is deterministic,
  so the data depend only on the arguments (and are cached per process).
- Maps: ``make_trajectory(n)`` iterates the map n times from the initial condition (the first sample is one step
  after it); a map has no time step, so the granularity arguments ``pts_per_period``, ``method``, ``rtol`` and
  ``atol`` do not apply and are ignored. Initial conditions, burn-in, splits, standardisation, noise and batches
  are as for flows, except that a perturbed start outside the map's basin (it diverges: the Henon map's basin is
  thin, the logistic map's is [0, 1]) is redrawn from the same generator, so the data stay deterministic by seed.
  Names resolve to flows first: ``Duffing`` is the flow, the map of the same name is ``maps.Duffing``
  (``flows.<Name>`` / ``maps.<Name>`` are always accepted); an unknown name is a one-line error with close matches.
- Split by time: the first ``train_points`` samples of every training trajectory are train, the next
  ``val_points`` are validation and the rest is test. ``val_points = 0`` (the default) validates on the test
  segment: a choice for the CPU-scale runs, which select nothing on validation (the GTF paper's code has no
  validation split: its in-training monitor free-runs from the training data's first point and scores against
  the training data, and the test file is used only after training, on the latest checkpoint, by
  ``evaluate_experiment``). The GTF module refuses a val/ metric as checkpoint.monitor or early-stopping monitor
  then. Split by trajectory: the last ``heldout_trajectories`` trajectories are never trained on and are test data
  in full (validation uses only the training trajectories' validation segments, or the test segments when
  ``val_points = 0``).
- Standardisation (z-score per dimension) is fitted on the clean train segments only and applied to all.
- Observation noise: ``noise`` standard deviations (in z-units, 0.05 = the paper's 5 %) of Gaussian noise
  added to the train segments only (card), drawn with a fixed seed.
- Training batches: ``steps_per_epoch`` batches of ``batch_size`` random subsequences of length ``seq_len``,
  a tensor (B, T, N), from a generator seeded by (seed, epoch, rank); the epoch is Lightning's
  ``fit_loop.epoch_progress.current.processed`` when a trainer is attached. ``seq_len_plus_one=true`` draws
  ``seq_len + 1`` points instead, as the official ``sample_sequence`` (src/tf_training/dataset.jl: X[i:i+T], so
  ``sequence_length`` = T is the number of predicted steps); default false: ``seq_len`` points, seq_len - 1 steps.
- Validation / test: one item per evaluation segment, ``{"x": (1, T_seg, N)}``, for free-running evaluation
  from its first point.

``TrajectoryFileDataModule(name="ECG")`` reads the GTF paper's real data instead: a train and a test ``.npy``
file, each one T x N float array (the official `Dataset`, `npzread`), from the official repository's folder
``ICML2023_datasets/`` (Lorenz63 with 5 % observation noise, ECG as a 5-d PECUZAL delay embedding) through
``datamodules.download.fetch`` (checksums not verified upstream: trust on first use), or from ``data_dir``. Used as
is, as the official code (``standardize=true`` z-scores both with the train file's statistics). Batches and
evaluation items as above: random train subsequences, the whole test file for free-running evaluation
(validation = test here, as for dysts with ``val_points = 0``; the official code has no validation split and
scores the test file only after training).
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules.context import sampling_context
from datamodules.data_files import load_npy, require_finite
from datamodules.resumable import ResumableDataLoader
from launch.errors import UserError, check_choice, check_min

warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
warnings.filterwarnings("ignore", message=r"Numba not installed")

__all__ = ["GTF_FILES", "DystsDataModule", "SubsequenceBatches", "TrajectoryFileDataModule", "dysts_systems",
           "load_npy_series", "make_trajectories", "window_length"]

GTF_REPO_RAW = "https://raw.githubusercontent.com/DurstewitzLab/GTF-shPLRNN/HEAD/ICML2023_datasets"
# name -> (train file, test file, N, download: files in the official repository's ICML2023_datasets/ folder)
GTF_FILES: dict[str, tuple[str, str, int | None, bool]] = {
    "Lorenz63": ("Lorenz63/lorenz63_on0.05_train.npy", "Lorenz63/lorenz63_test.npy", 3, True),
    "ECG": ("ECG/ECG_pecuzal_5d_train.npy", "ECG/ECG_pecuzal_5d_test.npy", 5, True),
    "EEG": ("EEG/EEG_train.npy", "EEG/EEG_test.npy", None, False),  # not in the repository: data_dir only
}


def _seed64(*parts: int) -> int:
    words = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


@functools.lru_cache(maxsize=1)
def dysts_systems() -> dict[str, type]:
    """Every dysts system class by name: flows (``dysts.flows``, continuous, delay equations included), then discrete
    maps (``dysts.maps``) under names no flow uses; ``flows.<Name>`` and ``maps.<Name>`` always."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dysts import flows, maps
        from dysts.base import BaseDyn, DynMap, DynSys, DynSysDelay

    bases = {BaseDyn, DynMap, DynSys, DynSysDelay}
    systems: dict[str, type] = {}
    for module, prefix in ((flows, "flows"), (maps, "maps")):
        for n in dir(module):
            cls = getattr(module, n)
            if n[:1].isupper() and isinstance(cls, type) and issubclass(cls, BaseDyn) and cls not in bases:
                systems.setdefault(n, cls)
                systems[f"{prefix}.{n}"] = cls
    return systems


def is_map(name: str) -> bool:
    """Whether the dysts system ``name`` is a discrete map (no time step: ``pts_per_period`` etc. do not apply)."""
    cls = _system_class(name)  # imports dysts with its warnings silenced
    from dysts.base import DynMap

    return issubclass(cls, DynMap)


def _system_class(name: str) -> type:
    """The dysts class called ``name``; a one-line UserError with the closest names otherwise."""
    import difflib

    systems = dysts_systems()
    if name not in systems:
        close = difflib.get_close_matches(str(name), [n for n in systems if "." not in n], n=4, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see dysts.flows and dysts.maps)"
        raise UserError(f"data: unknown dysts system {name!r}{hint}")
    return systems[name]


def _flow(name: str):
    """A fresh instance of the dysts system ``name`` (flow or map)."""
    return _system_class(name)()


def _trajectory(system, n: int, map_: bool, pts_per_period: int, method: str, rtol: float, atol: float):
    """n samples: a flow integrated and resampled to ``pts_per_period`` points per period, a map iterated n times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if map_:
            return system.make_trajectory(n)
        return system.make_trajectory(n, pts_per_period=pts_per_period, resample=True, method=method, rtol=rtol,
                                      atol=atol)


# the string methods of scipy's solve_ivp, which dysts' make_trajectory integrates flows with
INTEGRATORS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")

MAP_IC_DRAWS = 100  # perturbed map starts drawn (in order, from the same generator) until one stays finite


@functools.lru_cache(maxsize=16)
def make_trajectories(
    name: str, num_trajectories: int, n_points: int, pts_per_period: int, method: str, rtol: float,
    atol: float, ic_scale: float, burn_in: int, seed: int,
) -> np.ndarray:
    """(num_trajectories, n_points, N) float64, deterministic in its arguments (cached per process).

    Trajectory 0 starts at the system's default ic, trajectory k > 0 at a perturbed ic drawn from
    ``default_rng([seed, k])`` and drops ``burn_in`` samples. For a map, ``pts_per_period``, ``method``, ``rtol``
    and ``atol`` are ignored (no time step), and a perturbed start that leaves the basin (diverges) is redrawn from
    the same generator, up to ``MAP_IC_DRAWS`` times; a flow gets one draw."""
    map_ = is_map(name)
    kind = "map" if map_ else "flow"
    out = []
    for k in range(num_trajectories):
        rng = np.random.default_rng([int(seed), k]) if k > 0 else None
        skip = int(burn_in) if k > 0 else 0
        for _ in range(MAP_IC_DRAWS if map_ and k > 0 else 1):
            system = _flow(name)
            if rng is not None:
                ic0 = np.asarray(system.ic, dtype=np.float64)
                system.ic = ic0 + ic_scale * (np.abs(ic0) + 1.0) * rng.standard_normal(ic0.shape)
            with np.errstate(all="ignore"):
                x = _trajectory(system, n_points + skip, map_, pts_per_period, method, rtol, atol)
            if x is not None and np.all(np.isfinite(x)):
                break
        else:
            hint = f" ({MAP_IC_DRAWS} perturbed starts diverged: lower data.ic_scale)" if map_ and k > 0 else ""
            raise UserError(f"data: dysts {kind} '{name}' trajectory {k} failed to integrate{hint}")
        # (n, N); a one-dimensional map comes back as (n,)
        out.append(np.asarray(x, dtype=np.float64).reshape(n_points + skip, -1)[skip:])
    return np.stack(out)


class SubsequenceBatches(IterableDataset):
    """`steps` batches (B, T, N) of random windows of the train segments; seeded by (seed, epoch, rank)."""

    def __init__(self, segments: list[torch.Tensor], seq_len: int, batch_size: int, steps: int, seed: int,
                 context: Callable[[], tuple[int, int, int]]) -> None:
        super().__init__()
        self.segments, self.seq_len, self.batch_size = segments, int(seq_len), int(batch_size)
        self.steps, self.seed, self.context = int(steps), int(seed), context
        for s in segments:
            if s.shape[0] < self.seq_len:
                raise UserError(f"data: seq_len {seq_len} is longer than a train segment ({s.shape[0]} points)")

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch, rank, _ = self.context()
        return self.batches(epoch, rank)

    def batches(self, epoch: int, rank: int = 0) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(_seed64(self.seed, epoch, rank, 0x5EC))
        n_seg = len(self.segments)
        for _ in range(self.steps):
            which = torch.randint(n_seg, (self.batch_size,), generator=gen).tolist()
            u = torch.rand(self.batch_size, generator=gen, dtype=torch.float64).tolist()
            windows = []
            for s, r in zip(which, u):
                seg = self.segments[s]
                start = int(r * (seg.shape[0] - self.seq_len + 1))
                windows.append(seg[start : start + self.seq_len])
            yield torch.stack(windows)


def window_length(hparams) -> int:
    """Points per training window: seq_len, or seq_len + 1 with ``seq_len_plus_one`` (official sample_sequence)."""
    return int(hparams.seq_len) + (1 if hparams.get("seq_len_plus_one", False) else 0)


class _Segments(IterableDataset):
    def __init__(self, segments: list[torch.Tensor]) -> None:
        super().__init__()
        self.segments = segments

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for s in self.segments:
            yield {"x": s.unsqueeze(0)}


class _SegmentLoaders:
    """Loaders shared by the trajectory datamodules: random training windows (``SubsequenceBatches``, reseeded by
    epoch and rank) from ``train_segments``; whole ``val_segments`` / ``test_segments``, one per batch."""

    def train_dataset(self) -> SubsequenceBatches:
        self.setup()
        h = self.hparams
        return SubsequenceBatches(self.train_segments, window_length(h), h.batch_size, h.steps_per_epoch, h.seed,
                                  lambda: sampling_context(self))

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.train_dataset(), batch_size=None, datamodule=self)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(_Segments(self.val_segments), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(_Segments(self.test_segments), batch_size=None)


class DystsDataModule(_SegmentLoaders, L.LightningDataModule):
    def __init__(
        self,
        name: str = "Lorenz",
        n_points: int = 30000,           # card: 30,000 samples, train on the first 20,000, test on the last 10,000
        train_points: int = 20000,
        val_points: int = 0,             # 0: validate on the test segment (nothing selects on it; see the docstring)
        pts_per_period: int = 150,       # dt ~ 0.01 for Lorenz-63 (dysts overrides `dt`)
        method: str = "RK45",
        rtol: float = 1e-9,
        atol: float = 1e-9,
        num_trajectories: int = 1,
        heldout_trajectories: int = 0,   # the last k trajectories are test only
        ic_scale: float = 0.1,
        burn_in: int = 1000,
        noise: float = 0.05,             # observation noise on the train segments, in z-units (paper: 5 %)
        standardize: bool = True,
        seq_len: int = 200,              # T (defaults.json)
        batch_size: int = 16,            # B (defaults.json)
        steps_per_epoch: int = 50,       # batches per epoch (defaults.json)
        seed: int = 0,
        seq_len_plus_one: bool = False,  # official sample_sequence: windows of seq_len + 1 points
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0 < train_points < n_points or val_points < 0 or train_points + val_points >= n_points:
            raise UserError(f"data: need 0 < train_points ({train_points}) and train_points + val_points "
                            f"({train_points + val_points}) < n_points ({n_points})")
        if not 0 <= heldout_trajectories < num_trajectories:
            raise UserError(f"data: heldout_trajectories ({heldout_trajectories}) must be < num_trajectories "
                            f"({num_trajectories})")
        check_min("data", 1, pts_per_period=pts_per_period, batch_size=batch_size, steps_per_epoch=steps_per_epoch)
        check_min("data", 2, seq_len=seq_len)  # as TrajectoryFileDataModule
        check_min("data", 0, burn_in=burn_in, noise=noise, rtol=rtol, atol=atol)  # 0: no burn-in, no noise
        check_min("data", 0, ic_scale=ic_scale)  # 0: every trajectory starts at the system's default ic
        check_choice("data.method", "integrator", method, INTEGRATORS)
        self.name = name
        self.kind = "map" if is_map(name) else "flow"  # maps ignore pts_per_period, method, rtol, atol
        self._loaded = False

    # ---- data --------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        h = self.hparams
        raw = make_trajectories(h.name, int(h.num_trajectories), int(h.n_points), int(h.pts_per_period),
                                h.method, float(h.rtol), float(h.atol), float(h.ic_scale), int(h.burn_in),
                                int(h.seed))
        n_train_traj = int(h.num_trajectories) - int(h.heldout_trajectories)
        t0, t1 = int(h.train_points), int(h.train_points) + int(h.val_points)
        train = [raw[k, :t0] for k in range(n_train_traj)]
        if h.standardize:
            stacked = np.concatenate(train)
            self.mean, self.std = stacked.mean(0), stacked.std(0)
            self.std = np.where(self.std > 0, self.std, 1.0)
        else:
            self.mean, self.std = np.zeros(raw.shape[-1]), np.ones(raw.shape[-1])
        z = (raw - self.mean) / self.std
        train = [z[k, :t0].copy() for k in range(n_train_traj)]
        if h.noise > 0:
            rng = np.random.default_rng([int(h.seed), 0xA015E])
            train = [s + float(h.noise) * rng.standard_normal(s.shape) for s in train]
        test = [z[k, t1:] for k in range(n_train_traj)] + [z[k] for k in range(n_train_traj, z.shape[0])]
        # val_points = 0: validation is the test segment (not the official monitor, which scores the train data)
        val = [z[k, t0:t1] for k in range(n_train_traj)] if h.val_points > 0 else test
        as_t = lambda segs: [torch.as_tensor(np.ascontiguousarray(s), dtype=torch.float32) for s in segs]
        self.train_segments, self.val_segments, self.test_segments = as_t(train), as_t(val), as_t(test)
        self.dim = int(raw.shape[-1])
        self._loaded = True


def load_npy_series(path) -> np.ndarray:
    """A T x N float array (T >= 2, N >= 1) from an ``.npy`` file (the official `Dataset`: 2-d, time first); a
    one-line UserError naming the file when it is not a real numeric .npy array (`datamodules.data_files.load_npy`) or
    holds NaN or infinite values."""
    x = load_npy(path)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise UserError(f"{path}: expected a T x N array with T >= 2 time steps, got shape {x.shape}")
    x = np.array(x, dtype=np.float64)  # a copy: the memory map is released
    require_finite(path, "the series", x)
    return x


class TrajectoryFileDataModule(_SegmentLoaders, L.LightningDataModule):
    """The GTF paper's real data sets (``GTF_FILES``): train / test ``.npy`` files (T x N), see the module docstring.

    Args:
        name: a key of ``GTF_FILES`` (Lorenz63, ECG downloadable; EEG through ``data_dir`` only).
        data_dir: folder holding the files under their repository paths (``ECG/ECG_pecuzal_5d_train.npy``) or
            flat (``ECG_pecuzal_5d_train.npy``); no download then.
        train_url / test_url: download URLs overriding the repository's.
        standardize: z-score both files with the train file's mean / std (the official code: false).
        seq_len, batch_size, steps_per_epoch: train subsequences (T, B) and batches per epoch (defaults.json).
        seq_len_plus_one: windows of seq_len + 1 points, seq_len predicted steps (official `sample_sequence`).
    """

    def __init__(
        self,
        name: str = "ECG",
        data_dir: str | None = None,
        train_url: str | None = None,
        test_url: str | None = None,
        standardize: bool = False,
        seq_len: int = 200,
        batch_size: int = 16,
        steps_per_epoch: int = 50,
        seed: int = 0,
        seq_len_plus_one: bool = False,
    ) -> None:
        super().__init__()
        check_choice("data.name", "GTF data set", name, GTF_FILES)
        if int(seq_len) < 2 or int(batch_size) < 1 or int(steps_per_epoch) < 1:
            raise UserError("data: need seq_len >= 2, batch_size >= 1 and steps_per_epoch >= 1")
        self.save_hyperparameters()
        self.name = name
        self._loaded = False

    def _path(self, which: int) -> Path:
        rel = GTF_FILES[self.name][which]
        if self.hparams.data_dir:
            root = Path(self.hparams.data_dir).expanduser()
            for cand in (root / rel, root / Path(rel).name):
                if cand.is_file():
                    return cand
            raise UserError(f"data.data_dir: neither {root / rel} nor {root / Path(rel).name} exists")
        url = self.hparams.train_url if which == 0 else self.hparams.test_url
        if url is None and GTF_FILES[self.name][3]:
            url = f"{GTF_REPO_RAW}/{rel}"
        if url is None:
            raise UserError(f"data set {self.name!r} has no download link (not in DurstewitzLab/GTF-shPLRNN): pass "
                            f"data.data_dir=<folder with {Path(rel).name}>")
        from datamodules.download import DownloadError, fetch

        try:
            return fetch(url, filename=Path(rel).name, subdir="gtf_plrnn")
        except DownloadError as e:
            raise UserError(str(e)) from None

    def prepare_data(self) -> None:
        self._path(0)
        self._path(1)

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        h = self.hparams
        train, test = load_npy_series(self._path(0)), load_npy_series(self._path(1))
        expected = GTF_FILES[self.name][2]
        for label, x in (("train", train), ("test", test)):
            if expected is not None and x.shape[1] != expected:
                raise UserError(f"{self.name} {label} file: expected {expected} dimensions, got {x.shape[1]}")
        if train.shape[1] != test.shape[1]:
            raise UserError(f"{self.name}: train and test files differ in dimension ({train.shape[1]} vs "
                            f"{test.shape[1]})")
        if h.standardize:
            self.mean, self.std = train.mean(0), train.std(0)
            self.std = np.where(self.std > 0, self.std, 1.0)
        else:
            self.mean, self.std = np.zeros(train.shape[1]), np.ones(train.shape[1])
        as_t = lambda x: torch.as_tensor(np.ascontiguousarray((x - self.mean) / self.std), dtype=torch.float32)
        self.train_segments, self.test_segments = [as_t(train)], [as_t(test)]
        self.val_segments = self.test_segments  # no validation file: validation = test (model selection refused)
        self.dim = int(train.shape[1])
        self._loaded = True
