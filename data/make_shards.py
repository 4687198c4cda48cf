"""Write WebDataset tar shards + manifest.json from an image folder, a Hugging Face dataset or
a built-in corpus (``digits``, ``fashion-mnist``).

    python data/make_shards.py digits                                  # -> data/shards/digits/{train,val}/
    python data/make_shards.py fashion-mnist                           # -> data/shards/fashion_mnist/{train,val,test}/
    python data/make_shards.py fashion-mnist --source ~/fashion-mnist  # idx files from a folder of your own
    python data/make_shards.py /data/imagenet/train --out data/shards/in1k/train --prefix in1k-train
    python data/make_shards.py cifar10 --hf --split test --image-column img --out data/shards/cifar10/test
    python data/make_shards.py /data/photos --out data/shards/photos --max-side 512 --format jpg

SOURCE is ``digits``, ``fashion-mnist`` (idx files from --source, $SSLVIT_FASHION_MNIST or the Debian
package ``dataset-fashion-mnist``), a folder (class sub-folders give labels; a flat folder is unlabeled), a
parquet/arrow file or ``save_to_disk`` folder, or (with ``--hf``, or when no such path exists) a
Hugging Face dataset name. See data/README.md for the shard format and the manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sslvit.data.digits import ensure_digits_shards  # noqa: E402
from sslvit.data.fashion_mnist import VAL_SIZE as FASHION_VAL_SIZE  # noqa: E402
from sslvit.data.fashion_mnist import FashionMNISTNotFound, IdxError, ensure_fashion_mnist_shards  # noqa: E402
from sslvit.data.shards import write_shards  # noqa: E402
from sslvit.data.sources import hf_dataset, image_folder  # noqa: E402


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="'digits', 'fashion-mnist', an image folder, a parquet file / dataset folder, "
                                  "or a HF name")
    p.add_argument("--out", help="output directory (default for digits: data/shards/digits, for fashion-mnist: "
                                 "data/shards/fashion_mnist)")
    p.add_argument("--prefix", default=None, help="shard name prefix (default: the output folder name)")
    p.add_argument("--max-count", type=int, default=10_000, help="samples per shard at most")
    p.add_argument("--max-bytes", type=parse_size, default=parse_size("1GB"), help="bytes per shard at most")
    p.add_argument("--format", default="keep", choices=["keep", "jpg", "png", "webp"],
                   help="keep original bytes (default) or re-encode")
    p.add_argument("--max-side", type=int, default=None, help="re-encode images whose longer side exceeds this")
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
    p.add_argument("--image-size", type=int, default=32, help="digits, fashion-mnist: square side in pixels")
    p.add_argument("--source", dest="source_dir", default=None,
                   help="fashion-mnist: folder holding the four idx files (default: $SSLVIT_FASHION_MNIST, "
                        "else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--val-size", type=int, default=FASHION_VAL_SIZE,
                   help="fashion-mnist: images held out of the official training split for validation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def builtin_summary(dirs: dict[str, Path]) -> dict:
    """split -> {"dir", "total"} of a built-in corpus, printed as one JSON line."""
    summary = {split: {"dir": str(d), "total": json.loads((d / "manifest.json").read_text())["total"]}
               for split, d in dirs.items()}
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.source == "digits" and not args.hf:
        return builtin_summary(ensure_digits_shards(args.out or "data/shards/digits", args.image_size,
                                                    progress=not args.quiet))
    if args.source in ("fashion-mnist", "fashion_mnist") and not args.hf:
        try:
            dirs = ensure_fashion_mnist_shards(args.out or "data/shards/fashion_mnist", args.image_size,
                                               args.source_dir, progress=not args.quiet, val_size=args.val_size)
        except (FashionMNISTNotFound, IdxError) as exn:
            raise SystemExit(str(exn)) from None
        return builtin_summary(dirs)
    if not args.out:
        raise SystemExit("--out is required for this source")
    path = Path(args.source)
    if args.hf or not path.exists() or path.is_file() or is_hf_folder(path):
        source = hf_dataset(args.source, args.split, args.image_column, args.label_column or None,
                            args.config, args.streaming)
    else:
        source = image_folder(path)
    out = Path(args.out)
    manifest = write_shards(source.items, out, prefix=args.prefix or out.name, max_count=args.max_count,
                            max_bytes=args.max_bytes, class_names=source.class_names,
                            image_format=args.format, max_side=args.max_side, quality=args.quality,
                            write_json=args.json, verify=not args.no_verify,
                            compute_stats=not args.no_stats, total=source.total,
                            progress=not args.quiet, extra={"source_info": source.info},
                            skipped=source.skipped)
    summary = {"dir": str(out), "shards": len(manifest["shards"]), "total": manifest["total"],
               "skipped": manifest["num_skipped"], "classes": manifest["num_classes"]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
