"""Image decoding and the decoded-image cache: image files to uint8 (n, height, width, channels) arrays, decoded in
worker processes and kept on disk. Names, discovery and the split are in records.py, normalisation and batches in
batches.py; dataset.py is the front door.

Images are resized to the target size without keeping the aspect ratio (228 x 260 slices become 64 x 64), with
Pillow's antialiased bilinear filter; 16-bit and float images are scaled so that their maximum becomes 255; alpha is
composited onto black; EXIF orientation is ignored (pixels as stored). `load_image` + `batches.normalize` is the whole
preprocessing at inference.

The cache: one entry per (ordered path list, each file's size and mtime, target size, channels, decoder version), a
`.npy` of the pixels and a `.json` index written after it. The index records the count, dtype, shape and the SHA-256
of the pixels; an entry that fails any check when read (damaged, truncated, overwritten) is decoded again and
replaced, with a one-line warning, never used. The index is untrusted input like any file read back: valid JSON of
the wrong shape (a list, a missing key, a string where numbers belong, positions out of range, counts that do not add
up) is a damaged entry too (`_index_problem`), never a traceback.

Duplicates: `LoadResult.duplicates` lists the groups of images whose decoded pixels are identical at the size trained
on (what the model sees is then the same image); dataset.py reports them.

A file that cannot be used is skipped with a reason `"<code>: <sentence>"`: missing, unreadable, empty, not-image,
truncated, too-large or corrupt (docs/data.md, "The data command", says what each means).

The decoding workers import this module (under spawn or forkserver) to run `_decode_chunk`, so it imports only
Pillow, numpy, tqdm and records.py: never TensorFlow, Keras or JAX.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from perceiver import fileio
from perceiver.records import DataError, _skip

# === Constants ===
DEFAULT_SIZE = (64, 64)  # (height, width)
MAX_PIXELS = 64 * 1024 * 1024  # larger images are skipped as possible decompression bombs
CACHE_VERSION = 2  # bump when decoding or the cache format changes, to invalidate every cache entry (2: checksums)
CACHE_KEEP = 8  # cache entries kept per cache folder (newest first)
_RESAMPLE_NAME = "bilinear"  # Pillow's bilinear resize is antialiased (the filter widens when shrinking)
_SERIAL_BELOW = 64  # fewer images than this are decoded in-process


# === Decoding ===
def _check_size(size):
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"image size {size!r} must be (height, width).") from None
    if h < 1 or w < 1:
        raise DataError(f"image size {size!r} must be positive.")
    return h, w


def _check_channels(channels):
    if channels not in (1, 3):
        raise DataError(f"channels {channels!r} must be 1 or 3.")
    return int(channels)


class _Skip(Exception):
    pass


def _to_array(im, size, channels):
    """Converts an opened, loaded Pillow image to uint8 (H, W, channels)."""
    h, w = size
    resample = Image.Resampling.BILINEAR
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;"):  # 16/32-bit integer or float: scale the maximum to 255
        a = np.asarray(im, dtype=np.float32)
        if a.ndim != 2:
            raise _Skip(_skip("corrupt", f"unexpected {mode} image shape {a.shape}"))
        lo, hi = min(0.0, float(a.min())), float(a.max())
        fim = Image.fromarray(a, "F")
        if fim.size != (w, h):
            fim = fim.resize((w, h), resample)
        a = np.asarray(fim, dtype=np.float32)
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        out = np.clip(np.rint(a), 0, 255).astype(np.uint8)[..., None]
        return np.repeat(out, 3, axis=-1) if channels == 3 else out
    if mode == "P":
        mode_to = "RGBA" if "transparency" in im.info else "RGB"
        im = im.convert(mode_to)
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    gray = im.mode in ("L", "LA", "La")
    if im.mode in ("RGBA", "RGBa", "LA", "La"):  # composite onto black
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba).convert("L" if gray else "RGB")
    elif im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if channels == 1 and im.mode == "RGB":
        im = im.convert("L")
    if im.size != (w, h):
        im = im.resize((w, h), resample)
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[..., None]
        if channels == 3:
            a = np.repeat(a, 3, axis=-1)
    return a


def _decode(path, size, channels, max_pixels):
    """Decodes one file to uint8 (H, W, C); raises _Skip("code: reason") for files to leave out."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _Skip(_skip("missing", "file not found")) from None
    except OSError as e:
        raise _Skip(_skip("unreadable", e.strerror or str(e))) from None
    if st.st_size == 0:
        raise _Skip(_skip("empty", "the file is empty (0 bytes)"))
    im = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
            w, h = im.size
            if w * h > max_pixels:
                raise _Skip(_skip("too-large", f"{w} x {h} pixels is over the limit of {max_pixels:,} "
                                               "(possible decompression bomb)"))
            if w < 1 or h < 1:
                raise _Skip(_skip("corrupt", f"the image is {w} x {h} pixels"))
            if im.format == "JPEG":
                im.draft(im.mode, (size[1], size[0]))  # DCT scaling: decode no larger than needed
            im.load()
        except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
            if im is not None:
                im.close()
            raise e if isinstance(e, _Skip) else _pillow_skip(e) from None
    with im:
        try:
            return _to_array(im, size, channels)
        except (ValueError, OSError) as e:
            raise _Skip(_skip("corrupt", f"cannot convert the {im.mode} image: {e}")) from None


