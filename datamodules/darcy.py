"""Darcy flow data (card `mgno`): -div(a grad u) = f on (0, 1)^2, u = 0 on the boundary.

Offline default (`name="offline"`, no network):
- coefficient a = a_high where a Gaussian random field is >= 0, else a_low (FNO convention: the field has the
  spectrum (4 pi^2 |k|^2 + tau^2)^(-alpha), alpha = 2, tau = 3, zero mean; a_high = 12, a_low = 3);
- 5-point cell-centred finite-volume discretisation on an n x n grid of cells (h = 1/n): the flux through an interior
  face uses the harmonic mean 2 a_P a_N / (a_P + a_N) of the two cell values, a boundary face the cell value with the
  half-cell distance h/2 (u = 0 on the wall); the sparse system is solved with `scipy.sparse.linalg.spsolve`.
  The card writes a vertex grid with 63^2 interior unknowns; a cell-centred grid gives the network the n x n
  (n = 64) array the multigrid needs directly, with the Dirichlet wall exactly where zero padding puts it.
- samples are generated once and cached as .npz under `cache_dir` (default `$PAPERZOO_DATA/darcy`, i.e. the
  download cache of `datamodules/download.py`).

Real data (`name="piececonst_smooth"`): the FNO Darcy files `piececonst_r421_N1024_smooth1.mat` (train) and
`..._smooth2.mat` (test), keys `coeff` and `sol` (N x 421 x 421, vertex grid including the boundary), fetched through
`datamodules.download.fetch` (checksum not verified: trust on first use; the default `FNO_DARCY_URL`, NAS-Bench-360's
S3 mirror, may be dead, see there: `data_dir` then) and subsampled by `sampling_rate` (2 -> 211 x 211, as MgNO's
`--sample_x`). Complex or non-numeric arrays, and NaN or infinite values in the subsampled samples, are refused
(`datamodules.data_files.require_real`, `require_finite`).

Both, `normalizer_type=null` (default): inputs z-scored with the training mean/std of a, outputs divided by the
training std of u. The official normalisers (`official_normalizers`): `normalizer_type` "GN" (utilities3
GaussianNormalizer: one mean / std) or "PGN" (UnitGaussianNormalizer: mean / std per grid point over the training
samples), std unbiased + 1e-5; inputs encoded when `encode_inputs` (official `--GN`), outputs left raw, and the
solutions' statistics kept as `output_stats` for the model's output decoder (MgNO `model.output_normalizer=true`,
official `--normalizer`).
Batches: {"x": (B, 1, H, W) coefficient, "y": (B, 1, H, W) solution}.
"""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.data_files import DataFileError, read_mat_arrays, require_finite, require_real
from datamodules.data_files import load_npy, mat_read_errors  # noqa: F401 (re-exported: they lived here)
from datamodules.resumable import CheckpointedShuffle, ResumableDataLoader
from datamodules.samplers import eval_sampler
from launch.errors import UserError, check_min

# NAS-Bench-360's S3 mirror of the FNO Google-Drive files; possibly dead: the NAS-Bench-360 README
# (rtu715/NAS-Bench-360, Oct 2022) lists these as "old links, use the shared drive" (a Google-Drive folder, no direct
# file URL) while its AWS resources move to the Open Data Sponsorship program. If the fetch fails, download the two
# files from that drive (or the FNO authors' Drive) and pass data.data_dir.
FNO_DARCY_URL = "https://pde-xd.s3.amazonaws.com/{file}"
FNO_DARCY_FILES = {"train": "piececonst_r421_N1024_smooth1.mat", "test": "piececonst_r421_N1024_smooth2.mat"}
DATASETS = ("offline", "piececonst_smooth")


