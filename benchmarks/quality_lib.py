"""What the quality benchmarks share: ``quality.py``, ``backbones.py`` and ``pos_coding.py``.

Every stage runs as the ``sslvit`` command (``python -m sslvit ...``) in a subprocess from the
repository root, its output kept in a log; a checkpoint's metadata is read from its safetensors
header (``sslvit.checkpoint.read_file_metadata``); random encoders are built and written through
the package's public functions (``sslvit.load_checkpoint``, ``sslvit.save_model``). Only the
raw-pixel baselines reach further inside the package (the built-in corpora's arrays, the linear
probe and kNN on a feature matrix).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEPS_LINE = re.compile(r"(\d+) batches/epoch/rank, (\d+) steps")


def sslvit_command(*args: str) -> list[str]:
    """``python -m sslvit ARGS`` with this interpreter."""
    return [sys.executable, "-m", "sslvit", *args]


def run(cmd: list[str], log: Path) -> tuple[str, float]:
    """Run ``cmd`` from the repository root, keep its output in ``log``, fail loudly; (stdout, seconds)."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}), see {log}:\n{done.stderr[-3000:]}")
    print(f"  done in {seconds:.0f}s", flush=True)
    return done.stdout, seconds


def pretrain(recipe: str, name: str, out: Path, overrides: list[str], reuse: bool = False) -> tuple[Path, float, str]:
    """Pretrain ``recipe`` (a shipped config name or a YAML file) into ``out/runs/name``, its log in
    ``out/logs/name_pretrain.log``; (encoder path, seconds, stdout). With ``reuse``, a finished run
    of the same command (its encoder, output and time) is taken as it is."""
    record = out / "runs" / name / "pretrain_command.json"
    log = out / "logs" / f"{name}_pretrain.log"
    command = {"recipe": recipe, "overrides": overrides}
    if reuse and record.is_file() and log.is_file() and json.loads(record.read_text()).get("command") == command:
        saved = json.loads(record.read_text())
        print(f"reusing {name}: pretrained in {saved['seconds']:.0f}s", flush=True)
        return Path(saved["encoder"]), saved["seconds"], log.read_text()
    stdout, seconds = run(sslvit_command("pretrain", "--config", recipe, f"train.out_dir={out / 'runs'}",
                                         f"train.name={name}", "train.overwrite=true", "train.progress=false",
                                         "train.trackers=[]", *overrides), log)
    match = re.search(r"^encoder:\s+(\S+)", stdout, re.M)
    if not match:
        raise SystemExit(f"the {recipe} run printed no 'encoder: PATH' line, see {log}")
    encoder = Path(match.group(1))
    encoder = encoder if encoder.is_absolute() else ROOT / encoder
    record.write_text(json.dumps({"command": command, "encoder": str(encoder), "seconds": seconds}) + "\n")
    return encoder, seconds, stdout


