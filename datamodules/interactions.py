"""User-item interaction graphs for collaborative-filtering papers (LightGCN, UltraGCN, ...).

One ``InteractionDataModule`` serves every dataset by ``name``:

- ``ml-100k`` (offline default): MovieLens-100K as shipped inside the ``recbole`` 1.2.1 wheel
  (``recbole/dataset_example/ml-100k/ml-100k.inter``), read from the installed package directory
  without importing recbole. Every rating is a positive.
- ``synthetic``: a tiny generated graph (latent factors + power-law item popularity), deterministic.
- ``ml-100k-raw`` / ``ml-1m-raw``: the GroupLens zips (``u.data`` / ``ratings.dat``).
- ``gowalla``, ``yelp2018``, ``amazon-book``, ``ml-1m``: the NGCF/LightGCN/UltraGCN ``train.txt`` /
  ``test.txt`` files (one line per user: ``user item item ...``, ids already 0-based).

Rating-style data (``ml-100k``, ``ml-100k-raw``, ``ml-1m-raw``, ``synthetic``) is split per user:
duplicate (user, item) rows are dropped (keeping the first), rows are shuffled with
``numpy.random.default_rng(0)`` (fixed, independent of ``seed``: the split is part of the dataset),
stable-sorted by user, and the first ``round(test_fraction * n_u)`` rows of each user go to test.
Raw ids are remapped to ``0..n-1`` in sorted (numeric) order of the raw ids, so MovieLens user ``u``
becomes ``u - 1``.

Validation uses the test split, as the papers' code does.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules.context import sampling_context
from datamodules.resumable import ResumableDataLoader
from launch.errors import UserError, check_choice, check_min
from lit_models.common.checks import check_option_kinds

# Lightning warns about any IterableDataset with __len__ because of multi-worker loading; these
# loaders always use num_workers=0, so the length is exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")

__all__ = ["InteractionDataModule", "NAMES", "read_user_lines", "recbole_ml100k_path"]

LIGHTGCN_URL_BASE = "https://raw.githubusercontent.com/gusye1234/LightGCN-PyTorch/master/data"
ULTRAGCN_URL_BASE = "https://raw.githubusercontent.com/xue-pai/UltraGCN/main/data"
GROUPLENS = "https://files.grouplens.org/datasets/movielens"

# name -> (default url base, md5 of train.txt, md5 of test.txt, expected (users, items) or None)
_TXT_DATASETS: dict[str, tuple[str, str | None, str | None, tuple[int, int] | None]] = {
    "gowalla": (LIGHTGCN_URL_BASE, None, None, (29858, 40981)),
    "yelp2018": (LIGHTGCN_URL_BASE, None, None, (31668, 38048)),
    "amazon-book": (
        LIGHTGCN_URL_BASE,
        "c916ecac04ca72300a016228258b41ed",
        "30f8ccfea18d25007ba9fb9aba4e174d",
        (52643, 91599),
    ),
    # LCFN split shipped with the UltraGCN code; counts not verified here, so not enforced.
    "ml-1m": (ULTRAGCN_URL_BASE, None, None, None),
}

# name -> (zip url, zip md5, member file name, separator)
_RAW_DATASETS: dict[str, tuple[str, str, str, str]] = {
    "ml-100k-raw": (f"{GROUPLENS}/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", "u.data", "\t"),
    "ml-1m-raw": (f"{GROUPLENS}/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", "ratings.dat", "::"),
}

NAMES = ("ml-100k", "synthetic", *_RAW_DATASETS, *_TXT_DATASETS)

SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "num_users": 200,
    "num_items": 300,
    "interactions_per_user": 20.0,  # Poisson mean (any number >= 0), clipped to [min_interactions, num_items]
    "min_interactions": 5,
    "dim": 8,  # latent factor dimension
    "popularity_exponent": 0.8,  # item popularity ~ rank^-exponent
    "temperature": 2.0,  # weight of the latent-factor affinity against popularity
    "seed": 0,
}


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def recbole_ml100k_path() -> Path:
    """Path of ``ml-100k.inter`` inside the installed recbole wheel, found without importing recbole."""
    spec = importlib.util.find_spec("recbole")  # top-level find_spec does not execute the package
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "offline dataset ml-100k needs the recbole wheel: pip install 'recbole==1.2.1' --no-deps"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / "dataset_example" / "ml-100k" / "ml-100k.inter"
        if path.is_file():
            return path
    raise UserError(
        f"recbole is installed at {list(spec.submodule_search_locations)} but has no "
        "dataset_example/ml-100k/ml-100k.inter; reinstall with pip install 'recbole==1.2.1' --no-deps"
    )


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None


def _parse_int(token: str, path: Path, lineno: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise UserError(f"{path}:{lineno}: {what} {token!r} is not an integer id") from None
    if value < 0:
        raise UserError(f"{path}:{lineno}: {what} {value} is negative")
    return value


def read_pairs(path: Path, sep: str, header: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) raw integer ids of a rating file, in file order; blank lines are skipped."""
    path = Path(path)
    users: list[int] = []
    items: list[int] = []
    lines = _read_text(path).splitlines()
    start = 1 if header else 0
    if header and not lines:
        raise UserError(f"{path}:1: empty file, expected a header line")
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < 2:
            raise UserError(f"{path}:{lineno}: expected at least 2 {sep!r}-separated fields, got {line!r}")
        users.append(_parse_int(fields[0].strip(), path, lineno, "user id"))
        items.append(_parse_int(fields[1].strip(), path, lineno, "item id"))
    if not users:
        raise UserError(f"{path}: no interactions found")
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def read_user_lines(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse a ``train.txt``/``test.txt`` file: each line ``user item item ...`` (items may be absent).

    Returns (user, item, max user id + 1) with one entry per listed item. A user listed on several
    lines gets the union of the items (duplicates are merged later by the binary matrices).
    """
    path = Path(path)
    users: list[int] = []
    items: list[int] = []
    max_user = -1
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        u = _parse_int(tokens[0], path, lineno, "user id")
        max_user = max(max_user, u)
        for tok in tokens[1:]:
            items.append(_parse_int(tok, path, lineno, "item id"))
        users.extend([u] * (len(tokens) - 1))
    if max_user < 0:
        raise UserError(f"{path}: no user lines found")
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), max_user + 1


def _remap_sorted(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Map raw ids to 0..n-1 in sorted order of the raw ids."""
    uniq, inverse = np.unique(raw, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), int(uniq.size)


def split_per_user(
    user: np.ndarray, item: np.ndarray, test_fraction: float, split_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean test mask: shuffle rows with default_rng(split_seed), stable-sort by user, the first
    round(test_fraction * n_u) rows of each user -> test. Duplicate pairs must already be removed."""
    n = user.size
    perm = np.random.default_rng(split_seed).permutation(n)
    order = perm[np.argsort(user[perm], kind="stable")]
    sorted_users = user[order]
    counts = np.bincount(sorted_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_user = np.arange(n) - np.repeat(starts, counts)
    n_test = np.array([round(test_fraction * int(c)) for c in counts], dtype=np.int64)
    is_test_sorted = rank_in_user < n_test[sorted_users]
    is_test = np.zeros(n, dtype=bool)
    is_test[order] = is_test_sorted
    return is_test, n_test


def _dedupe_first(user: np.ndarray, item: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    keys = user * num_items + item
    _, first = np.unique(keys, return_index=True)
    keep = np.sort(first)
    return user[keep], item[keep]


def synthetic_params(cfg) -> dict[str, Any]:
    """SYNTHETIC_DEFAULTS updated by `cfg` (`data.synthetic`: a mapping or null), checked: one-line UserErrors."""
    if cfg is not None and not isinstance(cfg, Mapping):
        raise UserError(f"data.synthetic takes a mapping of {', '.join(SYNTHETIC_DEFAULTS)} (or null), got {cfg!r}")
    unknown = set(cfg or {}) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise UserError(
            f"data.synthetic: unknown keys {sorted(unknown)}; known: {sorted(SYNTHETIC_DEFAULTS)}"
        )
    c = {**SYNTHETIC_DEFAULTS, **(cfg or {})}
    check_option_kinds("data.synthetic", c, SYNTHETIC_DEFAULTS)  # text, a list, NaN or 2.5 users
    if c["num_users"] < 1 or c["num_items"] < 2:
        raise UserError(f"data.synthetic: need num_users >= 1 and num_items >= 2, got {c['num_users']}, "
                        f"{c['num_items']}")
    check_min("data.synthetic", 1, dim=c["dim"])  # 0: NaN affinities
    check_min("data.synthetic", 0, interactions_per_user=c["interactions_per_user"],
              min_interactions=c["min_interactions"], seed=c["seed"])
    return c


def generate_synthetic(cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Deterministic latent-factor interaction graph with power-law item popularity."""
    c = synthetic_params(cfg)
    n_u, n_i = int(c["num_users"]), int(c["num_items"])
    rng = np.random.default_rng(int(c["seed"]))
    d = int(c["dim"])
    U = rng.standard_normal((n_u, d))
    V = rng.standard_normal((n_i, d))
    ranks = rng.permutation(n_i) + 1
    log_pop = -float(c["popularity_exponent"]) * np.log(ranks)
    logits = float(c["temperature"]) * (U @ V.T) / math.sqrt(d) + log_pop[None, :]
    k = rng.poisson(float(c["interactions_per_user"]), size=n_u)
    k = np.clip(k, min(int(c["min_interactions"]), n_i), n_i)
    gumbel = rng.gumbel(size=(n_u, n_i))
    top = np.argsort(-(logits + gumbel), axis=1, kind="stable")  # Gumbel top-k = sampling w/o replacement
    user = np.repeat(np.arange(n_u), k)
    item = np.concatenate([top[u, : k[u]] for u in range(n_u)])
    return user.astype(np.int64), item.astype(np.int64), n_u, n_i


# --------------------------------------------------------------------------------------------
# Iterable datasets
# --------------------------------------------------------------------------------------------


def _seed64(*parts: int) -> int:
    words = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]  # SeedSequence wants non-negative ints
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


class TrainBatches(IterableDataset):
    """BPR-style batches, as many samples per epoch as train edges, sharded across ranks. `sampling="edge"`: one
    shuffled pass over the train edges; "user" (official LightGCN `UniformSample`): a user drawn uniformly among
    those with train items, then one of their positives uniformly, so every user weighs the same."""

    def __init__(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        num_items: int,
        batch_size: int,
        num_negatives: int,
        exclude_positive_negatives: bool,
        seed: int,
        context: Callable[[], tuple[int, int, int]],
        sampling: str = "edge",
    ) -> None:
        super().__init__()
        self.sampling = sampling  # "edge" | "user", checked by InteractionDataModule
        self.user, self.item = user, item
        self.num_items = num_items
        self.batch_size = batch_size
        self.num_negatives = num_negatives
        self.exclude = exclude_positive_negatives
        self.seed = seed
        self.context = context  # () -> (epoch, rank, world_size), read when iteration starts
        self.pos_keys = torch.sort(user * num_items + item).values
        deg = torch.bincount(user, minlength=int(user.max()) + 1 if user.numel() else 1)
        self.saturated = deg >= num_items  # users with every item positive: no valid negative
        # "user" sampling: the users with train items, their degrees and where their items start in pos_keys order
        self.active = deg.nonzero().squeeze(-1)
        self.degree, self.start = deg, torch.cumsum(deg, 0) - deg
        self.items_by_user = self.pos_keys % num_items

    def _per_rank(self, world: int) -> int:
        return self.user.numel() // world

    def __len__(self) -> int:
        _, _, world = self.context()
        return math.ceil(self._per_rank(world) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, rank, world = self.context()
        return self.batches(epoch, rank, world)

    def batches(self, epoch: int, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
        per_rank = self._per_rank(world)
        if self.sampling == "edge":
            perm_gen = torch.Generator().manual_seed(_seed64(self.seed, epoch, 0x9E3779B9))
            perm = torch.randperm(self.user.numel(), generator=perm_gen)  # identical on every rank
            shard = perm[rank * per_rank : (rank + 1) * per_rank]
        gen = torch.Generator().manual_seed(_seed64(self.seed, epoch, rank))
        for start in range(0, per_rank, self.batch_size):
            if self.sampling == "user":
                n = min(self.batch_size, per_rank - start)
                u = self.active[torch.randint(self.active.numel(), (n,), generator=gen)]
                offset = (torch.rand(n, generator=gen) * self.degree[u]).long().clamp_(max=self.degree[u] - 1)
                i = self.items_by_user[self.start[u] + offset]
            else:
                idx = shard[start : start + self.batch_size]
                u, i = self.user[idx], self.item[idx]
            yield {"user": u, "pos_item": i, "neg_item": self.sample_negatives(u, gen)}

    def is_positive(self, u: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        keys = u.unsqueeze(-1) * self.num_items + j  # u: (B,), j: (B, N)
        pos = torch.searchsorted(self.pos_keys, keys).clamp_(max=self.pos_keys.numel() - 1)
        return self.pos_keys[pos] == keys

    def sample_negatives(self, u: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        neg = torch.randint(self.num_items, (u.numel(), self.num_negatives), generator=gen)
        if not self.exclude or self.pos_keys.numel() == 0:
            return neg
        ok_user = ~self.saturated[u]
        for _ in range(100):
            bad = self.is_positive(u, neg) & ok_user.unsqueeze(-1)
            n_bad = int(bad.sum())
            if n_bad == 0:
                return neg
            neg[bad] = torch.randint(self.num_items, (n_bad,), generator=gen)
        # Users with almost every item positive: draw the rest exactly from the complement.
        bad = self.is_positive(u, neg) & ok_user.unsqueeze(-1)
        for r, c in bad.nonzero().tolist():
            mask = torch.ones(self.num_items, dtype=torch.bool)
            mask[self.item[self.user == u[r]]] = False
            free = mask.nonzero().squeeze(-1)
            neg[r, c] = free[torch.randint(free.numel(), (1,), generator=gen)]
        return neg


class UserBatches(IterableDataset):
    """Evaluation batches ``{"user": LongTensor(b)}``; rank r gets users[r::world_size]."""

    def __init__(
        self, users: torch.Tensor, batch_size: int, context: Callable[[], tuple[int, int, int]]
    ) -> None:
        super().__init__()
        self.users, self.batch_size, self.context = users, batch_size, context

    def _shard(self) -> torch.Tensor:
        _, rank, world = self.context()
        return self.users[rank::world]

    def __len__(self) -> int:
        return math.ceil(self._shard().numel() / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        shard = self._shard()
        for start in range(0, shard.numel(), self.batch_size):
            yield {"user": shard[start : start + self.batch_size]}


# --------------------------------------------------------------------------------------------
# DataModule
# --------------------------------------------------------------------------------------------


class InteractionDataModule(L.LightningDataModule):
    """Implicit-feedback user-item data: train edges with sampled negatives, full-ranking eval users.

    Args:
        name: one of ``NAMES`` (see the module docstring); ``ml-100k`` needs no network.
        batch_size: train edges per batch on each rank (the last batch of an epoch may be smaller).
        num_negatives: uniform negatives per positive, ``neg_item`` has shape (B, num_negatives).
        exclude_positive_negatives: re-draw negatives that are train positives of their user (BPR).
        sampling: ``edge`` (a shuffled pass over the train edges) or ``user`` (users uniformly, then a random
            positive: the official LightGCN sampler); see ``TrainBatches``.
        eval_batch_size: users per validation/test batch.
        seed: drives the per-epoch edge order and the negatives (not the train/test split).
        test_fraction: per-user test share for rating-style data (ignored for train.txt/test.txt).
        val_fraction: per-user share of the train interactions held out for validation (0: none, the official
            protocol, whose `val/*` metrics are then computed on the test interactions). With a share, validation
            ranks the held-out items with the remaining train items masked, the test ranks the test items with
            train and validation items masked, and training never sees the held-out items. Each user's share is
            rounded (as test_fraction's): users with fewer than about 0.5 / val_fraction train items keep them all.
        url_base: mirror to download from; ``{url_base}/{name}/train.txt`` for the txt datasets,
            ``{url_base}/<zip name>`` for the ``*-raw`` ones (checksums still apply).
        data_dir: local folder to read instead of downloading: ``train.txt``+``test.txt``, ``u.data``
            / ``ratings.dat`` (``*-raw``), or ``ml-100k.inter`` (``ml-100k``).
        synthetic: overrides of ``SYNTHETIC_DEFAULTS`` for ``name="synthetic"``.
    """

    def __init__(
        self,
        name: str = "ml-100k",
        batch_size: int = 2048,
        num_negatives: int = 1,
        exclude_positive_negatives: bool = True,
        eval_batch_size: int = 512,
        seed: int = 0,
        sampling: str = "edge",
        test_fraction: float = 0.2,
        val_fraction: float = 0.0,
        url_base: str | None = None,
        data_dir: str | None = None,
        synthetic: dict | None = None,
    ) -> None:
        super().__init__()
        check_choice("data.name", "dataset", name, NAMES)
        if int(batch_size) < 1 or int(eval_batch_size) < 1 or int(num_negatives) < 1:
            raise UserError("data: batch_size, eval_batch_size and num_negatives must be >= 1")
        if not 0.0 <= float(test_fraction) < 1.0:
            raise UserError(f"data.test_fraction must be in [0, 1), got {test_fraction}")
        if not 0.0 <= float(val_fraction) < 0.5:
            raise UserError(f"data.val_fraction must be in [0, 0.5), got {val_fraction}")
        self.name = name
        self.batch_size = int(batch_size)
        self.num_negatives = int(num_negatives)
        self.exclude_positive_negatives = bool(exclude_positive_negatives)
        check_choice("data.sampling", "BPR sampling", sampling, ("edge", "user"))
        self.sampling = sampling
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)
        self.test_fraction = float(test_fraction)
        self.val_fraction = float(val_fraction)
        self.url_base = url_base.rstrip("/") if url_base else None
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        synthetic_params(synthetic)  # fail before any data is read
        self.synthetic = dict(synthetic or {})
        self._loaded = False

    # ---- where the files come from ------------------------------------------------------------

    def _txt_files(self) -> tuple[Path, Path]:
        if self.data_dir is not None:
            return self.data_dir / "train.txt", self.data_dir / "test.txt"
        from datamodules.download import fetch  # lazy: only needed for network datasets

        default_base, md5_train, md5_test, _ = _TXT_DATASETS[self.name]
        base = self.url_base or default_base
        # The md5s identify the canonical split, so they apply to any mirror given as url_base.
        sub = f"interactions/{self.name}"
        train = fetch(f"{base}/{self.name}/train.txt", md5=md5_train, filename="train.txt", subdir=sub)
        test = fetch(f"{base}/{self.name}/test.txt", md5=md5_test, filename="test.txt", subdir=sub)
        return Path(train), Path(test)

    def _raw_file(self) -> Path:
        url, md5, member, _ = _RAW_DATASETS[self.name]
        if self.data_dir is not None:
            for cand in (self.data_dir / member, self.data_dir / self.name.removesuffix("-raw") / member):
                if cand.is_file():
                    return cand
            raise UserError(f"{self.data_dir / member}: file not found (data.data_dir for {self.name})")
        from datamodules.download import extract, fetch

        if self.url_base:
            url = f"{self.url_base}/{url.rsplit('/', 1)[1]}"
        archive = Path(fetch(url, md5=md5, subdir="interactions"))
        dest = Path(extract(archive, archive.parent / self.name))
        found = sorted(dest.rglob(member))
        if not found:
            raise UserError(f"{archive}: archive has no {member}")
        return found[0]

    def prepare_data(self) -> None:
        """Download (rank 0 of each node); setup() reads from the cache."""
        if self.data_dir is not None:
            return
        if self.name in _TXT_DATASETS:
            self._txt_files()
        elif self.name in _RAW_DATASETS:
            self._raw_file()

    # ---- loading -----------------------------------------------------------------------------

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
        """Returns train_user, train_item, test_user, test_item, num_users, num_items."""
        if self.name in _TXT_DATASETS:
            train_path, test_path = self._txt_files()
            tu, ti, nu_train = read_user_lines(train_path)
            eu, ei, nu_test = read_user_lines(test_path)
            num_users = max(nu_train, nu_test)
            num_items = int(max(ti.max(initial=-1), ei.max(initial=-1))) + 1
            if num_items == 0:
                raise UserError(f"{train_path}: no items in train.txt or test.txt")
            expected = _TXT_DATASETS[self.name][3]
            if expected is not None and (num_users, num_items) != expected:
                msg = (
                    f"{train_path}: {self.name} has {num_users} users / {num_items} items, expected "
                    f"{expected[0]} / {expected[1]} (a different split under the same name? delete "
                    f"{train_path.parent} to download again)"
                )
                if self.data_dir is None and self.url_base is None:
                    raise UserError(msg)
                warnings.warn(msg, stacklevel=2)
            return tu, ti, eu, ei, num_users, num_items

        if self.name == "synthetic":
            user, item, num_users, num_items = generate_synthetic(self.synthetic)
        else:
            if self.name == "ml-100k":
                path = self.data_dir / "ml-100k.inter" if self.data_dir else recbole_ml100k_path()
                raw_u, raw_i = read_pairs(path, "\t", header=True)
            else:
                path = self._raw_file()
                raw_u, raw_i = read_pairs(path, _RAW_DATASETS[self.name][3])
            user, num_users = _remap_sorted(raw_u)
            item, num_items = _remap_sorted(raw_i)
        user, item = _dedupe_first(user, item, num_items)
        is_test, _ = split_per_user(user, item, self.test_fraction, split_seed=0)
        return user[~is_test], item[~is_test], user[is_test], item[is_test], num_users, num_items

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        tu, ti, eu, ei, num_users, num_items = self._load()

        def matrix(u: np.ndarray, i: np.ndarray) -> sp.csr_matrix:
            m = sp.csr_matrix(
                (np.ones(u.size, dtype=np.float32), (u, i)), shape=(num_users, num_items), dtype=np.float32
            )
            m.sum_duplicates()
            m.data[:] = 1.0
            return m

        self.num_users, self.num_items = int(num_users), int(num_items)
        self.train_matrix = matrix(tu, ti)
        self.test_matrix = matrix(eu, ei)
        self.val_matrix = None  # validation on the test interactions (the official protocol)
        if self.val_fraction > 0:
            pairs = self.train_matrix.tocoo()  # deduplicated, sorted by (user, item)
            is_val, _ = split_per_user(pairs.row, pairs.col, self.val_fraction, split_seed=1)
            if not is_val.any():
                raise UserError(f"data.val_fraction={self.val_fraction} holds out no interaction of {self.name}: "
                                f"a user's share is rounded, so users need about {0.5 / self.val_fraction:.0f} train "
                                "interactions for one (use a larger share)")
            self.val_matrix = matrix(pairs.row[is_val], pairs.col[is_val])
            self.train_matrix = matrix(pairs.row[~is_val], pairs.col[~is_val])
        coo = self.train_matrix.tocoo()  # canonical csr -> edges sorted by (user, item), deduplicated
        self.train_user = torch.from_numpy(coo.row.astype(np.int64))
        self.train_item = torch.from_numpy(coo.col.astype(np.int64))
        deg_u = np.asarray(self.train_matrix.sum(1)).reshape(-1)
        deg_i = np.asarray(self.train_matrix.sum(0)).reshape(-1)
        self.user_degree = torch.from_numpy(deg_u.astype(np.float32))
        self.item_degree = torch.from_numpy(deg_i.astype(np.float32))
        test_counts = np.diff(self.test_matrix.indptr)
        self.eval_users = torch.from_numpy(np.flatnonzero(test_counts > 0).astype(np.int64))
        self.val_users = self.eval_users if self.val_matrix is None else torch.from_numpy(
            np.flatnonzero(np.diff(self.val_matrix.indptr) > 0).astype(np.int64))
        if self.train_user.numel() == 0:
            raise UserError(f"data {self.name}: no train interactions")
        if self.exclude_positive_negatives and bool((self.user_degree >= self.num_items).all()):
            raise UserError(f"data {self.name}: every user has every item, no negatives to sample")
        self._loaded = True

    def check_stage(self, stage: str) -> None:
        """Called by `zoo` before anything is built or written: a run that tests (stage=test / fit_test) needs a test
        split. With data.test_fraction=0 the test set was empty and the run ended without a test metric (validation,
        on the test interactions unless data.val_fraction > 0, was empty too)."""
        if stage != "fit" and self.test_fraction == 0 and self.name not in _TXT_DATASETS:
            raise UserError(f"data.test_fraction=0 holds out no test interaction of {self.name}: nothing to test "
                            "(train only with stage=fit, or hold out a share: data.test_fraction > 0)")

    # ---- loaders -----------------------------------------------------------------------------

    def _context(self) -> tuple[int, int, int]:
        return sampling_context(self)

    def _train_dataset(self) -> TrainBatches:
        self.setup()
        return TrainBatches(
            self.train_user,
            self.train_item,
            self.num_items,
            self.batch_size,
            self.num_negatives,
            self.exclude_positive_negatives,
            self.seed,
            self._context,
            self.sampling,
        )

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self._train_dataset(), batch_size=None, datamodule=self)

    def _users_loader(self, which: str) -> DataLoader:
        self.setup()
        users = getattr(self, which)
        return DataLoader(UserBatches(users, self.eval_batch_size, self._context), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._users_loader("val_users")

    def test_dataloader(self) -> DataLoader:
        self.setup()
        if self.eval_users.numel() == 0:
            raise UserError(f"data.test_fraction={self.test_fraction} holds out no test interaction of {self.name}: "
                            "a user's share is rounded, so users need about "
                            f"{0.5 / max(self.test_fraction, 1e-12):.0f} interactions for one (use a larger share)")
        return self._users_loader("eval_users")

    # ---- reporting ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        self.setup()
        n_train, n_test = int(self.train_matrix.nnz), int(self.test_matrix.nnz)
        n_val = int(self.val_matrix.nnz) if self.val_matrix is not None else 0
        cells = self.num_users * self.num_items
        return {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_train": n_train,
            "num_test": n_test,
            "num_val": n_val,
            "num_eval_users": int(self.eval_users.numel()),
            "density": (n_train + n_val + n_test) / cells if cells else 0.0,
            "train_batches_per_epoch": math.ceil(n_train / self.batch_size),
        }
