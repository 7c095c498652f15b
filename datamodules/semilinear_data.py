"""Trajectories of 1D semilinear PDEs with sparse noisy measurements, for prediction + data assimilation (NODA).

``SemilinearDataModule(name="ks")`` (the offline default, card `semilinear_operator`): Kuramoto-Sivashinsky on a
periodic domain of length ``domain_length`` = 22 with ``grid`` = 64 points, ETDRK4 with h = ``solver_dt`` = 0.25
(``datamodules.pde_solvers``), random smooth initial conditions (4 lowest Fourier modes, amplitude 0.5). The first
``burn_in_time`` = 100 time units are discarded, then a frame is saved every ``save_every`` = 8 solver steps
(Delta t = 2) for ``n_frames`` = 150 frames. ``n_train`` + ``n_test`` trajectories advance together in numpy;
the data are deterministic in the arguments and cached per process. ``name="kdv"`` integrates KdV instead
(domain 40, random sums of two solitons; not a card default).

2D (paper Sec. 4, Navier-Stokes vorticity on the periodic unit square, states (grid, grid)):
- ``name="ns"``: generated offline by ``datamodules.navier_stokes`` (the FNO benchmark's equation, forcing and
  random initial vorticity; ``viscosity``, ``solver_dt``, a frame every ``save_every`` steps after ``burn_in_time``).
- ``name="ns_fno"``: the FNO benchmark's own file (``file``, default ``NavierStokes_V1e-5_N1200_T20.mat``, key ``u``
  of shape (N, 64, 64, T); MATLAB v5 through scipy or v7.3/HDF5 through h5py), from ``data_dir`` or ``url``. The
  files are linked from Google Drive in the zongyi-li/fourier_neural_operator README (no stable direct URL, no
  published checksum): download one and pass ``data.data_dir=<folder>``.

Measurements y_k = C u_k + noise: C keeps a fixed random ``obs_fraction`` of the grid points (drawn once from
``seed``; default 1, the whole grid: the paper measures y(t) = u(t) + noise, C the identity, as its OpenReview
reviewers describe it; the card's offline default was 25 % of the points), Gaussian noise of std ``noise`` * std(u)
(std over the training trajectories). Measurement
availability in time (alpha) is the model's business; the data give y at every frame.

- Training: ``steps_per_epoch`` batches of ``batch_size`` random windows of ``unroll`` frames, with fresh noise,
  drawn from a generator seeded by (seed, epoch, rank) (``datamodules.context.sampling_context``).
  Items: ``{"u": (T, N) truth, "y": (T, N) noisy measurements (0 off the sensors), "mask": (N,) sensor mask}``.
- Validation and test: the ``n_test`` held-out trajectories in full (frames 0 .. n_frames-1), with noise drawn
  once from a fixed seed; validation uses the test trajectories (the card has no validation split).
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from datamodules.context import sampling_context, worker_share
from datamodules.navier_stokes import navier_stokes_2d, random_vorticity
from datamodules.pde_solvers import kdv_etdrk4, ks_etdrk4, random_ks_initial_condition
from datamodules.resumable import ResumableDataLoader
from datamodules.samplers import eval_sampler
from launch.errors import UserError, check_min, check_positive, one_line

warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")

__all__ = ["SemilinearDataModule", "make_pde_trajectories"]

NAMES = ("ks", "kdv", "ns", "ns_fno")
FNO_NS_DEFAULT_FILE = "NavierStokes_V1e-5_N1200_T20.mat"


def load_fno_navier_stokes(path, n: int) -> np.ndarray:
    """The first n trajectories of an FNO-benchmark Navier-Stokes file as (n, T, H, W) float32. MATLAB stores `u` as
    (N, H, W, T); v7.3 files are HDF5, where h5py sees the axes reversed. A missing, unreadable (corrupt, truncated)
    or misshapen file, one whose u is not real numbers (complex included), or one whose n trajectories hold NaN or
    infinite values, is a one-line UserError naming it."""
    from scipy.io import loadmat

    from datamodules.data_files import mat_read_errors, require_finite, require_real

    errors = mat_read_errors()
    try:
        u = loadmat(str(path), variable_names=["u"]).get("u")
    except NotImplementedError:  # MATLAB v7.3
        u = _read_h5_u(path, n, errors)
    except errors as err:
        raise UserError(f"data: cannot read {path} as a .mat file ({one_line(err, 160)})") from None
    else:
        if u is None:
            raise UserError(f"data: {path} has no variable 'u' (an FNO Navier-Stokes file has u of shape N x H x W x T)")
        u = np.asarray(u[:n])
    if u.ndim != 4:
        raise UserError(f"data: {path}: u has shape {u.shape}, expected N x H x W x T")
    require_real(path, "u", u)  # (complex: a float cast would drop the imaginary part with only a warning)
    u = np.ascontiguousarray(u.transpose(0, 3, 1, 2), dtype=np.float32)
    require_finite(path, "u", u)
    return u


def _read_h5_u(path, n: int, errors: tuple[type[BaseException], ...]) -> np.ndarray:
    """`u` of a MATLAB v7.3 (HDF5) file, first n trajectories, in MATLAB's axis order (N, H, W, T)."""
    try:
        import h5py
    except ImportError:
        raise UserError(f"data: {path} is a MATLAB v7.3 (HDF5) file: install h5py to read it") from None
    try:
        with h5py.File(path, "r") as f:
            if not isinstance(f.get("u"), h5py.Dataset):
                raise UserError(f"data: {path} has no dataset 'u'")
            if f["u"].ndim != 4:  # h5py's axes are MATLAB's reversed
                raise UserError(f"data: {path}: u has shape {f['u'].shape[::-1]}, expected N x H x W x T")
            return np.asarray(f["u"][..., :n]).transpose(3, 2, 1, 0)
    except errors as err:
        raise UserError(f"data: cannot read {path} as a MATLAB v7.3 (HDF5) file ({one_line(err, 160)})") from None