def _pillow_skip(e):
    """The skip reason for an exception raised while Pillow opened or decoded a file."""
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _Skip(_skip("too-large", str(e).rstrip(".")))
    if isinstance(e, UnidentifiedImageError):
        return _Skip(_skip("not-image", "Pillow does not recognise the content as an image"))
    if isinstance(e, (PermissionError, IsADirectoryError)):
        return _Skip(_skip("unreadable", e.strerror or str(e)))
    message = str(e) or type(e).__name__
    if isinstance(e, OSError) and "truncated" in message.lower():
        return _Skip(_skip("truncated", message))
    return _Skip(_skip("corrupt", message if isinstance(e, OSError) else f"{type(e).__name__}: {message}"))


def load_image(path, size=DEFAULT_SIZE, channels=3, *, max_pixels=MAX_PIXELS):
    """Decodes and resizes one image file to uint8 (height, width, channels), exactly as training does.

    Raises:
        DataError: naming the file and the reason when it cannot be used.
    """
    size, channels = _check_size(size), _check_channels(channels)
    try:
        return _decode(os.fspath(path), size, channels, max_pixels)
    except _Skip as e:
        raise DataError(f"cannot use image {path}: {e}.") from None


def array_to_uint8_image(array2d, size, channels):
    """Converts one 2-D slice (a DICOM or NIfTI slice, say) to uint8 (height, width, channels) exactly as
    `load_image` treats a PNG of it.

    uint8 slices go the 8-bit grayscale way (resized as they are); any other dtype (16-bit, signed, float) the 16-bit
    way: resized as float, then scaled so that the maximum becomes 255 (the minimum, if below 0, becomes 0). An
    (h, w, 3) uint8 array is an RGB image.

    Raises:
        DataError: when the array is not a usable slice.
    """
    a = np.asarray(array2d)
    if a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8:
        im = Image.fromarray(np.ascontiguousarray(a), "RGB")
    elif a.ndim != 2:
        raise DataError(f"a slice must be 2-D, got shape {a.shape}")
    elif a.dtype == np.uint8:
        im = Image.fromarray(np.ascontiguousarray(a), "L")
    else:
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise DataError("the slice holds NaN or infinite values")
        im = Image.fromarray(np.ascontiguousarray(a), "F")
    try:
        return _to_array(im, _check_size(size), _check_channels(channels))
    except _Skip as e:
        raise DataError(str(e)) from None


def _decode_chunk(paths, size, channels, max_pixels):
    out = np.zeros((len(paths), size[0], size[1], channels), np.uint8)
    failed = []
    for i, p in enumerate(paths):
        try:
            out[i] = _decode(p, size, channels, max_pixels)
        except _Skip as e:
            failed.append((i, str(e)))
    return out, failed


@dataclass
class LoadResult:
    """Images decoded by `load_images`.

    Args:
        images: np.ndarray. uint8 (n_ok, height, width, channels).
        ok: list[str]. Paths of the decoded images, in input order (images[i] is ok[i]).
        ok_index: np.ndarray. int64 positions of `ok` in the input list.
        skipped: list[tuple[str, str]]. (path, "code: reason") for files that could not be used.
        from_cache: bool. True when read from the disk cache.
        duplicates: list[list[str]]. Groups (two or more paths, in input order) of images with identical pixels.
    """

    images: np.ndarray
    ok: list
    ok_index: np.ndarray
    skipped: list
    from_cache: bool = False
    duplicates: list = field(default_factory=list)


def duplicate_groups(images, paths):
    """Groups of `paths` whose `images` rows are identical pixel for pixel, in input order (a group by its first
    member); a hash of each row (BLAKE2b, 128 bits) finds the candidates, their bytes confirm them."""
    by_digest = {}
    for i, row in enumerate(images):
        by_digest.setdefault(hashlib.blake2b(np.ascontiguousarray(row).data, digest_size=16).digest(), []).append(i)
    groups = []
    for members in by_digest.values():
        while len(members) > 1:  # a hash collision would leave rows of unequal bytes in their own groups
            same = [i for i in members if np.array_equal(images[i], images[members[0]])]
            if len(same) > 1:
                groups.append(same)
            members = [i for i in members if i not in same]
    return [[paths[i] for i in group] for group in sorted(groups)]


