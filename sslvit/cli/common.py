"""What the subcommands share: shipped configs by name, error lines, shell-ready hints."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from sslvit.errors import InputError
from sslvit.progress import is_main_process

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class CliError(InputError):
    """Bad input to a subcommand; the message names the bad argument, key or file."""


def fail(prog: str, message: str) -> int:
    """Print ``{prog}: error: {message}`` to stderr (on rank 0) and return exit status 2."""
    if is_main_process():
        print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def error_text(err: BaseException) -> str:
    """The message of ``err`` without the quotes ``KeyError`` adds."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        return str(err.args[0])
    return str(err)


def shipped_configs() -> dict[str, Path]:
    """Name (file stem) -> path of every YAML config shipped in ``sslvit/configs``, sorted by name."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def header_line(path: Path) -> str:
    """The first line of the ``#`` comment a config file starts with ('' when it has none)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def resolve_config(spec: str) -> Path:
    """The config file ``spec`` names: an existing path, else a shipped config's name.

    ``mae_vit_base`` and ``mae_vit_base.yaml`` mean ``sslvit/configs/mae_vit_base.yaml`` when no
    such file exists in the working directory. Raises :class:`CliError` listing the shipped names
    when ``spec`` is neither.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = spec[: -len(".yaml")] if spec.endswith(".yaml") else spec
    if os.sep not in spec and "/" not in spec and name in shipped:
        return shipped[name]
    raise CliError(f"config not found: {spec!r} is neither a file nor a shipped config "
                   f"(shipped: {', '.join(shipped)}; `sslvit configs` describes them)")


def quoted(path: str | Path) -> str:
    """``path`` made absolute, quoted for a POSIX shell when it needs it."""
    return shlex.quote(str(Path(path).resolve()))


def quoted_spec(spec: str) -> str:
    """A checkpoint given by the user: absolute when it is a local path, else as given (a Hub repo)."""
    return quoted(spec) if Path(spec).exists() else shlex.quote(spec)
