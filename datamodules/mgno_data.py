"""The MgNO paper's further benchmarks (card `mgno`, arXiv 2310.19809, official code xlliu2017/MgNO): real-file loaders
and one datamodule, `MgNODataModule(name=...)`, with the conventions of `datamodules.darcy.DarcyDataModule`
(batches {"x": (B, C_in, H, W), "y": (B, C_out, H, W)}; validation = test split unless `n_val` rows of the official
validation range are given (`val_from`, `val_offset`); inputs z-scored per channel with the
training statistics and outputs divided by the training std when `normalize`; or the official normalisers,
`normalizer_type` GN / PGN with `encode_inputs` (official `--GN`) and raw outputs whose statistics feed the model's
output decoder, see `datamodules.darcy.official_normalizers`).

Datasets (file names, keys, splits and subsampling as in the official `utilities3.py` / `darcy.py` / `helm.py` /
`navier.py`):
- `darcy_rough`: `darcy_alpha2_tau5_512_train.mat` / `..._test.mat` (FNO-format MATLAB files, keys `coeff`, `sol`,
  N x 512 x 512), first 1280 train / first 112 test samples, subsampled x2 -> 256 x 256 (official key `darcy20c6`).
- `darcy_multiscale`: `mul_tri_train.mat` / `mul_tri_test.mat` (same keys; trigonometric multiscale coefficients),
  1000 train / 100 test, subsampled x4 (official key `a4f1`; the file resolution is not stated in the code:
  1023 -> 256 is assumed, set `resolution` if it differs).
- `helmholtz`: `Helmholtz_inputs.npy` / `Helmholtz_outputs.npy` (Huang et al., numpy arrays 101 x 101 x N, sample axis
  last), train rows 0..3999, test rows 8000..8199 (official `getDataSize('helm')`), 101 x 101, no subsampling.
- `pipe`: Geo-FNO `Pipe_X.npy`, `Pipe_Y.npy` (N x 129 x 129 mesh coordinates, the two input channels) and `Pipe_Q.npy`
  (N x 3 x 129 x 129; channel 0 is the target), of the first 1200 samples the first 1000 train and the last 200
  test, cropped to 128 x 128 (official `getPipeDataset`).
- `navier_stokes`: FNO `NavierStokes_V1e-5_N1200_T20.mat` (key `u`, N x 64 x 64 x 20; v5 or v7.3, read by
  `datamodules.semilinear_data.load_fno_navier_stokes`). Time stepping as official `navier.py` (`getNavierDataSet3`,
  T_in = 1, T = 10): training pairs u_t -> u_{t+1}, t = 0..T-1, of the first 1000 trajectories (10,000 pairs);
  test: the last 100 trajectories, x = frame 0, y = frames 1..T (B, T, H, W), scored by the module's autoregressive
  rollout. No normalisation (the model adds the input back, `skip=True`).

Files: the official README links Google-Drive folders for all but Helmholtz (no stable direct URL, no published
checksums): download them and pass `data_dir`. Helmholtz sits in the CaltechDATA record fp3ds-kej20; a direct file URL
template can be given as `url` (fetched through `datamodules.download.fetch`, checksum not verified unless `sha256`
is set), otherwise `data_dir` as well.
"""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch

from datamodules.darcy import (
    PairLoaders,
    check_normalizer_type,
    check_val_split,
    encode_splits,
    load_fno_mat,
    official_normalizers,
)
from datamodules.data_files import DataFileError, load_npy, require_finite
from launch.errors import UserError

DATASETS = {
    "darcy_rough": {"train": "darcy_alpha2_tau5_512_train.mat", "test": "darcy_alpha2_tau5_512_test.mat"},
    "darcy_multiscale": {"train": "mul_tri_train.mat", "test": "mul_tri_test.mat"},
    "helmholtz": {"x": "Helmholtz_inputs.npy", "y": "Helmholtz_outputs.npy"},
    "pipe": {"x": "Pipe_X.npy", "y": "Pipe_Y.npy", "q": "Pipe_Q.npy"},
    "navier_stokes": {"u": "NavierStokes_V1e-5_N1200_T20.mat"},
}
SAMPLING_RATE = {"darcy_rough": 2, "darcy_multiscale": 4, "helmholtz": 1, "pipe": 1, "navier_stokes": 1}  # `--sample_x`
IN_CHANNELS = {"darcy_rough": 1, "darcy_multiscale": 1, "helmholtz": 1, "pipe": 2, "navier_stokes": 1}