@functools.lru_cache(maxsize=8)
def make_pde_trajectories(name: str, n_traj: int, grid: int, domain_length: float, solver_dt: float,
                          save_every: int, burn_in_time: float, n_frames: int, seed: int,
                          viscosity: float = 1e-3) -> np.ndarray:
    """(n_traj, n_frames, grid) (1D) or (n_traj, n_frames, grid, grid) (ns), deterministic in its arguments (cached
    per process)."""
    burn = round(burn_in_time / solver_dt)
    burn -= burn % save_every
    n_steps = burn + n_frames * save_every
    if name == "ks":
        u0 = random_ks_initial_condition(n_traj, domain_length, seed, N=grid)
        u = ks_etdrk4(u0, domain_length, solver_dt, n_steps, save_every)
    elif name == "kdv":
        rng = np.random.default_rng(seed)
        x = np.arange(grid) * domain_length / grid
        u0 = np.zeros((n_traj, grid))
        for _ in range(2):
            c = rng.uniform(0.5, 2.0, size=(n_traj, 1))
            x0 = rng.uniform(0.0, domain_length, size=(n_traj, 1))
            d = (x[None] - x0 + domain_length / 2) % domain_length - domain_length / 2
            u0 += c / 2 / np.cosh(np.sqrt(c) / 2 * d) ** 2
        u = kdv_etdrk4(u0, domain_length, solver_dt, n_steps, save_every)
    elif name == "ns":
        u = navier_stokes_2d(random_vorticity(n_traj, grid, seed), viscosity, solver_dt, n_steps, save_every)
    else:
        raise UserError(f"data: unknown semilinear PDE '{name}' (known: {', '.join(NAMES)})")
    return u[:, burn // save_every:]


class WindowBatches(IterableDataset):
    """`steps_per_epoch` batches of random windows with fresh measurement noise, seeded per (seed, epoch, rank)."""

    def __init__(self, u: torch.Tensor, mask: torch.Tensor, sigma: float, unroll: int, batch_size: int,
                 steps_per_epoch: int, seed: int, datamodule=None) -> None:
        self.u, self.mask, self.sigma = u, mask, sigma
        self.unroll, self.batch_size, self.steps_per_epoch, self.seed = unroll, batch_size, steps_per_epoch, seed
        self.datamodule = datamodule

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, rank, _ = sampling_context(self.datamodule)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch, rank]).generate_state(1)[0]))
        n_traj, n_frames = self.u.shape[:2]
        worker, workers = worker_share()  # each worker draws every batch (one random stream) and yields its share
        for b in range(self.steps_per_epoch):
            traj = torch.randint(0, n_traj, (self.batch_size,), generator=g)
            start = torch.randint(0, n_frames - self.unroll + 1, (self.batch_size,), generator=g)
            idx = start[:, None] + torch.arange(self.unroll)
            u = self.u[traj[:, None], idx]  # B x T x N
            y = (u + self.sigma * torch.randn(u.shape, generator=g)) * self.mask
            if b % workers == worker:
                yield {"u": u, "y": y, "mask": self.mask.expand(self.batch_size, *self.mask.shape)}


class FullTrajectories(Dataset):
    def __init__(self, u: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> None:
        self.u, self.y, self.mask = u, y, mask

    def __len__(self) -> int:
        return len(self.u)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"u": self.u[i], "y": self.y[i], "mask": self.mask}


