"""Image-folder datasets: ``train/<class>/*`` and ``test/<class>/*`` in a folder or a .tar/.tar.gz archive.

The layout is torchvision ImageFolder's (classes are the sub-folders, in sorted order; files with
torchvision's image extensions; hidden files ignored). Images are decoded with PIL once and kept
as a cached tensor file in ``$ENERGYBENCH_HOME/datasets/``, keyed by the source: the SHA-256 of an
archive's bytes, or for a folder the SHA-256 of every image file's path, size and modification time.
A changed source is decoded again; the cache file is written atomically, so an error or a kill
never leaves a half-written one. Every image must have the same (square) size: nothing is resized.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from energybench.contracts.dataset import Arrays, Dataset
from energybench.errors import EnergybenchError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SPLITS = ("train", "test")
#: Bumped when the decoded layout changes, so older cache files are decoded again.
CACHE_VERSION = 1
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def looks_like_image_folder(path: Path) -> bool:
    """True for an archive file or a folder holding ``train/`` or ``test/``: a source this module reads."""
    return (path.is_file() and is_archive(path)) or any((path / s).is_dir() for s in SPLITS)


@dataclass
class FolderData:
    """Decoded splits of an image folder, its class names and per-channel mean/std of the training images."""

    arrays: Arrays
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _image_suffixes() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def _members(source: Path) -> Iterator[tuple[str, str, str, bytes | None]]:
    """(split, class, relative name, bytes or None for an empty class folder) of every image in ``source``;
    an archive may wrap the splits in one top folder."""
    suffixes = _image_suffixes()

    def place(parts: tuple[str, ...]) -> tuple[str, str] | None:
        for offset in (0, 1):
            if len(parts) > offset + 1 and parts[offset] in SPLITS:
                return parts[offset], parts[offset + 1]
        return None

    if source.is_dir():
        for split in SPLITS:
            if not (source / split).is_dir():
                continue
            for folder in sorted(p for p in (source / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
                files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                               and p.name.lower().endswith(suffixes))
                if not files:
                    yield split, folder.name, f"{split}/{folder.name}", None
                for path in files:
                    yield split, folder.name, path.relative_to(source).as_posix(), path.read_bytes()
        return
    seen_dirs: set[tuple[str, str]] = set()
    filled: set[tuple[str, str]] = set()
    try:
        archive = tarfile.open(source, "r:*")
    except tarfile.ReadError:  # every format tried, tarfile's message lists one line per method
        raise EnergybenchError(f"{source} is not a readable tar archive (not gzip, bzip2, xz or plain tar)") from None
    with archive:
        for member in archive:
            parts = PurePosixPath(member.name.removeprefix("./")).parts
            where = place(parts)
            if where is None or where[1].startswith("."):
                continue
            if member.isdir():
                seen_dirs.add(where)
            elif member.isfile() and not parts[-1].startswith(".") and parts[-1].lower().endswith(suffixes) \
                    and len(parts) > parts.index(where[0]) + 2:
                filled.add(where)
                yield where[0], where[1], "/".join(parts), archive.extractfile(member).read()
    for split, name in sorted(seen_dirs - filled):
        yield split, name, f"{split}/{name}", None


def fingerprint(source: Path) -> str:
    """The cache key of ``source``: SHA-256 of an archive's bytes, or of a folder's image paths, sizes and
    modification times."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    if source.is_file():
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:
        for split in SPLITS:
            for top, _, files in sorted(os.walk(source / split)):
                where = Path(top).relative_to(source).as_posix()
                for name in sorted(files):
                    stat = os.stat(os.path.join(top, name))
                    digest.update(f"{where}/{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode(source: Path, channels: int | None = None) -> FolderData:
    """Decode every image of ``source`` with PIL: ``channels`` 3 (RGB) or 1 (grayscale), or None to take 1
    when every image is grayscale and 3 otherwise."""
    from PIL import Image, UnidentifiedImageError

    images: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in SPLITS}
    gray, size = True, None
    try:
        for split, label, name, data in _members(source):
            per_class = images[split].setdefault(label, [])
            if data is None:
                raise EnergybenchError(f"{source}: class folder {name}/ holds no images "
                                       f"({', '.join(_image_suffixes()[:4])}, ...)")
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
                    gray = gray and image.mode in _GRAY_MODES
                    pixels = np.asarray(image.convert("RGB"))
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
                raise EnergybenchError(f"{source}: cannot read image {name} ({type(exc).__name__}: {exc})") from None
            if size is None:
                size = pixels.shape[:2]
            if pixels.shape[:2] != size:
                raise EnergybenchError(f"{source}: image {name} is {pixels.shape[1]}x{pixels.shape[0]} pixels, the "
                                       f"ones before it {size[1]}x{size[0]}; energybench does not resize: give images "
                                       "of one size")
            per_class.append(pixels)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise EnergybenchError(f"{source} is not a readable tar archive ({type(exc).__name__}: {exc})") from None
    except OSError as exc:  # gzip's BadGzipFile, a file that vanished or is unreadable
        raise EnergybenchError(f"cannot read {source} ({type(exc).__name__}: {exc})") from None
    for split in SPLITS:
        if not images[split]:
            raise EnergybenchError(f"{source} holds no {split}/<class>/ image folders (expected train/<class>/* and "
                                   "test/<class>/*, torchvision ImageFolder's layout)")
    classes = sorted(images["train"])
    if classes != sorted(images["test"]):
        only_train = sorted(set(images["train"]) - set(images["test"]))
        only_test = sorted(set(images["test"]) - set(images["train"]))
        raise EnergybenchError(f"{source}: train/ and test/ have different classes (only in train: "
                               f"{', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'})")
    if size[0] != size[1]:
        raise EnergybenchError(f"{source}: images are {size[1]}x{size[0]} pixels; energybench models take square "
                               "images")
    keep = 1 if (channels or (1 if gray else 3)) == 1 else 3
    tensors = []
    for split in SPLITS:
        x = np.stack([p for c in classes for p in images[split][c]]).transpose(0, 3, 1, 2)
        x = x[:, :1] if keep == 1 else x
        y = np.concatenate([np.full(len(images[split][c]), i, np.int64) for i, c in enumerate(classes)])
        tensors += [torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)]
    train = tensors[0].float().div_(255)
    mean = tuple(round(float(v), 4) for v in train.mean(dim=(0, 2, 3)))
    std = tuple(round(float(v), 4) for v in train.std(dim=(0, 2, 3)))
    return FolderData(Arrays(*tensors), classes, mean, std)


