"""Write WebDataset tar shards + manifest.json: the same as `sslvit shards` (see `sslvit shards --help`).

    python data/make_shards.py digits                       # -> data/shards/digits/{train,val}/
    python data/make_shards.py /data/imagenet/train --out data/shards/in1k/train
    python data/make_shards.py index data/shards/photos     # manifest of existing shards

``main(argv)`` returns the summary it prints as one JSON line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sslvit.cli.shards import ShardsError, build_parser, index, is_hf_folder, make_shards, parse_size

__all__ = ["build_parser", "is_hf_folder", "main", "parse_size"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the shards ``argv`` asks for and return the summary; bad input exits with its message."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["index"]:
        raise SystemExit(index(args[1:], "make_shards.py index"))
    try:
        return make_shards(args, "make_shards.py")
    except (ShardsError, FileNotFoundError, KeyError) as err:
        raise SystemExit(f"make_shards.py: error: {err.args[0] if isinstance(err, KeyError) else err}") from None


if __name__ == "__main__":
    main()