# ------------------------------------------------------------------------------------------------- solver
def face_transmissibilities(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic-mean face coefficients of an (n, n) cell array: (tx (n-1, n) between rows i, i+1;
    ty (n, n-1) between columns j, j+1)."""
    tx = 2.0 * a[1:, :] * a[:-1, :] / (a[1:, :] + a[:-1, :])
    ty = 2.0 * a[:, 1:] * a[:, :-1] / (a[:, 1:] + a[:, :-1])
    return tx, ty


def darcy_matrix(a: np.ndarray):
    """Sparse (n^2, n^2) CSR matrix of the cell-centred FV operator -div(a grad .) with u = 0 on the wall
    (row-major cell index i * n + j; divided by h^2, so A u = f)."""
    import scipy.sparse as sp

    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    if a.shape != (n, n):
        raise ValueError(f"coefficient must be square, got {a.shape}")
    if np.any(a <= 0):
        raise ValueError("coefficient must be positive")
    h2 = (1.0 / n) ** 2
    tx, ty = face_transmissibilities(a)
    idx = np.arange(n * n).reshape(n, n)
    diag = np.zeros((n, n))
    diag[1:, :] += tx
    diag[:-1, :] += tx
    diag[:, 1:] += ty
    diag[:, :-1] += ty
    # boundary faces: flux a_P (u_P - 0) / (h/2) -> coefficient 2 a_P
    diag[0, :] += 2 * a[0, :]
    diag[-1, :] += 2 * a[-1, :]
    diag[:, 0] += 2 * a[:, 0]
    diag[:, -1] += 2 * a[:, -1]
    rows = [idx.ravel(), idx[1:, :].ravel(), idx[:-1, :].ravel(), idx[:, 1:].ravel(), idx[:, :-1].ravel()]
    cols = [idx.ravel(), idx[:-1, :].ravel(), idx[1:, :].ravel(), idx[:, :-1].ravel(), idx[:, 1:].ravel()]
    vals = [diag.ravel(), -tx.ravel(), -tx.ravel(), -ty.ravel(), -ty.ravel()]
    mat = sp.coo_matrix((np.concatenate(vals) / h2, (np.concatenate(rows), np.concatenate(cols))), shape=(n * n,) * 2)
    return mat.tocsr()


def solve_darcy(a: np.ndarray, f: np.ndarray | float = 1.0) -> np.ndarray:
    """u (n, n) on the cell centres solving the FV system for coefficient a and source f (array or constant)."""
    from scipy.sparse.linalg import spsolve

    n = a.shape[0]
    rhs = np.broadcast_to(np.asarray(f, dtype=np.float64), (n, n)).ravel()
    return spsolve(darcy_matrix(a).tocsc(), rhs).reshape(n, n)


def gaussian_random_field(n: int, rng: np.random.Generator, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """Periodic zero-mean GRF on an n x n grid with spectrum (4 pi^2 |k|^2 + tau^2)^(-alpha) (FNO `GaussianRF`);
    only its sign is used, so the overall scale is left out."""
    k = np.fft.fftfreq(n, d=1.0 / n)
    kx, ky = np.meshgrid(k, k, indexing="ij")
    amp = (4 * np.pi**2 * (kx**2 + ky**2) + tau**2) ** (-alpha / 2)
    amp[0, 0] = 0.0
    xi = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    return np.real(np.fft.ifft2(amp * xi))


def piecewise_coefficient(n: int, rng: np.random.Generator, a_high: float = 12.0, a_low: float = 3.0,
                          alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    return np.where(gaussian_random_field(n, rng, alpha, tau) >= 0, a_high, a_low)


def generate_darcy(n_samples: int, n: int = 64, seed: int = 0, a_high: float = 12.0, a_low: float = 3.0,
                   alpha: float = 2.0, tau: float = 3.0, source: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(coeff, sol), each (n_samples, n, n) float64."""
    rng = np.random.default_rng(seed)
    coeff = np.stack([piecewise_coefficient(n, rng, a_high, a_low, alpha, tau) for _ in range(n_samples)])
    sol = np.stack([solve_darcy(a, source) for a in coeff])
    return coeff, sol


def darcy_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else `$PAPERZOO_DARCY_CACHE`, else the download cache's `darcy/` folder."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PAPERZOO_DARCY_CACHE")
    if env:
        return Path(env).expanduser()
    from datamodules.download import cache_dir as root

    return root() / "darcy"


def cached_darcy(n_samples: int, n: int, seed: int, cache_dir: str | os.PathLike | None = None,
                 **kwargs: float) -> tuple[np.ndarray, np.ndarray]:
    """generate_darcy through an .npz cache keyed by all arguments (`download.cached_npz`: written to a temporary
    name, then renamed; an unreadable file is regenerated)."""
    from datamodules.download import cached_npz

    key = {"n_samples": n_samples, "n": n, "seed": seed, **kwargs, "v": 1}

    def make() -> dict[str, np.ndarray]:
        coeff, sol = generate_darcy(n_samples, n, seed, **kwargs)
        return {"coeff": coeff, "sol": sol}

    z = cached_npz(darcy_cache_dir(cache_dir), f"darcy_{n}_{n_samples}", key, make)
    return z["coeff"], z["sol"]


# ------------------------------------------------------------------------------------- FNO Darcy files
def load_fno_mat(path: str | os.PathLike, n_samples: int, sampling_rate: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(coeff, sol) of the first n_samples of an FNO Darcy .mat file, subsampled by `sampling_rate`
    (MATLAB v5 through scipy.io.loadmat; v7.3 (HDF5) through h5py when installed); a DataFileError when coeff or
    sol is not real numbers (complex included) or these values hold NaN or infinities."""
    coeff, sol = read_mat_arrays(path, ("coeff", "sol"), "an FNO Darcy file holds coeff and sol, N x s x s")
    require_real(path, "coeff", coeff)
    require_real(path, "sol", sol)
    if coeff.ndim != 3 or coeff.shape != sol.shape:
        raise DataFileError(f"{path}: expected coeff and sol of the same shape (N, s, s), got {coeff.shape}, "
                            f"{sol.shape}")
    if n_samples > coeff.shape[0]:
        raise DataFileError(f"{path}: asked for {n_samples} samples, the file has {coeff.shape[0]}")
    r = sampling_rate
    coeff, sol = (np.asarray(v[:n_samples, ::r, ::r], dtype=np.float64) for v in (coeff, sol))
    require_finite(path, "coeff", coeff)
    require_finite(path, "sol", sol)
    return coeff, sol


def check_grid(path: str | os.PathLike, a: np.ndarray, resolution: int, sampling_rate: int) -> None:
    """A DataFileError naming `path` unless its fields `a` (N, ..., H, W), subsampled by `sampling_rate`, are
    resolution x resolution."""
    if tuple(a.shape[-2:]) != (resolution, resolution):
        raise DataFileError(f"{path}: the grid is {' x '.join(map(str, a.shape[-2:]))} at "
                            f"data.sampling_rate={sampling_rate}, data.resolution={resolution} expects "
                            f"{resolution} x {resolution} (check the file, data.resolution, data.sampling_rate)")


# ------------------------------------------------------------------------------------------------ datamodule
class PairLoaders(CheckpointedShuffle):
    """Loaders over `self.tensors` {x_train, y_train, x_test, y_test[, x_val, y_val]} as {"x", "y"} batches
    (shuffled, seeded, drop_last for training; without a validation split the test split also serves validation),
    for datamodules of input -> output fields."""

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        ds = _Pairs(self.tensors[f"x_{split}"], self.tensors[f"y_{split}"])
        if not shuffle:  # (its generator only seeds workers, as before)
            return DataLoader(ds, batch_size=batch_size, generator=torch.Generator().manual_seed(self.hparams.seed),
                              num_workers=self.hparams.num_workers, sampler=eval_sampler(ds))
        return ResumableDataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                   generator=self.shuffle_generator(self.hparams.seed),
                                   num_workers=self.hparams.num_workers, datamodule=self)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val" if "x_val" in self.tensors else "test", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)


def check_val_split(n_val: int, val_from: str, val_offset: int) -> None:
    check_min("data", 0, n_val=n_val, val_offset=val_offset)
    if val_from not in ("train", "test"):
        raise UserError(f"data.val_from must be 'train' or 'test' (the file the validation rows come from), got "
                        f"{val_from!r}")


def encode_splits(splits: dict, shift, scale, u_std: float, channel_axis: bool = True,
                  float64: bool = False) -> dict[str, torch.Tensor]:
    """{split: (a, u) or None} -> {x_split: (a - shift) / scale, y_split: u / u_std} as float32 (computed in the arrays'
    precision, or in float64 with `float64`; a channel axis added unless `channel_axis=False`); None splits are left
    out."""
    def t(x: np.ndarray, sh, sc) -> torch.Tensor:
        out = torch.tensor((np.asarray(x, dtype=np.float64 if float64 else None) - sh) / sc, dtype=torch.float32)
        return out[:, None] if channel_axis else out

    tensors = {}
    for split, pair in splits.items():
        if pair is not None:
            tensors[f"x_{split}"], tensors[f"y_{split}"] = t(pair[0], shift, scale), t(pair[1], 0.0, u_std)
    return tensors


NORMALIZER_TYPES = (None, "GN", "PGN")


def check_normalizer_type(value) -> None:
    if value not in NORMALIZER_TYPES:
        raise UserError(f"data.normalizer_type must be null, GN or PGN (official utilities3 normalisers), got "
                        f"{value!r}")


def official_normalizers(a: np.ndarray, u: np.ndarray, kind: str, encode_inputs: bool = True
                         ) -> tuple[np.ndarray | float, np.ndarray | float, tuple[torch.Tensor, torch.Tensor]]:
    """The official normalisers fit on training arrays a, u (N, ...): "GN" (GaussianNormalizer) one mean / std over
    everything, "PGN" (UnitGaussianNormalizer) per entry over the samples; std unbiased (torch.std) + 1e-5.
    Returns the inputs' (shift, scale) (0, 1 unless `encode_inputs`, the official --GN) and u's (mean, std) as float32
    (H, W) fields for the model's output decoder."""
    if kind == "PGN":
        a_mean, a_std, u_mean, u_std = a.mean(0), a.std(0, ddof=1) + 1e-5, u.mean(0), u.std(0, ddof=1) + 1e-5
    else:
        a_mean, a_std = np.float64(a.mean()), np.float64(a.std(ddof=1) + 1e-5)
        u_mean, u_std = np.full(u.shape[1:], u.mean()), np.full(u.shape[1:], u.std(ddof=1) + 1e-5)
    field = lambda v: torch.tensor(np.reshape(v, u.shape[-2:]), dtype=torch.float32)  # noqa: E731
    if not encode_inputs:
        a_mean, a_std = 0.0, 1.0
    return a_mean, a_std, (field(u_mean), field(u_std))


class DarcyDataModule(PairLoaders, L.LightningDataModule):
    """Darcy flow pairs (coefficient -> solution) for neural operators; see the module docstring."""

    def __init__(self, name: str = "offline", resolution: int = 64, n_train: int = 1000, n_test: int = 100,
                 batch_size: int = 8, eval_batch_size: int = 50, a_high: float = 12.0, a_low: float = 3.0,
                 alpha: float = 2.0, tau: float = 3.0, sampling_rate: int = 2, url: str = FNO_DARCY_URL,
                 sha256: dict | None = None, data_dir: str | None = None, cache_dir: str | None = None,
                 num_workers: int = 0, seed: int = 0, normalizer_type: str | None = None,
                 encode_inputs: bool = True, n_val: int = 0, val_from: str = "test", val_offset: int = 0) -> None:
        super().__init__()
        if name not in DATASETS:
            raise ValueError(f"unknown Darcy dataset {name!r}; available: {', '.join(DATASETS)}")
        check_normalizer_type(normalizer_type)
        check_val_split(n_val, val_from, val_offset)
        if resolution < 4 or n_train < 1 or n_test < 1 or batch_size < 1:
            raise ValueError("resolution >= 4, n_train, n_test, batch_size >= 1 required")
        if not a_high > 0 < a_low:
            raise ValueError(f"coefficient values must be positive, got a_high={a_high}, a_low={a_low}")
        check_min("data", 1, eval_batch_size=eval_batch_size, sampling_rate=sampling_rate)
        check_min("data", 0, num_workers=num_workers)
        if name == "piececonst_smooth" and (420 % sampling_rate or (420 // sampling_rate + 1) != resolution):
            raise ValueError(f"piececonst_smooth: resolution must be (421 - 1) / sampling_rate + 1 = "
                             f"{420 // max(sampling_rate, 1) + 1} for sampling_rate={sampling_rate}, got {resolution}")
        self.save_hyperparameters()
        self.name, self.resolution = name, resolution
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.tensors: dict[str, torch.Tensor] | None = None
        self.stats: dict[str, float] = {}
        self.output_stats: tuple[torch.Tensor, torch.Tensor] | None = None  # official normalisers: u's (mean, std)

    def _raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        hp = self.hparams
        if self.name == "offline":
            kw = dict(a_high=hp.a_high, a_low=hp.a_low, alpha=hp.alpha, tau=hp.tau)
            a_tr, u_tr = cached_darcy(hp.n_train, hp.resolution, hp.seed, hp.cache_dir, **kw)
            a_te, u_te = cached_darcy(hp.n_test, hp.resolution, hp.seed + 10_000, hp.cache_dir, **kw)
            return a_tr, u_tr, a_te, u_te
        paths = self._paths()
        a_tr, u_tr = load_fno_mat(paths["train"], hp.n_train, hp.sampling_rate)
        check_grid(paths["train"], a_tr, self.resolution, hp.sampling_rate)
        a_te, u_te = load_fno_mat(paths["test"], hp.n_test, hp.sampling_rate)
        check_grid(paths["test"], a_te, self.resolution, hp.sampling_rate)
        return a_tr, u_tr, a_te, u_te

    def _raw_val(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The validation split, rows [val_offset, val_offset + n_val) of the `val_from` file (official darcy.py
        smooth data: rows 100..199 of the test file); offline: n_val more generated fields; None when n_val = 0."""
        hp = self.hparams
        if hp.n_val == 0:
            return None
        if self.name == "offline":
            kw = dict(a_high=hp.a_high, a_low=hp.a_low, alpha=hp.alpha, tau=hp.tau)
            return cached_darcy(hp.n_val, hp.resolution, hp.seed + 20_000, hp.cache_dir, **kw)
        a, u = load_fno_mat(self._paths()[hp.val_from], hp.val_offset + hp.n_val, hp.sampling_rate)
        return a[hp.val_offset:], u[hp.val_offset:]

    def _paths(self) -> dict[str, Path]:
        hp = self.hparams
        paths = {}
        for split, file in FNO_DARCY_FILES.items():
            if hp.data_dir:
                paths[split] = Path(hp.data_dir) / file
                if not paths[split].is_file():
                    raise UserError(f"data: {paths[split]} not found (data.data_dir={hp.data_dir})")
            else:
                from datamodules.download import fetch

                paths[split] = fetch(hp.url.format(file=file), sha256=(hp.sha256 or {}).get(split), subdir="darcy")
        return paths

    def prepare_data(self) -> None:
        if self.name == "offline" or self.hparams.data_dir:
            return
        self._paths()  # downloads once (rank 0); setup() reads from the cache

    def setup(self, stage: str | None = None) -> None:
        if self.tensors is not None:
            return
        a_tr, u_tr, a_te, u_te = self._raw()
        if a_tr.shape[-1] != self.resolution:  # (the files' grids are checked in _raw, naming the file)
            raise DataFileError(f"data resolution {a_tr.shape[-1]} != configured resolution {self.resolution}")
        if self.hparams.normalizer_type is not None:
            a_mean, a_std, self.output_stats = official_normalizers(a_tr, u_tr, self.hparams.normalizer_type,
                                                                    self.hparams.encode_inputs)
            u_std = 1.0
            self.stats = {"a_mean": float(np.mean(a_mean)), "a_std": float(np.mean(a_std)), "u_std": u_std}
        else:
            a_mean, a_std, u_std = float(a_tr.mean()), float(a_tr.std()), float(u_tr.std())
            self.stats = {"a_mean": a_mean, "a_std": a_std, "u_std": u_std}

        splits = {"train": (a_tr, u_tr), "test": (a_te, u_te), "val": self._raw_val()}
        self.tensors = encode_splits(splits, a_mean, a_std, u_std)


class _Pairs(TensorDataset):
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(x, y)