#: The last source read in this process, by cache key: a run reads its dataset's facts and then its images.
_LAST: dict[str, FolderData] = {}


def read_image_folder(source: Path, cache_dir: Path, channels: int | None = None) -> FolderData:
    """``source`` decoded (``decode``), from the cache in ``cache_dir`` when it holds this version of it."""
    key = hashlib.sha256(f"{fingerprint(source)}:{channels}".encode()).hexdigest()[:24]
    if key in _LAST:
        return _LAST[key]
    cache = cache_dir / f"imagefolder-{key}.pt"
    data = None
    if cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            data = FolderData(Arrays(*(saved[k] for k in Arrays._fields)), list(saved["classes"]),
                              tuple(saved["mean"]), tuple(saved["std"]))
        except Exception:  # a damaged cache file is decoded again and replaced
            pass
    if data is None:
        data = _decode_into(cache, source, channels)
    _LAST.clear()
    _LAST[key] = data
    return data


def _decode_into(cache: Path, source: Path, channels: int | None) -> FolderData:
    from energybench.storage.checkpoint import atomic_write

    data = decode(source, channels)
    buffer = io.BytesIO()
    torch.save(data.arrays._asdict() | {"classes": data.classes, "mean": list(data.mean), "std": list(data.std),
                                        "source": str(source)}, buffer)
    atomic_write(cache, buffer.getvalue())
    return data


class ImageFolderDataset(Dataset):
    """Images in class folders, ``train/<class>/*`` and ``test/<class>/*``, in a folder or a .tar/.tar.gz
    archive of one (torchvision ImageFolder's layout; classes in sorted folder order).

    A named subclass (``cifar10-jpeg``) fixes the facts and the expected ``classes`` and is found in the
    data roots under ``subdirs``; ``energybench run --dataset PATH`` reads any such folder or archive as
    an unnamed one (``from_path``), whose facts come from its images.
    """

    class_sorted = True
    classes: tuple[str, ...] | None = None  # the class folders a named dataset must have, in label order
    files_hint = "a folder (or a .tar/.tar.gz of one) holding train/<class>/* and test/<class>/*"
    cache_dir: Path | None = None  # default: $ENERGYBENCH_HOME/datasets
    source: Path | None = None  # the folder or archive of an unnamed dataset
    data: FolderData | None = None  # its images, as from_path read them

    def read(self, location: Path) -> Arrays | None:
        if location == self.source and self.data is not None:
            return self.data.arrays  # read moments ago by from_path
        if not looks_like_image_folder(location):
            return None
        channels = None if self.source is not None else self.in_channels  # unnamed: as its images are
        data = read_image_folder(location, self._cache_dir(), channels=channels)
        if self.classes is not None and tuple(data.classes) != self.classes:
            raise EnergybenchError(f"{location}: {self.name!r} needs the class folders {', '.join(self.classes)}; "
                                   f"found {', '.join(data.classes)}")
        return data.arrays

    def _cache_dir(self) -> Path:
        from energybench.storage.store import default_home

        return self.cache_dir or default_home() / "datasets"

    @classmethod
    def from_path(cls, path: Path) -> ImageFolderDataset:
        """The unnamed dataset of the image folder or archive at ``path`` (its name: the absolute path)."""
        path = path.expanduser().resolve()
        if not path.exists():
            raise EnergybenchError(f"dataset path {path} does not exist")
        if not looks_like_image_folder(path):
            raise EnergybenchError(f"dataset path {path} is not an image folder: expected train/<class>/ and "
                                   f"test/<class>/ folders in it, or a {'/'.join(ARCHIVE_SUFFIXES)} archive of them")
        dataset = cls()
        data = read_image_folder(path, dataset._cache_dir())
        arrays = data.arrays
        dataset.name, dataset.source, dataset.data = str(path), path, data
        dataset.classes = tuple(data.classes)
        dataset.num_classes, dataset.in_channels = len(data.classes), int(arrays.x_train.shape[1])
        dataset.image_size, dataset.mean, dataset.std = int(arrays.x_train.shape[-1]), data.mean, data.std
        dataset.train_size, dataset.test_size = len(arrays.y_train), len(arrays.y_test)
        return dataset
