"""``python -m sslvit COMMAND ...`` (also ``accelerate launch -m sslvit COMMAND ...``)."""

from sslvit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