class SemilinearDataModule(L.LightningDataModule):
    def __init__(self, name: str = "ks", grid: int = 64, domain_length: float = 22.0, solver_dt: float = 0.25,
                 save_every: int = 8, burn_in_time: float = 100.0, n_frames: int = 150, n_train: int = 256,
                 n_test: int = 32, obs_fraction: float = 1.0, noise: float = 0.1, unroll: int = 10,
                 batch_size: int = 16, eval_batch_size: int = 32, steps_per_epoch: int = 250,
                 num_workers: int = 0, seed: int = 0, viscosity: float = 1e-3, file: str = FNO_NS_DEFAULT_FILE,
                 data_dir: str | None = None, url: str | None = None) -> None:
        super().__init__()
        if name not in NAMES:
            raise UserError(f"data: unknown semilinear PDE '{name}' (known: {', '.join(NAMES)})")
        if not 0.0 < obs_fraction <= 1.0:
            raise UserError(f"data.obs_fraction must be in (0, 1], got {obs_fraction}")
        check_min("data", 1, grid=grid, save_every=save_every, n_frames=n_frames, n_train=n_train, n_test=n_test,
                  batch_size=batch_size, eval_batch_size=eval_batch_size, steps_per_epoch=steps_per_epoch)
        check_min("data", 2, unroll=unroll)  # one frame is only the first correction: the predictor never trains
        check_min("data", 0, burn_in_time=burn_in_time, noise=noise, num_workers=num_workers, viscosity=viscosity)
        check_positive("data", domain_length=domain_length, solver_dt=solver_dt)
        if unroll > n_frames:
            raise UserError(f"data.unroll ({unroll}) must be <= data.n_frames ({n_frames})")
        self.save_hyperparameters()
        self.hp = self.hparams
        self.mask: torch.Tensor | None = None

    @property
    def frame_dt(self) -> float:
        return self.hp.solver_dt * self.hp.save_every

    def _fno_file(self):
        hp = self.hp
        if hp.data_dir is not None:
            from pathlib import Path

            path = Path(hp.data_dir).expanduser() / hp.file
            if not path.is_file():
                raise UserError(f"data: {path} not found (download {hp.file} from the FNO README's Google Drive)")
            return path
        if hp.url is None:
            raise UserError(f"data: ns_fno needs data.data_dir=<folder with {hp.file}> or data.url=<url>")
        from datamodules.download import fetch

        return fetch(hp.url, filename=hp.file, subdir="fno")

    def prepare_data(self) -> None:
        if self.hp.name == "ns_fno":
            self._fno_file()

    def setup(self, stage: str | None = None) -> None:
        if self.mask is not None:
            return
        hp = self.hp
        n = hp.n_train + hp.n_test
        if hp.name == "ns_fno":
            u = load_fno_navier_stokes(self._fno_file(), n)
            if len(u) < n:
                raise UserError(f"data: {hp.file} holds {len(u)} trajectories, n_train + n_test = {n}")
            u = u[:, : hp.n_frames]
        else:
            u = make_pde_trajectories(hp.name, n, hp.grid, float(hp.domain_length), float(hp.solver_dt),
                                      hp.save_every, float(hp.burn_in_time), hp.n_frames, hp.seed, float(hp.viscosity))
            if not np.isfinite(u).all():
                raise UserError(f"data: the {hp.name} solver diverged at data.solver_dt={hp.solver_dt}: lower it (and "
                                "raise data.save_every to keep the frame spacing)")
        space = u.shape[2:]
        rng = np.random.default_rng([hp.seed, 1])
        n_points = int(np.prod(space))
        n_obs = max(1, round(hp.obs_fraction * n_points))
        mask = np.zeros(n_points, dtype=np.float32)
        mask[rng.choice(n_points, n_obs, replace=False)] = 1.0
        self.mask = torch.from_numpy(mask.reshape(space))
        self.u_train = torch.from_numpy(u[: hp.n_train]).float()
        self.u_test = torch.from_numpy(u[hp.n_train:]).float()
        self.sigma = float(hp.noise * u[: hp.n_train].std())
        noise = np.random.default_rng([hp.seed, 2]).standard_normal(self.u_test.shape).astype(np.float32)
        self.y_test = (self.u_test + self.sigma * torch.from_numpy(noise)) * self.mask

    def train_dataloader(self) -> DataLoader:
        ds = WindowBatches(self.u_train, self.mask, self.sigma, self.hp.unroll, self.hp.batch_size,
                           self.hp.steps_per_epoch, self.hp.seed, self)
        return ResumableDataLoader(ds, batch_size=None, num_workers=self.hp.num_workers, datamodule=self)

    def _eval_loader(self) -> DataLoader:
        dataset = FullTrajectories(self.u_test, self.y_test, self.mask)
        return DataLoader(dataset, batch_size=self.hp.eval_batch_size, sampler=eval_sampler(dataset),
                          num_workers=self.hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()
