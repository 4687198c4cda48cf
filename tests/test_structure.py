"""The house's shape (benchmarks/structure.py): what it counts on a package it is given, and that
sslvit itself has no circles, no imports from a lower layer up, no unexplained import inside a
function, a step loop that reads in one screen, and a command line that starts without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import structure

ROOT = Path(__file__).resolve().parents[1]


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "sslvit"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_it_finds_circles_up_imports_and_deferred_imports_in_a_package_it_is_given(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "files.py": "",
        "models/__init__.py": "from .vit import ViT\n",  # relative import: sslvit.models.vit
        "models/vit.py": "from sslvit.models import SIZES\n",  # a name from the package: a circle
        "models/helpers.py": "",
        "data/__init__.py": "",
        "data/shards.py": """\
            from typing import TYPE_CHECKING
            from sslvit import files
            if TYPE_CHECKING:
                from sslvit.training import loop  # typing only: not an edge
            def hashed():
                from sslvit.checkpoint import format  # up, and without a reason
                return format
            """,
        "checkpoint/__init__.py": "",
        "checkpoint/format.py": "import sslvit.data.shards\n",
        "training/__init__.py": "",
        "training/loop.py": """\
            def run():
                from sslvit.data import shards  # deferred: optional library
                return shards
            """,
        "cli/__init__.py": "",
        "extra.py": "",
        "data/_codec.c": "/* an extension module: a leaf */",
        "data/codec.py": "from sslvit.data._codec import decode\n",  # the extension, not the package
    })
    found = structure.read(root)
    assert found.top_level == ["extra", "files"]
    assert found.unplaced() == ["sslvit.extra"]
    assert [e.target for e in found.edges if e.source == "sslvit.data.codec"] == ["sslvit.data._codec"]
    assert found.circles() == [["sslvit.checkpoint.format", "sslvit.data.shards"],
                               ["sslvit.models", "sslvit.models.vit"]]
    assert [(e.source, e.target, e.line) for e in found.up_imports()] == [
        ("sslvit.data.shards", "sslvit.checkpoint.format", 6)]
    explained, unexplained = found.deferred()
    assert [(e.source, e.target) for e in explained] == [("sslvit.training.loop", "sslvit.data.shards")]
    assert [(e.source, e.target) for e in unexplained] == [("sslvit.data.shards", "sslvit.checkpoint.format")]
    assert not any(e.target == "sslvit.training.loop" for e in found.edges)
    assert {(f.module, f.name, f.lines) for f in found.functions} == {
        ("sslvit.data.shards", "hashed", 3), ("sslvit.training.loop", "run", 3)}
    table = structure.report(found)
    assert "| circles | 2 |" in table and "| imports from a lower layer up | 1 |" in table
    assert "| of them without a `# deferred:` reason | 1 |" in table


def test_assign_places_a_module_the_layer_table_does_not_know(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "train.py": "from sslvit import cli\n", "cli/__init__.py": ""})
    assert structure.read(root).up_imports() == []  # sslvit.train is in no layer: nothing to judge
    placed = structure.read(root, {"sslvit.train": "training"})
    assert [(e.source, e.target) for e in placed.up_imports()] == [("sslvit.train", "sslvit.cli")]


@pytest.fixture(scope="module")
def house() -> structure.Structure:
    return structure.read(ROOT / "sslvit")


def test_sslvit_has_no_circle_no_import_up_and_every_module_in_a_layer(house):
    assert house.circles() == []
    assert [f"{e.source}:{e.line} -> {e.target}" for e in house.up_imports()] == []
    assert house.unplaced() == []
    assert house.top_level == ["errors", "files", "progress", "version"]


def test_every_import_inside_a_function_says_why(house):
    _, unexplained = house.deferred()
    assert [f"{e.source}:{e.line} -> {e.target}" for e in unexplained] == []


def test_the_step_loop_reads_in_one_screen(house):
    loops = {f.name: f.lines for f in house.functions if f.module == "sslvit.training.loop"}
    assert loops["run_steps"] <= 80 and loops["train"] <= 80


TORCH_FREE = ("sslvit", "sslvit.cli", "sslvit.cli.pretrain", "sslvit.cli.shards", "sslvit.cli.config_list",
              "sslvit.cli.config_show", "sslvit.cli.publish", "sslvit.cli.visualize", "sslvit.config",
              "sslvit.training.config", "sslvit.errors", "sslvit.files", "sslvit.progress")


def test_the_command_line_and_the_config_start_without_torch():
    probe = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n" \
            "print(sorted(m for m in ('torch', 'accelerate', 'numpy') if m in sys.modules))"
    for name in TORCH_FREE:
        done = subprocess.run([sys.executable, "-c", probe, name], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "torch" not in done.stdout and "accelerate" not in done.stdout, f"{name} imports {done.stdout}"
