"""The defender's own clean images, uploaded: a .zip in ImageFolder layout or an .npz with ``x`` and ``y``.

Both are read in memory and treated as hostile data: the .npz with ``allow_pickle=False``, the .zip member
by member (never extracted), with caps on size, image count and pixels. Images must fit the model: same
channels (grey ↔ RGB is converted for ImageFolder pictures), resized to its height and width; labels must
be classes the model has. ImageFolder labels: folders named by class number ("0", "7") keep that number;
otherwise torchvision's rule, class folders sorted by name.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath

import numpy as np
import torch

from .data import DataError, TensorData

MAX_UPLOAD_BYTES = 200 * 2**20
MAX_IMAGES = 20_000
MIN_IMAGES = 10
MAX_PIXELS = 4096 * 4096  # per picture, before resizing
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_clean_upload(filename: str, payload: bytes, input_shape, num_classes: int) -> TensorData:
    """Clean images for a model taking ``input_shape`` [C, H, W] with ``num_classes`` classes; DataError if unfit."""
    if len(payload) > MAX_UPLOAD_BYTES:
        raise DataError(f"{filename} is {len(payload) / 2**20:.0f} MiB; at most {MAX_UPLOAD_BYTES >> 20} MiB")
    name = filename.lower()
    if name.endswith(".npz"):
        clean = _from_npz(payload, input_shape)
    elif name.endswith(".zip"):
        clean = _from_zip(payload, input_shape)
    else:
        raise DataError(f"{filename}: expected a .zip of class folders (ImageFolder layout) or an .npz with x and y")
    if len(clean) < MIN_IMAGES:
        raise DataError(f"{filename} holds {len(clean)} image(s); at least {MIN_IMAGES} are needed")
    if len(clean) > MAX_IMAGES:
        raise DataError(f"{filename} holds {len(clean)} images; at most {MAX_IMAGES} are accepted")
    if int(clean.y.min()) < 0 or int(clean.y.max()) >= num_classes:
        raise DataError(
            f"{filename} has labels {int(clean.y.min())}..{int(clean.y.max())}, the model's classes are "
            f"0..{num_classes - 1}"
        )
    return clean


def _from_npz(payload: bytes, input_shape) -> TensorData:
    c, h, w = input_shape
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise DataError(f"the .npz holds {sorted(archive.files)}; expected arrays 'x' and 'y'")
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy's errors for damaged archives and object arrays vary
        raise DataError(f"the .npz cannot be read ({type(err).__name__}: {err})") from None
    if x.ndim == 3 and c == 1:
        x = x[:, None]
    if x.ndim == 4 and x.shape[1:] != (c, h, w) and x.shape[1:] == (h, w, c):
        x = x.transpose(0, 3, 1, 2)  # channels last, as most image arrays are
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        raise DataError(f"'x' has shape {list(x.shape)}; the model takes [N, {c}, {h}, {w}] (or [N, {h}, {w}, {c}])")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"'y' must hold one integer label per image, found {y.dtype} {list(y.shape)}")
    if x.dtype == np.uint8:
        pixels = torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        pixels = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if not torch.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise DataError("'x' as floats must be pixel values in [0, 1] (or give uint8 0..255)")
    else:
        raise DataError(f"'x' has dtype {x.dtype}; expected uint8 or float pixels")
    return TensorData(pixels, torch.from_numpy(y.astype(np.int64)))


def _from_zip(payload: bytes, input_shape) -> TensorData:
    from PIL import Image

    c, h, w = input_shape
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        entries = [i for i in archive.infolist() if not i.is_dir()]
    except zipfile.BadZipFile as err:
        raise DataError(f"not a readable zip archive ({err})") from None
    pictures = []
    for info in entries:
        path = PurePosixPath(info.filename)
        if path.name.startswith(".") or "__MACOSX" in path.parts or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if ".." in path.parts or path.is_absolute():
            raise DataError(f"the archive entry '{info.filename}' points outside the archive; refused")
        pictures.append((path, info))
    if not pictures:
        raise DataError("the archive holds no pictures (.png, .jpg, ...) in class folders")
    if len(pictures) > MAX_IMAGES:
        raise DataError(f"the archive holds {len(pictures)} pictures; at most {MAX_IMAGES} are accepted")
    # class = the folder holding the picture; one common top folder (zip of a folder) is skipped
    depth = {len(p.parts) for p, _ in pictures}
    if depth == {2}:
        classes_of = [p.parts[0] for p, _ in pictures]
    elif depth == {3} and len({p.parts[0] for p, _ in pictures}) == 1:
        classes_of = [p.parts[1] for p, _ in pictures]
    else:
        raise DataError("expected ImageFolder layout: one folder per class (optionally inside one top folder)")
    classes = sorted(set(classes_of))
    if all(name.isdigit() for name in classes):  # folders named by class number keep that number
        index = {name: int(name) for name in classes}
    else:
        index = {name: i for i, name in enumerate(classes)}
    mode = "L" if c == 1 else "RGB"
    if c not in (1, 3):
        raise DataError(f"pictures can feed models with 1 or 3 channels, this one takes {c}")
    xs, ys = [], []
    for (path, info), cls in zip(pictures, classes_of, strict=True):
        if info.file_size > MAX_UPLOAD_BYTES:
            raise DataError(f"{path} would unpack to {info.file_size >> 20} MiB; refused")
        try:
            with Image.open(io.BytesIO(archive.read(info))) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"{path} is {im.width}×{im.height} pixels; too large")
                pic = im.convert(mode).resize((w, h))
                arr = np.asarray(pic, dtype=np.uint8)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - PIL's errors for damaged pictures vary
            raise DataError(f"cannot read the picture {path} ({type(err).__name__})") from None
        xs.append(arr[None] if c == 1 else arr.transpose(2, 0, 1))
        ys.append(index[cls])
    pixels = torch.from_numpy(np.stack(xs)).float() / 255.0
    return TensorData(pixels, torch.tensor(ys, dtype=torch.int64))
