"""Shared checks for real data files (.mat, .npy): `DataFileError` (a one-line UserError naming the file, exit 2
through the CLI), `require_finite` / `require_real` on the arrays that are used, `load_npy`, and the MATLAB readers'
`mat_read_errors` / `read_mat_arrays`. Used by the Darcy, MgNO, Navier-Stokes, causal-PINN, dynamics, mesh and UM2N
readers."""
from __future__ import annotations

import os

import numpy as np

from launch.errors import UserError, one_line

__all__ = ["DataFileError", "load_npy", "mat_read_errors", "read_mat_arrays", "require_finite", "require_real"]


class DataFileError(UserError, ValueError):
    """A data file that cannot be used (unreadable, missing keys, wrong shapes or sizes): a UserError (one line, exit
    2 through the CLI), and a ValueError as these checks raised before, for callers that catch that."""


def require_finite(path: str | os.PathLike, name: str, arr: np.ndarray) -> None:
    """A DataFileError naming `path` and the variable `name` when `arr` (the part of it that is used) holds NaN or
    infinite values (as the MM-PDE, UM2N and cylinder-flow readers refuse them)."""
    if not np.all(np.isfinite(arr)):
        raise DataFileError(f"{path}: NaN or infinite values in {name}")


def require_real(path: str | os.PathLike, name: str | None, arr: np.ndarray) -> None:
    """A DataFileError naming `path` (and the variable `name`, if given) unless `arr` holds real numbers: strings,
    booleans, objects, MATLAB cells or structs and complex numbers (whose imaginary part a float conversion would
    drop with only a warning) are refused."""
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        what = f" for {name}" if name else ""
        raise DataFileError(f"{path}: expected a real numeric array{what}, got dtype {arr.dtype}")


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """A real numeric array from an ``.npy`` file, memory-mapped; a one-line DataFileError naming the file when it is
    not one (empty, corrupt, truncated, pickled objects, an .npz archive, strings, booleans, complex numbers)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataFileError(f"cannot read {path} as a numpy .npy array: {one_line(err, 160)}") from None
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):
            arr.close()
        raise DataFileError(f"{path}: expected a numpy .npy array, got {type(arr).__name__}")
    require_real(path, None, arr)
    return arr


def mat_read_errors() -> tuple[type[BaseException], ...]:
    """What scipy.io.loadmat and h5py raise on a damaged, truncated or foreign file."""
    import zlib

    from scipy.io.matlab import MatReadError

    return OSError, ValueError, EOFError, KeyError, TypeError, IndexError, MatReadError, zlib.error


def read_mat_arrays(path: str | os.PathLike, keys: tuple[str, ...], what: str) -> list[np.ndarray]:
    """The arrays `keys` of a MATLAB file, v5 through scipy.io.loadmat or v7.3 (HDF5) through h5py (axes reversed
    back to MATLAB's order); a DataFileError naming the file when it cannot be read or lacks a key (`what`: the
    expected content, for the message)."""
    import scipy.io

    errors = mat_read_errors()
    try:
        data = scipy.io.loadmat(path, variable_names=list(keys))
        held = [k for k in data if not k.startswith("__")]
        if set(keys) - set(held):
            held = [name for name, _, _ in scipy.io.whosmat(path)]
    except NotImplementedError:  # v7.3
        try:
            import h5py
        except ImportError:
            raise DataFileError(f"{path} is a MATLAB v7.3 (HDF5) file: install h5py to read it") from None
        try:
            with h5py.File(path, "r") as f:
                held = list(f.keys())
                data = {k: np.asarray(f[k]).T for k in keys if isinstance(f.get(k), h5py.Dataset)}
        except errors as err:
            raise DataFileError(f"cannot read {path} as a MATLAB v7.3 (HDF5) file: {one_line(err, 160)}") from None
    except errors as err:
        raise DataFileError(f"cannot read {path} as a MATLAB .mat file: {one_line(err, 160)}") from None
    missing = [k for k in keys if k not in data]
    if missing:
        raise DataFileError(f"{path}: no variable {', '.join(missing)} ({what}; the file holds "
                            f"{', '.join(sorted(held)[:8]) or 'nothing'})")
    return [data[k] for k in keys]