# --------------------------------------------------------------------------------------------- raw loaders
def load_helmholtz(x_path: str | os.PathLike, y_path: str | os.PathLike, train_rows: tuple[int, int],
                   test_rows: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """(a_train, u_train, a_test, u_test) from Huang et al.'s arrays (s, s, N): sample axis moved first."""
    xs, ys = load_npy(x_path), load_npy(y_path)
    if xs.ndim != 3 or xs.shape != ys.shape:
        raise UserError(f"helmholtz: expected inputs and outputs of the same shape (s, s, N), got {xs.shape}, "
                         f"{ys.shape}")
    n = xs.shape[-1]
    for lo, hi in (train_rows, test_rows):
        if not 0 <= lo < hi <= n:
            raise UserError(f"helmholtz: rows {lo}..{hi - 1} outside the file's {n} samples")

    def take(arr: np.ndarray, rows: tuple[int, int], path: str | os.PathLike) -> np.ndarray:
        out = np.ascontiguousarray(np.moveaxis(arr[..., rows[0]:rows[1]], -1, 0), dtype=np.float64)
        require_finite(path, f"samples {rows[0]}..{rows[1] - 1}", out)
        return out

    return (take(xs, train_rows, x_path), take(ys, train_rows, y_path), take(xs, test_rows, x_path),
            take(ys, test_rows, y_path))


def load_pipe(x_path: str | os.PathLike, y_path: str | os.PathLike, q_path: str | os.PathLike, n_train: int,
              n_test: int, n_total: int = 1200, crop: int = 128) -> tuple[np.ndarray, ...]:
    """(a_train (n, 2, c, c), u_train (n, c, c), a_test, u_test): mesh coordinates (X, Y) as input channels,
    Q[:, 0] as target; the first n_train of the first n_total samples train, the last n_test of them test."""
    px, py, q = load_npy(x_path), load_npy(y_path), load_npy(q_path)
    if (px.ndim != 3 or px.shape != py.shape or q.ndim != 4 or q.shape[0] != px.shape[0]
            or q.shape[2:] != px.shape[1:]):
        raise UserError(f"pipe: expected X, Y (N, s1, s2) and Q (N, C, s1, s2), got {px.shape}, {py.shape}, {q.shape}")
    if n_total > px.shape[0] or n_train + n_test > n_total:
        raise UserError(f"pipe: need n_train + n_test <= n_total <= {px.shape[0]} samples, got {n_train} + {n_test}"
                         f" of {n_total}")
    a = np.stack([px[:n_total, :crop, :crop], py[:n_total, :crop, :crop]], axis=1).astype(np.float64)
    u = np.asarray(q[:n_total, 0, :crop, :crop], dtype=np.float64)
    for path, name, arr in ((x_path, "X", a[:, 0]), (y_path, "Y", a[:, 1]), (q_path, "Q[:, 0]", u)):
        require_finite(path, name, arr)
    return a[:n_train], u[:n_train], a[n_total - n_test:], u[n_total - n_test:]


def navier_stokes_pairs(u: np.ndarray, n_train: int, n_test: int, t_steps: int = 10) -> tuple[np.ndarray, ...]:
    """From trajectories u (N, T_file, H, W): training one-step pairs (u_t -> u_{t+1}, t < t_steps) of the first
    n_train trajectories, test (frame 0 -> frames 1..t_steps) of the last n_test (official `getNavierDataSet3`)."""
    if u.ndim != 4 or u.shape[1] < t_steps + 1:
        raise UserError(f"navier_stokes: need (N, T >= {t_steps + 1}, H, W) trajectories, got {u.shape}")
    if n_train + n_test > u.shape[0]:
        raise UserError(f"navier_stokes: {n_train} train + {n_test} test trajectories > {u.shape[0]} in the file")
    tr = u[:n_train]
    x_tr = tr[:, :t_steps].reshape(-1, *u.shape[2:])  # (n_train * t_steps, H, W), trajectory-major
    y_tr = tr[:, 1:t_steps + 1].reshape(-1, *u.shape[2:])
    te = u[u.shape[0] - n_test:]
    return x_tr[:, None], y_tr[:, None], te[:, :1], te[:, 1:t_steps + 1]


# ------------------------------------------------------------------------------------------------ datamodule
class MgNODataModule(PairLoaders, L.LightningDataModule):
    """MgNO's real benchmarks (see the module docstring): coefficient/geometry/state -> solution pairs."""

    def __init__(self, name: str = "darcy_rough", resolution: int = 256, n_train: int = 1280, n_test: int = 112,
                 batch_size: int = 8, eval_batch_size: int = 16, sampling_rate: int | None = None,
                 normalize: bool = True, test_offset: int = 8000, n_total: int = 1200, t_steps: int = 10, data_dir: str | None = None,
                 url: str | None = None, sha256: dict | None = None, num_workers: int = 0, seed: int = 0,
                 normalizer_type: str | None = None, encode_inputs: bool = True, n_val: int = 0,
                 val_from: str = "train", val_offset: int = 0) -> None:
        super().__init__()
        check_normalizer_type(normalizer_type)
        check_val_split(n_val, val_from, val_offset)
        if n_val and name in ("pipe", "navier_stokes"):
            raise UserError(f"data.n_val: {name} has no separate validation rows in the official code (pipe validates "
                            f"on the test rows, navier.py does not validate); keep n_val=0")
        if name not in DATASETS:
            raise ValueError(f"unknown MgNO dataset {name!r}; available: {', '.join(DATASETS)}")
        if resolution < 4 or n_train < 1 or n_test < 1 or batch_size < 1 or eval_batch_size < 1:
            raise ValueError("resolution >= 4 and n_train, n_test, batch_size, eval_batch_size >= 1 required")
        if sampling_rate is None:
            sampling_rate = SAMPLING_RATE[name]
        if name == "pipe" and sampling_rate != 1:
            raise ValueError("pipe: the mesh is used at full resolution (sampling_rate=1)")
        if sampling_rate < 1 or t_steps < 1:
            raise ValueError(f"sampling_rate and t_steps must be >= 1, got {sampling_rate}, {t_steps}")
        self.save_hyperparameters()
        self.hparams.sampling_rate = sampling_rate
        self.name, self.resolution = name, resolution
        self.in_channels = IN_CHANNELS[name]
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.tensors: dict[str, torch.Tensor] | None = None
        self.stats: dict[str, list[float] | float] = {}
        self.output_stats: tuple[torch.Tensor, torch.Tensor] | None = None  # official normalisers: u's (mean, std)

    # files --------------------------------------------------------------------------------------------------
    def _paths(self) -> dict[str, Path]:
        hp = self.hparams
        if not hp.data_dir and not hp.url:
            raise UserError(f"data: {self.name} has no public direct download (Google Drive / CaltechDATA landing "
                            f"page): download {', '.join(DATASETS[self.name].values())} and set "
                            f"data.data_dir=<folder>, or a direct URL template, quoted for Hydra: "
                            f"\"data.url='https://<host>/<path>/{{file}}'\"")
        paths = {}
        for key, file in DATASETS[self.name].items():
            if hp.data_dir:
                paths[key] = Path(hp.data_dir).expanduser() / file
                if not paths[key].is_file():
                    raise UserError(f"data: {paths[key]} not found (data.data_dir={hp.data_dir}; {self.name} needs "
                                    f"{', '.join(DATASETS[self.name].values())})")
            else:
                from datamodules.download import fetch

                paths[key] = fetch(hp.url.format(file=file), sha256=(hp.sha256 or {}).get(key), subdir="mgno")
        return paths

    def _raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        hp, p = self.hparams, self._paths()
        self._files = p  # named by setup's grid check
        if self.name in ("darcy_rough", "darcy_multiscale"):
            a_tr, u_tr = load_fno_mat(p["train"], hp.n_train, hp.sampling_rate)
            a_te, u_te = load_fno_mat(p["test"], hp.n_test, hp.sampling_rate)
            return a_tr[:, None], u_tr[:, None], a_te[:, None], u_te[:, None]
        if self.name == "helmholtz":
            a_tr, u_tr, a_te, u_te = load_helmholtz(p["x"], p["y"], (0, hp.n_train),
                                                    (hp.test_offset, hp.test_offset + hp.n_test))
            r = hp.sampling_rate
            return (a_tr[:, None, ::r, ::r], u_tr[:, None, ::r, ::r], a_te[:, None, ::r, ::r],
                    u_te[:, None, ::r, ::r])
        if self.name == "pipe":
            a_tr, u_tr, a_te, u_te = load_pipe(p["x"], p["y"], p["q"], hp.n_train, hp.n_test, hp.n_total,
                                               crop=hp.resolution)
            return a_tr, u_tr[:, None], a_te, u_te[:, None]
        from datamodules.semilinear_data import load_fno_navier_stokes

        u = load_fno_navier_stokes(p["u"], hp.n_total)  # (N, T, H, W) float32
        r = hp.sampling_rate
        return navier_stokes_pairs(u[..., ::r, ::r], hp.n_train, hp.n_test, hp.t_steps)

    def _raw_val(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Validation rows [val_offset, val_offset + n_val) of the `val_from` file (official getDataSize: darcy20c6
        train-file rows 1280..1391, helm rows 8200..8399 of its single file); None when n_val = 0."""
        hp = self.hparams
        if hp.n_val == 0:
            return None
        p, rows = self._paths(), (hp.val_offset, hp.val_offset + hp.n_val)
        if self.name == "helmholtz":
            _, _, a, u = load_helmholtz(p["x"], p["y"], rows, rows)
            r = hp.sampling_rate
            return a[:, None, ::r, ::r], u[:, None, ::r, ::r]
        a, u = load_fno_mat(p[hp.val_from], rows[1], hp.sampling_rate)
        return a[rows[0]:, None], u[rows[0]:, None]

    def prepare_data(self) -> None:
        if not self.hparams.data_dir:
            self._paths()  # downloads once (rank 0)

    def setup(self, stage: str | None = None) -> None:
        if self.tensors is not None:
            return
        a_tr, u_tr, a_te, u_te = self._raw()
        if a_tr.shape[-2:] != (self.resolution, self.resolution):
            files = ", ".join(str(f) for f in self._files.values())
            raise DataFileError(f"{self.name}: data grid {tuple(a_tr.shape[-2:])} of {files} != configured "
                                f"resolution {self.resolution} (check data.resolution / data.sampling_rate)")
        if self.hparams.normalizer_type is not None:
            if u_tr.shape[1] != 1:
                raise UserError(f"data.normalizer_type: the output decoder needs one output channel, {self.name} has "
                                f"{u_tr.shape[1]}")
            a_mean, a_std, self.output_stats = official_normalizers(a_tr, u_tr, self.hparams.normalizer_type,
                                                                    self.hparams.encode_inputs)
            u_std = 1.0
        elif self.hparams.normalize:
            a_mean = a_tr.mean(axis=(0, 2, 3), keepdims=True)
            a_std = a_tr.std(axis=(0, 2, 3), keepdims=True)
            u_std = float(u_tr.std())
        else:
            a_mean, a_std, u_std = np.zeros((1, a_tr.shape[1], 1, 1)), np.ones((1, a_tr.shape[1], 1, 1)), 1.0
        per_channel = lambda v: np.ravel(np.mean(v, axis=(-2, -1)) if np.ndim(v) >= 2 else v).tolist()  # noqa: E731
        self.stats = {"a_mean": per_channel(a_mean), "a_std": per_channel(a_std), "u_std": u_std}

        splits = {"train": (a_tr, u_tr), "test": (a_te, u_te), "val": self._raw_val()}
        self.tensors = encode_splits(splits, a_mean, a_std, u_std, channel_axis=False, float64=True)