def default_cache_dir():
    """`$PERCEIVER_CACHE`, else `$XDG_CACHE_HOME/akoa-perceiver` (the XDG base-directory rule; only an absolute
    XDG_CACHE_HOME counts), else `~/.cache/akoa-perceiver`."""
    if os.environ.get("PERCEIVER_CACHE"):
        return os.environ["PERCEIVER_CACHE"]
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "akoa-perceiver")


def _cache_key(paths, size, channels, max_pixels):
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "size": list(size), "channels": channels,
                         "resample": _RESAMPLE_NAME, "max_pixels": max_pixels}).encode())
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            stamp = "-"
        h.update(p.encode("utf-8", "surrogateescape") + b"\0" + stamp.encode() + b"\n")
    return h.hexdigest()[:40]


def _pixels_sha256(images):
    return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


def _cache_read(cache_dir, key, paths, size, channels):
    """(LoadResult, None) for a sound entry; (None, None) when there is none; (None, why) for a damaged one."""
    meta_path = os.path.join(cache_dir, key + ".json")
    if not os.path.exists(meta_path):
        return None, None
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        images = np.load(os.path.join(cache_dir, key + ".npy"), allow_pickle=False)
    except (OSError, ValueError, EOFError, RecursionError) as e:
        return None, f"it cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    problem = _index_problem(meta, len(paths))
    if problem:
        return None, problem
    ok_index = np.asarray(meta["ok_index"], dtype=np.int64)
    if images.dtype != np.uint8 or images.shape != (len(ok_index), size[0], size[1], channels):
        return None, f"its pixels are {images.dtype} {images.shape}, not the images its index lists"
    if meta["sha256"] != _pixels_sha256(images):
        return None, "its pixels do not match their recorded checksum"
    try:
        os.utime(meta_path)  # mark as recently used
    except OSError:
        pass
    skipped = [(paths[i], reason) for i, reason in meta["skipped"]]
    return LoadResult(images, [paths[i] for i in ok_index], ok_index, skipped, from_cache=True), None


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _index_problem(meta, n):
    """Why a cache index (parsed JSON, untrusted) cannot describe `n` images as `_cache_write` writes them; None when
    it can: a JSON object with this CACHE_VERSION, "n", a sorted "ok_index" and "skipped" [position, reason] pairs
    that together name each of the n positions exactly once, and a "sha256" string."""
    if not isinstance(meta, dict):
        return "its index is not a JSON object"
    if meta.get("version") != CACHE_VERSION or not _whole(meta.get("n")) or meta["n"] != n:
        return "its index does not describe these images"
    ok, skipped = meta.get("ok_index"), meta.get("skipped")
    if not isinstance(ok, list) or not all(_whole(i) for i in ok) or ok != sorted(ok):
        return "its index's ok_index is not a sorted list of positions"
    if not isinstance(skipped, list) or not all(isinstance(s, list) and len(s) == 2 and _whole(s[0])
                                                and isinstance(s[1], str) for s in skipped):
        return "its index's skipped is not a list of [position, reason] pairs"
    if sorted(ok + [i for i, _ in skipped]) != list(range(n)):
        return "its index does not name each image exactly once"
    if not isinstance(meta.get("sha256"), str):
        return "its index has no checksum of the pixels"
    return None


def _cache_write(cache_dir, key, images, ok_index, failed, n):
    """Writes images (.npy) then their index (.json), each atomically; the .json marks the entry complete."""
    os.makedirs(cache_dir, exist_ok=True)
    meta = {"version": CACHE_VERSION, "n": n, "ok_index": [int(i) for i in ok_index], "sha256": _pixels_sha256(images),
            "skipped": [[int(i), r] for i, r in sorted(failed.items())], "created": time.time()}
    npy, js = os.path.join(cache_dir, key + ".npy"), os.path.join(cache_dir, key + ".json")
    with fileio.atomic(npy) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
    fileio.atomic_write_bytes(js, fileio.json_text(meta, indent=None).encode("utf-8"))
    entries = sorted((os.path.getmtime(os.path.join(cache_dir, f)), f[:-5]) for f in os.listdir(cache_dir)
                     if f.endswith(".json") and re.fullmatch(r"[0-9a-f]{40}\.json", f))
    for _, old in entries[:-CACHE_KEEP]:
        for ext in (".json", ".npy"):
            try:
                os.remove(os.path.join(cache_dir, old + ext))
            except OSError:
                pass


