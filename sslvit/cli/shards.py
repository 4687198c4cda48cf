"""``sslvit shards``: write WebDataset tar shards + manifest.json, or index existing shards.

    sslvit shards SOURCE [options]        write shards from a built-in corpus, a folder or a HF dataset
    sslvit shards index DIR_OR_SPEC       write the manifest of shards that lack one
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sslvit.cli.common import CliError, error_text, fail, quoted
from sslvit.errors import InputError
from sslvit.files import MANIFEST_FILE

DESCRIPTION = """\
Write WebDataset tar shards + manifest.json from an image folder, a Hugging Face dataset or a
built-in corpus (``digits``, ``fashion-mnist``); or, as `sslvit shards index DIR_OR_SPEC`, count the
samples of existing shards into a manifest (`sslvit shards index --help`).

    sslvit shards digits                                  # -> data/shards/digits/{train,val}/
    sslvit shards fashion-mnist                           # -> data/shards/fashion_mnist/{train,val,test}/
    sslvit shards fashion-mnist --source ~/fashion-mnist  # idx files from a folder of your own
    sslvit shards /data/imagenet/train --out data/shards/in1k/train --prefix in1k-train
    sslvit shards cifar10 --hf --split test --image-column img --out data/shards/cifar10/test
    sslvit shards /data/photos --out data/shards/photos --max-side 512 --format jpg

SOURCE is ``digits``, ``fashion-mnist`` (idx files from --source, $SSLVIT_FASHION_MNIST or the Debian
package ``dataset-fashion-mnist``), a folder (class sub-folders give labels; a flat folder is
unlabeled), a parquet/arrow file or ``save_to_disk`` folder, or (with ``--hf``, or when no such path
exists) a Hugging Face dataset name. Relative output folders are under the working directory. A
folder literally named ``index`` is written as ``./index``.
"""

INDEX_DESCRIPTION = """\
Count the samples of existing shards and write their manifest.json (total, per-shard counts,
labels), so that the loader can size epochs and split them over ranks.

    sslvit shards index data/shards/photos
    sslvit shards index 'data/shards/in1k/train-{000000..000127}.tar' --out data/shards/in1k/train
    sslvit shards index data/shards/meta --label-key meta.class --key-dot last