def resolved_config(recipe: str, overrides: list[str]) -> dict[str, Any]:
    """The config ``sslvit pretrain --config recipe overrides`` would run with (``sslvit config``)."""
    import yaml

    done = subprocess.run(sslvit_command("config", "--config", recipe, *overrides), cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sslvit config --config {recipe} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return yaml.safe_load(done.stdout)


def same_steps(stdout: str, recipe: str, overrides: list[str]) -> list[str]:
    """Overrides that give another run the optimizer steps of the run that printed ``stdout`` (its
    "N batches/epoch/rank, M steps" line), and its warmup in steps when the recipe counts warmup in
    epochs (which would otherwise scale with the epoch length)."""
    found = STEPS_LINE.search(stdout)
    if not found:
        raise SystemExit(f"the {recipe} run printed no 'N batches/epoch/rank, M steps' line")
    steps = [f"train.steps={found.group(2)}"]
    optim = resolved_config(recipe, overrides)["optim"]
    if optim.get("warmup_steps") is None:
        steps.append(f"optim.warmup_steps={round(optim['warmup_epochs'] * int(found.group(1)))}")
    print(f"  every run: {' '.join(steps)}", flush=True)
    return steps


def encoder_file(spec: str | Path) -> Path:
    """A checkpoint file: ``spec`` itself, or ``model.safetensors`` in the run directory it names."""
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else (Path.cwd() / path)
    return path / "model.safetensors" if path.is_dir() else path.resolve()


def metadata(checkpoint: Path) -> dict[str, Any]:
    """The ``sslvit.*`` entries of a safetensors checkpoint's header, JSON-decoded, without the
    prefix (``model``, ``config``, ``objective``, ``normalization``, ...); empty for other files."""
    from sslvit.checkpoint import read_file_metadata

    return read_file_metadata(checkpoint)


def model_config(checkpoint: Path) -> dict[str, Any]:
    """The encoder's constructor arguments: from the metadata, else as ``sslvit.load_checkpoint``
    rebuilds them (plain state dicts)."""
    import sslvit

    return dict(metadata(checkpoint).get("model") or sslvit.load_checkpoint(checkpoint).get_config())


def random_encoder(checkpoint: Path, path: Path, overrides: dict[str, Any], seed: int) -> Path:
    """``checkpoint``'s architecture with constructor ``overrides`` (e.g. ``pos_embed``), freshly
    initialised after ``torch.manual_seed(seed)``, written to ``path`` with the checkpoint's run
    metadata (config, objective, input normalisation)."""
    import torch

    import sslvit

    trained = sslvit.load_checkpoint(checkpoint)
    config = {**model_config(checkpoint), **overrides}
    config.pop("family", None)
    torch.manual_seed(seed)
    model = type(trained)(**config)
    meta = metadata(checkpoint)
    extra = {k: meta[k] for k in ("config", "objective", "normalization") if k in meta}
    return sslvit.save_model(model, path, model.get_config(), extra=extra)


def corpus_arrays(corpus: str, image_size: int = 32) -> dict[str, tuple[Any, Any]]:
    """split -> (uint8 images (N, S, S), int64 labels) of a built-in corpus (``digits``: train / val;
    ``fashion-mnist``: train / val / test)."""
    if corpus == "digits":
        from sslvit.data.digits import digits_arrays

        return dict(digits_arrays(image_size))
    from sslvit.data.fashion_mnist import fashion_mnist_arrays

    return {k: (v["images"], v["labels"]) for k, v in fashion_mnist_arrays(image_size=image_size).items()}


def pixel_probe_knn(corpus: str, fit_split: str, report_split: str, probe_epochs: int) -> dict[str, float]:
    """The linear probe (the same sweep the encoders get) and kNN on standardised raw pixels:
    top-1 on ``report_split`` after fitting on ``fit_split``, and the seconds it took."""
    import torch

    from sslvit.evaluate.knn import knn_evaluate
    from sslvit.evaluate.linear_probe import ProbeConfig, evaluate_probe, fit_probe

    start = time.time()
    arrays = corpus_arrays(corpus, 32)

    def flat(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = arrays[split]
        return (torch.tensor(images.reshape(len(images), -1), dtype=torch.float32) / 255.0,
                torch.as_tensor(labels, dtype=torch.long))

    (xt, yt), (xr, yr) = flat(fit_split), flat(report_split)
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    xt, xr = (xt - mean) / std, (xr - mean) / std
    classes = int(yt.max()) + 1
    probe = fit_probe(xt, yt, classes, ProbeConfig(epochs=probe_epochs))
    return {"linear_probe": evaluate_probe(probe["probe"], xr, yr)["top1"],
            "knn": knn_evaluate(xt, yt, xr, yr, num_classes=classes)["top1"], "seconds": time.time() - start}


def pixel_logistic_regression(image_size: int) -> float:
    """Top-1 (percent) of scikit-learn's logistic regression on standardised raw pixels of the
    digits split (train -> val)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    arrays = corpus_arrays("digits", image_size)
    (xt, yt), (xv, yv) = arrays["train"], arrays["val"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(xt.reshape(len(xt), -1) / 255.0, yt)
    return 100.0 * float((clf.predict(xv.reshape(len(xv), -1) / 255.0) == yv).mean())
