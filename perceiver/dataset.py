"""Find, label, split, decode, cache and batch knee MRI slices for laterality (left vs right): the front door.

This module holds `prepare_data` (every step at once), the summary and its command line, and re-exports the public
names of the modules that do the work, so other code needs only `import dataset`:

    records.py   AKOA names and labels, discovery (the two folder layouts read), the patient split, the manifest
    images.py    decoding, resizing and the decoded-image cache, in worker processes
    batches.py   normalisation, augmentation and batches (tf.data or a PyDataset)

docs/data.md ("The data command") has the rest: `python dataset.py summary DIR` and its output, the code that does
the same by hand, the stable codes of skipped files, how folders not searched and duplicate images are reported,
and the summary JSON's schema.

Pixel scaling happens in one place, `normalize` (batches.py); `load_image` (images.py, which says how images are
resized) + `normalize` is the whole preprocessing at inference.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from perceiver import fileio
from perceiver.errors import add_common_flags, console_safe, run_command

# The public names of records.py, images.py and batches.py, re-exported so that `dataset.X` keeps working.
from perceiver.batches import PIXEL_OFFSET, PIXEL_SCALE, Augment, augment_batch, denormalize, make_dataset, normalize
from perceiver.images import (CACHE_KEEP, CACHE_VERSION, DEFAULT_SIZE, MAX_PIXELS, LoadResult, _check_size,
                    array_to_uint8_image, default_cache_dir, load_image, load_images)
from perceiver.records import (DEFAULT_RATIOS, IMAGE_EXTENSIONS, SPLITS, DataError, Discovery, Record, _skip, discover,
                     labels_to_indices, parse_akoa_name, read_manifest, side_from_name, split_by_patient,
                     write_manifest)

__all__ = [
    # records.py
    "DEFAULT_RATIOS", "IMAGE_EXTENSIONS", "SPLITS", "DataError", "Discovery", "Record", "discover",
    "labels_to_indices", "parse_akoa_name", "read_manifest", "side_from_name", "split_by_patient", "write_manifest",
    # images.py
    "CACHE_KEEP", "CACHE_VERSION", "DEFAULT_SIZE", "MAX_PIXELS", "LoadResult", "array_to_uint8_image",
    "default_cache_dir", "load_image", "load_images",
    # batches.py
    "PIXEL_OFFSET", "PIXEL_SCALE", "Augment", "augment_batch", "denormalize", "make_dataset", "normalize",
    # this module
    "PreparedData", "check_same_data", "data_warnings", "format_summary", "main", "prepare_data", "summarize",
]


# === Everything at once ===
@dataclass
class PreparedData:
    """Data ready for training: per-split arrays, with every skipped file and why.

    Args:
        root: str. Absolute data folder.
        layout: str. "akoa" or "folders".
        classes: list[str]. Sorted class names.
        records: list[Record]. Usable records (decoded when decode was on), in discovery (path) or manifest order.
        split: dict[str, str]. path -> split for `records`.
        skipped: list[tuple[str, str]]. Files left out and why (discovery, manifest and decoding).
        images: dict[str, np.ndarray] | None. split -> uint8 images; None when not decoded.
        labels: dict[str, np.ndarray]. split -> int32 class indices.
        paths: dict[str, list[str]]. split -> paths, aligned with images and labels.
        source: str. "computed" or "manifest".
        from_cache: bool. Whether images came from the disk cache.
        ignored: list[str]. Files that are not an image type (not counted as skipped).
        passed_over: list[tuple[str, str]]. Sub-folders not searched and why (records.Discovery.passed_over).
        duplicates: list[list[str]] | None. Groups of usable images with identical pixels; None when not decoded.
    """

    root: str
    layout: str
    classes: list
    records: list
    split: dict
    skipped: list
    images: dict | None
    labels: dict
    paths: dict
    source: str = "computed"
    from_cache: bool = False
    ignored: list = field(default_factory=list)
    passed_over: list = field(default_factory=list)
    duplicates: list | None = None


def prepare_data(root, *, ratios=DEFAULT_RATIOS, seed=0, manifest=None, decode=True, size=DEFAULT_SIZE, channels=3,
                 cache_dir=None, cache=True, workers=None, progress=True, warn=True):
    """Discovers, splits by patient (or reads the manifest's split), decodes, and groups arrays by split.

    With `warn`, prints `data_warnings` (folders not searched, duplicate images) on stderr, one line each.

    The split is made on the labelled files before decoding, so a file that later fails to decode never moves a
    patient between splits. With `manifest`, its records and split are used; files on disk that it does not list
    are skipped as "not-in-manifest", and files whose label on disk now differs from the manifest's as
    "label-conflict".
    """
    found = discover(root)
    skipped = list(found.skipped)
    if manifest is not None:
        records, split = read_manifest(manifest, root=found.root)
        listed, found_label = set(split), {r.path: r.label for r in found.records}
        skipped += [(r.path, _skip("not-in-manifest", "found on disk but not listed in the manifest"))
                    for r in found.records if r.path not in listed]
        conflicts = {r.path for r in records if found_label.get(r.path, r.label) != r.label}
        skipped += [(r.path, _skip("label-conflict", f"the manifest says {r.label} but the file says "
                                                     f"{found_label[r.path]}")) for r in records if r.path in conflicts]
        records = [r for r in records if r.path not in conflicts]
        classes = sorted({r.label for r in records})
        layout, source = found.layout, "manifest"
    else:
        records, split = found.records, split_by_patient(found.records, ratios=ratios, seed=seed)
        classes, layout, source = found.classes, found.layout, "computed"
    from_cache, duplicates = False, None
    if decode:
        loaded = load_images([r.path for r in records], size=size, channels=channels, cache_dir=cache_dir,
                             cache=cache, workers=workers, progress=progress)
        skipped += loaded.skipped
        records = [records[i] for i in loaded.ok_index]
        from_cache, duplicates = loaded.from_cache, loaded.duplicates
    all_images = loaded.images if decode else None
    labels_all = labels_to_indices(records, classes)
    images_by, labels_by, paths_by = ({} if decode else None), {}, {}
    for name in SPLITS:
        idx = np.array([i for i, r in enumerate(records) if split[r.path] == name], dtype=np.int64)
        labels_by[name] = labels_all[idx]
        paths_by[name] = [records[i].path for i in idx]
        if decode:
            images_by[name] = all_images[idx]
    data = PreparedData(found.root, layout, classes, records, {r.path: split[r.path] for r in records}, skipped,
                        images_by, labels_by, paths_by, source, from_cache, found.ignored, found.passed_over,
                        duplicates)
    if warn:
        for line in data_warnings(data):
            print(line, file=sys.stderr, flush=True)
    return data


def check_same_data(manifest, data):
    """Checks that `data`, prepared with the split in `manifest` (a run's split.csv, which lists the images the run
    started with, every one usable then), is still that data: `train.py --resume` must not go on with fewer images in
    silence.

    An image the manifest lists that is now missing, unreadable, of another label or no longer decodes is refused.
    Images added since are left out (the run started without them), with a warning line on stderr.

    Raises:
        DataError: naming the manifest, the count and one image with its reason.
    """
    listed = {r.path for r in read_manifest(manifest, root=data.root)[0]}
    gone = [(path, reason) for path, reason in data.skipped if path in listed]
    if gone:
        path, reason = gone[0]
        raise DataError(f"{len(gone):,} of the {len(listed):,} images that {manifest} lists are no longer usable "
                        f"under {data.root} (e.g. {_relative(path, data.root)}: {reason}); resume needs the data the "
                        "run started with: restore it, or start a new run with another --out.")
    added = [path for path, reason in data.skipped if reason.startswith("not-in-manifest")]
    if added:
        n = len(added)
        print(f"warning: {n:,} image{'s are' if n != 1 else ' is'} under {data.root} but not in {manifest} (added "
              f"since the run started, e.g. {_relative(added[0], data.root)}); the resumed run leaves "
              f"{'them' if n != 1 else 'it'} out, as it started without {'them' if n != 1 else 'it'}.",
              file=sys.stderr, flush=True)


def _relative(path, root):
    p = os.path.abspath(path)
    return os.path.relpath(p, root).replace(os.sep, "/") if p.startswith(root.rstrip(os.sep) + os.sep) else p


def data_warnings(data):
    """One warning line for the folders not searched and one for the duplicate images of `data`; none when there
    are none. Copies across splits are named first: they leak (docs/data.md, "The data command", says why)."""
    lines = []
    if data.passed_over:
        n = len(data.passed_over)
        named = "; ".join(f"{_relative(p, data.root)} ({reason})" for p, reason in data.passed_over[:3])
        lines.append(f"warning: {n} folder{'s' if n != 1 else ''} under {data.root} {'were' if n != 1 else 'was'} "
                     f"not searched, so the images in them are not used: {named}"
                     f"{f' and {n - 3} more' if n > 3 else ''}.")
    if data.duplicates:
        copies = sum(len(g) - 1 for g in data.duplicates)
        across = [g for g in data.duplicates if len({data.split[p] for p in g}) > 1]
        first = across[0] if across else data.duplicates[0]
        example = " = ".join(f"{_relative(p, data.root)} ({data.split[p]})" for p in first[:2])
        if across:
            lines.append(f"warning: {copies} image{'s' if copies != 1 else ''} under {data.root} repeat another's "
                         f"pixels exactly, and {len(across)} such group{'s' if len(across) != 1 else ''} span "
                         f"splits, so the same image is trained on and tested and the test figures are optimistic "
                         f"(e.g. {example}); remove the copies.")
        else:
            lines.append(f"warning: {copies} image{'s' if copies != 1 else ''} under {data.root} repeat another's "
                         f"pixels exactly, each within one split, so it weighs twice (e.g. {example}); remove the "
                         "copies.")
    return lines


# === Summary ===
def _code_of(reason):
    code, _, detail = reason.partition(": ")
    return (code, detail) if detail else ("other", reason)


def summarize(root, *, ratios=DEFAULT_RATIOS, seed=0, manifest=None, decode=True, size=DEFAULT_SIZE, channels=3,
              cache_dir=None, cache=True, workers=None, progress=False):
    """Counts images, patients and scans per label and per split, and lists skipped files (schema in docs/data.md,
    "The data command")."""
    size = _check_size(size)
    data = prepare_data(root, ratios=ratios, seed=seed, manifest=manifest, decode=decode, size=size,
                        channels=channels, cache_dir=cache_dir, cache=cache, workers=workers, progress=progress,
                        warn=False)  # the summary lists them

    def counts(records, with_scans=True):
        per_label = {}
        for label in data.classes:
            rs = [r for r in records if r.label == label]
            per_label[label] = {"images": len(rs), "patients": len({r.patient for r in rs})}
            if with_scans:
                per_label[label]["scans"] = len({r.scan for r in rs})
        return {"images": len(records), "patients": len({r.patient for r in records}),
                "scans": len({r.scan for r in records})}, per_label

    total, per_label = counts(data.records)
    splits = {}
    for name in SPLITS:
        part, part_labels = counts([r for r in data.records if data.split[r.path] == name], with_scans=False)
        splits[name] = {**part, "per_label": part_labels}

    def rel(p):
        return _relative(p, data.root)

    skipped = []
    for path, reason in data.skipped:
        code, detail = _code_of(reason)
        skipped.append({"path": rel(path), "code": code, "reason": detail})
    manual = data.source == "manifest"
    passed_over = []
    for path, reason in data.passed_over:
        code, detail = _code_of(reason)
        passed_over.append({"path": rel(path), "code": code, "reason": detail})
    duplicates = None if data.duplicates is None else [
        {"paths": [rel(p) for p in g], "splits": [data.split[p] for p in g]} for g in data.duplicates]
    return {
        "schema": 2,
        "root": data.root,
        "layout": data.layout,
        "classes": list(data.classes),
        "decoded": bool(decode),
        "image_size": list(size) if decode else None,
        "channels": int(channels) if decode else None,
        **total,
        "per_label": per_label,
        "split": {"source": data.source, "seed": None if manual else int(seed),
                  "ratios": None if manual else [float(r) for r in ratios],
                  "manifest": os.path.abspath(os.fspath(manifest)) if manual else None},
        "splits": splits,
        "skipped": skipped,
        "skipped_by_code": dict(sorted(Counter(s["code"] for s in skipped).items())),
        "ignored_by_extension": dict(sorted(Counter(os.path.splitext(p)[1].lower() or "(none)"
                                                    for p in data.ignored).items())),
        "passed_over": passed_over,
        "duplicates": duplicates,
    }


def format_summary(s, *, max_skipped=20):
    """Renders a `summarize` dict as the text table that `python dataset.py summary DIR` prints."""
    lines = [f"{'AKOA' if s['layout'] == 'akoa' else 'Class-folder'} data under {s['root']} "
             f"(layout: {s['layout']}, classes: {', '.join(s['classes'])})"]
    n = max(s["images"], 1)
    per = "   ".join(f"{c} {v['images']:,} ({100 * v['images'] / n:.1f}%)" for c, v in s["per_label"].items())
    lines.append(f"images    {s['images']:>7,}   {per}")
    lines.append(f"patients  {s['patients']:>7,}   "
                 + "   ".join(f"{c} {v['patients']:,}" for c, v in s["per_label"].items()))
    lines.append(f"scans     {s['scans']:>7,}   "
                 + "   ".join(f"{c} {v['scans']:,}" for c, v in s["per_label"].items()))
    sp = s["split"]
    how = (f"manifest {sp['manifest']}" if sp["source"] == "manifest"
           else f"seed {sp['seed']}, ratios {'/'.join(f'{r:g}' for r in sp['ratios'])}")
    lines.append(f"split by patient ({how}):")
    header = f"  {'':6} {'images':>8} {'patients':>9}" + "".join(f" {c[:12]:>12}" for c in s["classes"])
    lines.append(header + "   (images per class)")
    for name in SPLITS:
        v = s["splits"][name]
        lines.append(f"  {name:6} {v['images']:>8,} {v['patients']:>9,}"
                     + "".join(f" {v['per_label'][c]['images']:>12,}" for c in s["classes"]))
    if not s["decoded"]:
        lines.append("images not decoded (--no-decode): corrupt files are not detected")
    lines.append(f"skipped {len(s['skipped']):,} file{'s' if len(s['skipped']) != 1 else ''}"
                 + (": " + ", ".join(f"{c} {k}" for c, k in s["skipped_by_code"].items()) if s["skipped"] else ""))
    for item in s["skipped"][:max_skipped]:
        lines.append(f"  {item['path']}  {item['code']}: {item['reason']}")
    if len(s["skipped"]) > max_skipped:
        lines.append(f"  ... and {len(s['skipped']) - max_skipped:,} more (--json lists all)")
    if s["ignored_by_extension"]:
        ignored = s["ignored_by_extension"]
        lines.append("ignored, not image types: " + ", ".join(f"{k} {v:,}" for k, v in ignored.items()))
    if s["passed_over"]:
        lines.append(f"folders not searched {len(s['passed_over']):,}")
        lines += [f"  {item['path']}  {item['code']}: {item['reason']}" for item in s["passed_over"][:max_skipped]]
    if s["duplicates"]:
        groups = s["duplicates"]
        across = [g for g in groups if len(set(g["splits"])) > 1]
        lines.append(f"duplicates {sum(len(g['paths']) - 1 for g in groups):,} images (identical pixels), "
                     f"{len(across):,} group{'s' if len(across) != 1 else ''} across splits"
                     + (" (leak: the same image trained on and tested)" if across else ""))
        for g in (across + [g for g in groups if g not in across])[:max_skipped]:
            lines.append("  " + " = ".join(f"{p} ({split})" for p, split in zip(g["paths"], g["splits"])))
    return "\n".join(lines)


def _parse_floats(text, count, what):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise DataError(f"{what} {text!r} must be {count} comma-separated numbers.") from None
    if len(values) != count:
        raise DataError(f"{what} {text!r} must be {count} comma-separated numbers.")
    return values


def _parse_size(text):
    parts = text.split(",")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise DataError(f"--size {text!r} must be N or HEIGHT,WIDTH in pixels.") from None
    if len(values) not in (1, 2):
        raise DataError(f"--size {text!r} must be N or HEIGHT,WIDTH in pixels.")
    return _check_size(values * 2 if len(values) == 1 else values)


def main(argv=None):
    console_safe()
    parser = argparse.ArgumentParser(prog="dataset.py", description="Inspect an AKOA or class-folder image set.")
    add_common_flags(parser, verbose=False)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="images per label, patients, scans, the split, skipped files")
    p.add_argument("dir", help="data folder")
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the summary as JSON (schema 1) (default: text)")
    g = p.add_argument_group("split")
    g.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    g.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test patient fractions (default: 0.6,0.2,0.2)")
    g.add_argument("--manifest", default=None, help="reuse the split in this CSV instead (default: none)")
    g = p.add_argument_group("decoding")
    g.add_argument("--no-decode", action="store_true", help="read names only; skip decoding (default: decode)")
    g.add_argument("--size", default="64,64", help="target HEIGHT,WIDTH, shares the training cache (default: 64,64)")
    g.add_argument("--channels", type=int, default=3, choices=(1, 3), help="image channels (default: 3)")
    g.add_argument("--cache-dir", default=None, help="image cache folder (default: $PERCEIVER_CACHE, else "
                                                     "$XDG_CACHE_HOME/akoa-perceiver, else ~/.cache/akoa-perceiver)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the cache (default: use it)")
    g.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    args = parser.parse_args(argv)
    return run_command(lambda: _summary_command(args))


def _summary_command(args):
    """`python dataset.py summary DIR`: prints the summary; exit status 2 when no image is usable."""
    summary = summarize(args.dir, ratios=_parse_floats(args.split, 3, "--split"), seed=args.seed,
                        manifest=args.manifest, decode=not args.no_decode, size=_parse_size(args.size),
                        channels=args.channels, cache_dir=args.cache_dir, cache=not args.no_cache,
                        workers=args.workers, progress=sys.stderr.isatty())
    print(fileio.json_text(summary).rstrip("\n") if args.json else format_summary(summary))
    if summary["images"] == 0:  # as for an empty folder: nothing here can be trained on
        print(f"error: no usable image in {args.dir}; the reasons are listed above.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