def load_images(paths, *, size=DEFAULT_SIZE, channels=3, cache_dir=None, cache=True, workers=None, progress=True,
                max_pixels=MAX_PIXELS):
    """Decodes image files to one uint8 array, in parallel, cached on disk.

    The cache key hashes the ordered path list, each file's size and mtime_ns, the target size, channels and the
    decoder version, so a second call with the same files returns at once and any changed file reloads the lot.

    Args:
        paths: list[str]. Image files, in the order wanted.
        size: tuple[int, int] | int. Target (height, width). Defaults to (64, 64).
        channels: int. 3 (gray images repeated) or 1 (colour images to luma). Defaults to 3.
        cache_dir: str | None. Cache folder. Defaults to `default_cache_dir()`.
        cache: bool. Read and write the cache. Defaults to True.
        workers: int | None. Decoding processes; 1 decodes in this process. Defaults to the usable CPU count.
        progress: bool. Show a progress bar on stderr. Defaults to True.
        max_pixels: int. Larger images are skipped as "too-large". Defaults to MAX_PIXELS.

    Returns:
        A `LoadResult`; unusable files are in `skipped` with their reasons, never in `images`.
    """
    paths = [os.fspath(p) for p in paths]
    size, channels = _check_size(size), _check_channels(channels)
    n = len(paths)
    key = None
    if cache and n:
        cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
        key = _cache_key(paths, size, channels, max_pixels)
        hit, damage = _cache_read(cache_dir, key, paths, size, channels)
        if hit is not None:
            hit.duplicates = duplicate_groups(hit.images, hit.ok)
            return hit
        if damage:
            print(f"warning: the cached images {os.path.join(cache_dir, key)}.npy are damaged ({damage}); decoding "
                  "them again.", file=sys.stderr)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(int(workers), 61))
    out = np.zeros((n, size[0], size[1], channels), np.uint8)
    failed = {}
    with tqdm(total=n, desc="decoding images", unit="img", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        if workers == 1 or n < _SERIAL_BELOW:
            for start in range(0, n, 256):
                images, bad = _decode_chunk(paths[start:start + 256], size, channels, max_pixels)
                out[start:start + len(images)] = images
                failed.update((start + i, r) for i, r in bad)
                bar.update(len(images))
        else:
            _decode_parallel(paths, size, channels, max_pixels, workers, out, failed, bar)
    ok_index = np.array([i for i in range(n) if i not in failed], dtype=np.int64)
    images = out if not failed else out[ok_index]
    ok = [paths[i] for i in ok_index]
    result = LoadResult(images, ok, ok_index, [(paths[i], failed[i]) for i in sorted(failed)],
                        duplicates=duplicate_groups(images, ok))
    if key is not None:
        try:
            _cache_write(cache_dir, key, images, ok_index, failed, n)
        except OSError as e:
            print(f"warning: could not write the image cache in {cache_dir} ({e.strerror or e}); "
                  "the next run will decode again.", file=sys.stderr)
    return result


def _start_method():
    """How decoding processes start: $PERCEIVER_START_METHOD if set, else fork where the OS has it.

    fork starts workers at once and works from any calling script, guarded by `if __name__ == "__main__"` or not;
    spawn and forkserver re-import the calling script in every worker and fail without that guard. The workers
    run only Pillow and numpy, never TensorFlow or JAX, so the threads those libraries hold in the parent do not
    matter to them; JAX's warning about fork is silenced for that reason (see _decode_parallel).
    """
    methods = multiprocessing.get_all_start_methods()
    wanted = os.environ.get("PERCEIVER_START_METHOD")
    if wanted:
        if wanted not in methods:
            raise DataError(f"PERCEIVER_START_METHOD={wanted} is not one of {', '.join(methods)}.")
        return wanted
    return "fork" if "fork" in methods else None


def _decode_parallel(paths, size, channels, max_pixels, workers, out, failed, bar):
    n = len(paths)
    chunk = max(32, min(512, math.ceil(n / (workers * 8))))
    starts = list(range(0, n, chunk))
    context = multiprocessing.get_context(_start_method())
    pending = set(starts)
    executor = ProcessPoolExecutor(max_workers=min(workers, len(starts)), mp_context=context)
    try:
        with warnings.catch_warnings():  # processes start here; JAX warns on any fork (see _start_method)
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            futures = {executor.submit(_decode_chunk, paths[s:s + chunk], size, channels, max_pixels): s
                       for s in starts}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in done:
                s = futures[fut]
                images, bad = fut.result()
                out[s:s + len(images)] = images
                failed.update((s + i, r) for i, r in bad)
                pending.discard(s)
                bar.update(len(images))
    except BrokenProcessPool:
        print("warning: a decoding process died; decoding the rest in this process.", file=sys.stderr)
        for s in sorted(pending):
            images, bad = _decode_chunk(paths[s:s + chunk], size, channels, max_pixels)
            out[s:s + len(images)] = images
            failed.update((s + i, r) for i, r in bad)
            bar.update(len(images))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)