"""


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: >= 1")
    return value


class ShardsError(InputError):
    """Bad input to ``sslvit shards``; the message names the argument or source."""


def parse_size(text: str) -> int:
    """'512MB', '1GB', '1000000' -> bytes."""
    units = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40, "b": 1}
    lower = text.strip().lower()
    for unit, factor in units.items():
        if lower.endswith(unit):
            return int(float(lower[: -len(unit)]) * factor)
    return int(lower)


def is_hf_folder(path: Path) -> bool:
    """A ``save_to_disk`` folder or a dataset repository with parquet/arrow files (not images)."""
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return True
    return any(p.suffix in (".parquet", ".arrow") for p in path.rglob("*.*"))


def build_parser(prog: str = "sslvit shards") -> argparse.ArgumentParser:
    """The options of ``sslvit shards SOURCE``, each shown with its default in ``--help``."""
    from sslvit.data.fashion_mnist import VAL_SIZE  # deferred: torch-free CLI start

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=Formatter,
                                allow_abbrev=False)
    p.add_argument("source", help="'digits', 'fashion-mnist', an image folder, a parquet file / dataset "
                                  "folder, or a HF name")
    p.add_argument("--out", default=None,
                   help="output directory; required except for digits (data/shards/digits) and "
                        "fashion-mnist (data/shards/fashion_mnist)")
    p.add_argument("--prefix", default=None, help="shard name prefix; None = the output folder name")
    p.add_argument("--max-count", type=positive_int, default=10_000, help="samples per shard at most")
    p.add_argument("--max-bytes", type=parse_size, default="1GB", help="bytes per shard at most")
    p.add_argument("--format", default="keep", choices=["keep", "jpg", "png", "webp"],
                   help="keep the original bytes or re-encode")
    p.add_argument("--max-side", type=positive_int, default=None,
                   help="re-encode images whose longer side exceeds this; None = never")
    p.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality when re-encoding")
    p.add_argument("--json", action="store_true", help="write {key}.json with the source name")
    p.add_argument("--no-verify", action="store_true", help="only parse headers (no full decode check)")
    p.add_argument("--no-stats", action="store_true", help="skip the per-channel mean/std")
    p.add_argument("--hf", action="store_true", help="treat SOURCE as a Hugging Face dataset")
    p.add_argument("--split", default="train", help="HF split")
    p.add_argument("--config", default=None, help="HF dataset configuration name")
    p.add_argument("--image-column", default="image", help="HF image column")
    p.add_argument("--label-column", default="label", help="HF label column ('' = unlabeled)")
    p.add_argument("--streaming", action="store_true", help="stream the HF dataset instead of downloading it")
    p.add_argument("--image-size", type=positive_int, default=32, help="digits, fashion-mnist: square side in pixels")
    p.add_argument("--source", dest="source_dir", default=None,
                   help="fashion-mnist: folder holding the four idx files; None = $SSLVIT_FASHION_MNIST, "
                        "else /usr/share/datasets/fashion-mnist")
    p.add_argument("--val-size", type=int, default=VAL_SIZE,
                   help="fashion-mnist: images held out of the official training split for validation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build_index_parser(prog: str = "sslvit shards index") -> argparse.ArgumentParser:
    """The options of ``sslvit shards index``, each shown with its default in ``--help``."""

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(prog=prog, description=INDEX_DESCRIPTION, formatter_class=Formatter,
                                allow_abbrev=False)
    p.add_argument("spec", metavar="DIR_OR_SPEC",
                   help="folder of .tar shards, brace pattern, glob, http(s):// pattern or pipe: command")
    p.add_argument("--label-key", default="",
                   help="'' = labels from the .cls member; else a field of the .json member (dotted path)")
    p.add_argument("--key-dot", default="first", choices=["first", "last"],
                   help="where a member name splits into sample key and extension")
    p.add_argument("--out", default=None,
                   help="folder for manifest.json (required for remote shards); None = the folder holding the shards")
    return p


def builtin_summary(dirs: dict[str, Path]) -> dict[str, Any]:
    """split -> {"dir", "total"} of a built-in corpus, printed as one JSON line."""
    summary = {split: {"dir": str(d), "total": json.loads((d / MANIFEST_FILE).read_text())["total"]}
               for split, d in dirs.items()}
    print(json.dumps(summary))
    return summary


def make_shards(argv: Sequence[str] | None = None, prog: str = "sslvit shards") -> dict[str, Any]:
    """Write the shards ``argv`` asks for and return the summary it prints as one JSON line.

    Raises :class:`ShardsError` (missing ``--out``, fashion-mnist files not found) and the sources'
    errors (``SourceError``, ``FileNotFoundError``) naming the bad path, split or column.
    """
    from sslvit.data.digits import ensure_digits_shards  # deferred: torch-free CLI start
    from sslvit.data.fashion_mnist import (  # deferred: torch-free CLI start
        FashionMNISTNotFound,
        IdxError,
        ensure_fashion_mnist_shards,
    )
    from sslvit.data.shards import write_shards  # deferred: torch-free CLI start
    from sslvit.data.sources import hf_dataset, image_folder  # deferred: torch-free CLI start

    args = build_parser(prog).parse_args(argv)
    if args.source == "digits" and not args.hf:
        return builtin_summary(ensure_digits_shards(args.out or "data/shards/digits", args.image_size,
                                                    progress=not args.quiet))
    if args.source in ("fashion-mnist", "fashion_mnist") and not args.hf:
        try:
            dirs = ensure_fashion_mnist_shards(args.out or "data/shards/fashion_mnist", args.image_size,
                                               args.source_dir, progress=not args.quiet, val_size=args.val_size)
        except (FashionMNISTNotFound, IdxError) as exn:
            raise ShardsError(str(exn)) from None
        return builtin_summary(dirs)
    if not args.out:
        raise ShardsError(f"--out is required for source {args.source!r} (only digits and fashion-mnist "
                          "have a default)")
    path = Path(args.source)
    if args.hf or not path.exists() or path.is_file() or is_hf_folder(path):
        source = hf_dataset(args.source, args.split, args.image_column, args.label_column or None,
                            args.config, args.streaming)
    else:
        source = image_folder(path)
    if source.total == 0:
        raise ShardsError(f"{args.source}: no images found, nothing written (image files: .jpg, .jpeg, .png, "
                          ".webp, ...; class sub-folders = labels)")
    out = Path(args.out)
    manifest = write_shards(source.items, out, prefix=args.prefix or out.name, max_count=args.max_count,
                            max_bytes=args.max_bytes, class_names=source.class_names,
                            image_format=args.format, max_side=args.max_side, quality=args.quality,
                            write_json=args.json, verify=not args.no_verify,
                            compute_stats=not args.no_stats, total=source.total,
                            progress=not args.quiet, extra={"source_info": source.info},
                            skipped=source.skipped)
    if manifest["total"] == 0:
        raise ShardsError(f"{args.source}: no readable image among {manifest['num_skipped']} files, nothing "
                          f"written (see {out / MANIFEST_FILE} for why each was skipped)")
    summary = {"dir": str(out), "shards": len(manifest["shards"]), "total": manifest["total"],
               "skipped": manifest["num_skipped"], "classes": manifest["num_classes"]}
    print(json.dumps(summary))
    return summary


def index_summary(manifest: dict[str, Any], where: Path) -> list[str]:
    """The summary line (shards, samples, labels, where the manifest went), then a note per oddity."""
    if manifest.get("class_names"):
        labels = f"{len(manifest['class_names'])} class names"
    elif manifest.get("label_range"):
        low, high = manifest["label_range"]
        labels = f"{manifest['num_classes']} classes (labels {low}..{high})"
    else:
        labels = "no labels"
    if manifest.get("labeled") and manifest.get("unlabeled"):
        labels += f", {manifest['unlabeled']} samples without a label"
    lines = [f"indexed {len(manifest['shards'])} shards, {manifest['total']} samples, {labels}; "
             f"manifest: {quoted(where / MANIFEST_FILE)}"]
    if any(str(entry.get("url", "")).startswith("pipe:") for entry in manifest["shards"]):
        lines.append(f"note: its shards are read by the pipe: commands you gave; a command from a manifest "
                     f"runs only where the manifest is trusted by name: export SSLVIT_TRUSTED_MANIFESTS="
                     f"{quoted((where / MANIFEST_FILE).resolve())}")
    dotted = manifest.get("dotted_keys") or {}
    if dotted.get("count"):
        lines.append(f"note: {dotted['count']} samples have dots in their key (e.g. "
                     f"{', '.join(dotted['examples'][:2])}); they were split at the {manifest['key_dot']} dot "
                     "(--key-dot first|last)")
    if manifest.get("without_image"):
        lines.append(f"note: {manifest['without_image']} samples have no image member "
                     f"(member extensions seen: {', '.join(manifest.get('extensions', {}))})")
    return lines


def manifest_folder(spec: str, out: str | None) -> Path:
    """Where ``index_shards(spec, out)`` writes: ``out``, else the folder holding the local shards."""
    if out:
        return Path(out)
    path = Path(spec[len("file:"):] if spec.startswith("file:") else spec)
    if path.is_dir():
        return path
    from sslvit.data.plan import resolve  # deferred: torch-free CLI start

    return Path(resolve(spec).urls[0]).parent


def index(argv: Sequence[str], prog: str = "sslvit shards index") -> int:
    """Run ``sslvit shards index``; returns the exit status."""
    from sslvit.data.index import index_shards  # deferred: torch-free CLI start

    args = build_index_parser(prog).parse_args(argv)
    try:
        manifest = index_shards(args.spec, args.out, label_key=args.label_key, key_dot=args.key_dot)
    except (CliError, FileNotFoundError, KeyError, ValueError) as err:
        return fail(prog, error_text(err))
    for line in index_summary(manifest, manifest_folder(args.spec, args.out)):
        print(line)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "sslvit shards") -> int:
    """Run ``sslvit shards``; returns the exit status (2 after one error line for bad input)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["index"]:
        return index(argv[1:], f"{prog} index")
    try:
        make_shards(argv, prog)
    except (ValueError, FileNotFoundError, KeyError) as err:  # ShardsError, the sources' SourceError
        return fail(prog, error_text(err))
    return 0
