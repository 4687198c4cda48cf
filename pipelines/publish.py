"""Publish a pretrained encoder to the Hugging Face Hub: the same as `sslvit publish` (see `sslvit publish --help`).

    python pipelines/publish.py [ARGS ...]
    accelerate launch pipelines/publish.py [ARGS ...]
"""

from sslvit.cli.publish import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
