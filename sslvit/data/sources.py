"""Sample sources for the shard writer: image folders and Hugging Face datasets.

Each source returns a :class:`Source`: class names (or None when unlabeled), an iterator of
:class:`~sslvit.data.shards.SourceItem` carrying encoded image bytes (never decoded pixels, so the
original bytes reach the shard), the item count when known, and entries already skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslvit.data.shards import SourceItem
from sslvit.errors import InputError


@dataclass
class Source:
    """What a source hands to :func:`sslvit.data.shards.write_shards`."""

    items: Iterator[SourceItem]
    class_names: list[str] | None
    total: int | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def image_folder(root: str | Path) -> Source:
    """An image folder: class sub-folders give labels (sorted names -> 0..C-1, as ImageFolder).

    With sub-folders, files anywhere below a class folder belong to that class and loose files at
    the top are skipped (listed). Without sub-folders the folder is unlabeled. Every visible file
    is a candidate; the writer skips and lists those that are not readable images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    files: list[tuple[Path, int | None]] = []
    skipped: list[dict[str, str]] = []
    if class_dirs:
        class_names: list[str] | None = [p.name for p in class_dirs]
        for label, folder in enumerate(class_dirs):
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(root)
                if path.is_file() and all(_visible(Path(part)) for part in rel.parts):
                    files.append((path, label))
        for path in sorted(p for p in root.iterdir() if p.is_file() and _visible(p)):
            skipped.append({"source": path.name, "reason": "outside_class_folder", "detail": ""})
    else:
        class_names = None
        files = [(p, None) for p in sorted(root.iterdir()) if p.is_file() and _visible(p)]

    def items() -> Iterator[SourceItem]:
        for path, label in files:
            yield SourceItem(name=str(path.relative_to(root)), path=path, label=label)

    return Source(items(), class_names, len(files), skipped, {"source": str(root), "kind": "folder"})


class SourceError(InputError):
    """A source cannot be read as asked: a missing split or column; the message lists what exists."""


def _load_hf(source: str, split: str, config: str | None, streaming: bool) -> Any:
    try:
        return _load_hf_split(source, split, config, streaming)
    except ValueError as err:
        if "split" not in str(err).lower() or isinstance(err, SourceError):
            raise
        raise SourceError(f"{source}: no split {split!r} ({err})") from None


def _load_hf_split(source: str, split: str, config: str | None, streaming: bool) -> Any:
    import datasets

    path = Path(source)
    if path.is_file() and path.suffix in (".parquet", ".arrow", ".csv", ".json", ".jsonl"):
        kind = {".jsonl": "json"}.get(path.suffix, path.suffix[1:])
        return datasets.load_dataset(kind, data_files=str(path), split=split, streaming=streaming)
    if path.is_dir() and any((path / n).exists() for n in ("dataset_info.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise SourceError(f"{source}: no split {split!r}; splits: {list(loaded)}")
            return loaded[split]
        if loaded.split is not None and str(loaded.split) != split:
            raise SourceError(f"{source}: no split {split!r}; this saved dataset holds split {str(loaded.split)!r}")
        return loaded
    if path.is_dir() and not any(path.glob("*.py")) and not (path / "README.md").exists():
        if any(path.rglob("*.parquet")):
            files = sorted(str(p) for p in path.rglob("*.parquet"))
            return datasets.load_dataset("parquet", data_files=files, split=split, streaming=streaming)
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split, streaming=streaming)
    return datasets.load_dataset(source, config, split=split, streaming=streaming)


def hf_dataset(source: str, split: str = "train", image_column: str = "image",
               label_column: str | None = "label", config: str | None = None,
               streaming: bool = False) -> Source:
    """A Hugging Face dataset: a hub name, ``save_to_disk`` folder, parquet file(s) or image folder.

    The image column is read undecoded (``datasets.Image(decode=False)``) so the shard keeps the
    original bytes. A ``ClassLabel`` label column gives the class names; integer labels without
    names are kept as they are; ``label_column=None`` or ``""`` makes it unlabeled. A split or a
    column that the dataset does not have raises :class:`SourceError` listing the ones it has.
    """
    import datasets

    ds = _load_hf(source, split, config, streaming)
    features = ds.features or {}
    if image_column not in features:
        raise SourceError(f"{source}: no image column {image_column!r}; columns: {list(features)}")
    if isinstance(features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    label_column = label_column or None
    if label_column is not None and label_column not in features:
        raise SourceError(f"{source}: no label column {label_column!r}; columns: {list(features)} "
                          "(an empty label column, '', reads the dataset unlabeled)")
    names = None
    if label_column is not None and isinstance(features[label_column], datasets.ClassLabel):
        names = list(features[label_column].names)
    total = None if streaming else len(ds)

    def items() -> Iterator[SourceItem]:
        for row_index, row in enumerate(ds):
            value = row[image_column]
            data: bytes | None = None
            path: Path | None = None
            name = f"row{row_index}"
            if isinstance(value, dict):
                data = value.get("bytes")
                if value.get("path"):
                    name = Path(value["path"]).name
                    path = None if data else Path(value["path"])
            elif isinstance(value, (bytes, bytearray)):
                data = bytes(value)
            else:
                import io

                buf = io.BytesIO()
                value.save(buf, "PNG")
                data = buf.getvalue()
            label = row.get(label_column) if label_column is not None else None
            yield SourceItem(name=name if path is None else str(path), data=data, path=path,
                             label=None if label is None or int(label) < 0 else int(label))

    info = {"source": source, "kind": "huggingface", "split": split, "image_column": image_column,
            "label_column": label_column}
    return Source(items(), names, total, [], info)
