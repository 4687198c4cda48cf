"""Build a Hub model repository folder from an encoder checkpoint and upload it in one commit.

Every check runs before anything is written or uploaded: the repo id, the token (from ``HF_TOKEN``
or the ``hf auth login`` cache; never printed, logged or written), the checkpoint (an sslvit encoder)
and each metrics file (it must have measured this checkpoint). The upload uses the real
``huggingface_hub`` client: ``create_repo(exist_ok=True)``, an optional branch, then ``create_commit``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sslvit.checkpoint import checkpoint_sha256, save_model
from sslvit.files import CARD_FILE, CONFIG_FILE, FIGURES_DIR, WEIGHTS_FILE
from sslvit.hub.card import model_card
from sslvit.hub.common import PublishError, check_repo_id
from sslvit.hub.export import ReadEncoder, hub_config, read_encoder
from sslvit.hub.metrics import EvalResult, read_metrics


@dataclass
class PublishResult:
    """What :func:`publish` did: the folder it built, its files, and the commit (None for a dry run)."""

    folder: Path
    files: list[str]
    repo_id: str
    commit_url: str | None = None
    results: list[EvalResult] = field(default_factory=list)


def resolve_token(token: str | None = None) -> str:
    """The Hub token: ``token``, else ``HF_TOKEN``, else the login cache; raise when there is none."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run DIR)"
        )
    return token


def find_figures(checkpoint: str | Path, figures: str | Path | None = None) -> list[Path]:
    """PNG files of ``figures`` (default ``<checkpoint dir>/figures`` when it exists), sorted."""
    folder = Path(figures) if figures else Path(checkpoint).resolve().parent / "figures"
    if figures and not folder.is_dir():
        raise PublishError(f"figures folder not found: {folder}")
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def build_folder(
    encoder: ReadEncoder,
    out_dir: str | Path,
    repo_id: str,
    results: Sequence[EvalResult] = (),
    figures: Sequence[Path] = (),
    license: str = "apache-2.0",
) -> list[str]:
    """Write ``model.safetensors``, ``config.json``, ``README.md`` and ``figures/`` into ``out_dir``.

    Returns the written paths relative to ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = encoder.metadata
    extra = {k: meta[k] for k in ("objective", "config") if meta.get(k) is not None}
    save_model(encoder.state, out / WEIGHTS_FILE, encoder.model.get_config(), kind="encoder", extra=extra)
    config = hub_config(encoder, license=license)
    config["sslvit"]["source_checkpoint"]["sha256"] = checkpoint_sha256(encoder.path)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    written = [WEIGHTS_FILE, CONFIG_FILE]
    fig_names = []
    for png in figures:
        (out / FIGURES_DIR).mkdir(exist_ok=True)
        for src in (png, png.with_suffix(".json")):
            if src.is_file():
                shutil.copyfile(src, out / FIGURES_DIR / src.name)
                written.append(f"{FIGURES_DIR}/{src.name}")
        fig_names.append(f"{FIGURES_DIR}/{png.name}")
    num_params = sum(p.numel() for p in encoder.model.parameters())
    card = model_card(repo_id, config, list(results), fig_names, license=license, num_params=num_params)
    (out / CARD_FILE).write_text(card)
    return sorted(written + [CARD_FILE])


def assert_no_secret(folder: Path, files: Sequence[str], token: str) -> None:
    """Refuse to upload a folder in which the token appears (it never should)."""
    needle = token.encode()
    for rel in files:
        if needle in (folder / rel).read_bytes():
            raise PublishError(f"refusing to upload: {rel} contains the Hub token")


def upload_folder(
    folder: Path,
    files: Sequence[str],
    repo_id: str,
    token: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload sslvit encoder",
    endpoint: str | None = None,
) -> str:
    """Create the repo if missing (and branch ``revision``), commit ``files`` at once; return its URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in files]
    info = api.create_commit(
        repo_id, operations, commit_message=commit_message, revision=revision, repo_type="model"
    )
    return str(info.commit_url)


def publish(
    checkpoint: str | Path,
    repo_id: str,
    metrics: Sequence[str | Path] = (),
    private: bool = False,
    revision: str | None = None,
    dry_run: str | Path | None = None,
    figures: str | Path | None = None,
    license: str = "apache-2.0",
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PublishResult:
    """Check everything, build the repository folder, and (unless ``dry_run``) upload it in one commit.

    ``dry_run`` is a folder to write to; nothing is uploaded and no token is needed. Otherwise the
    folder is built in a temporary directory that is removed after the upload.
    """
    check_repo_id(repo_id)
    secret = None if dry_run else resolve_token(token)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise PublishError(f"checkpoint not found: {checkpoint}")
    encoder = read_encoder(checkpoint)
    digest = checkpoint_sha256(checkpoint)
    results = [read_metrics(m, checkpoint, digest) for m in metrics]
    pngs = find_figures(checkpoint, figures)
    if dry_run is not None:
        files = build_folder(encoder, dry_run, repo_id, results, pngs, license)
        return PublishResult(Path(dry_run), files, repo_id, None, results)
    assert secret is not None
    objective = (encoder.metadata.get("objective") or {}).get("name", "sslvit")
    message = (
        commit_message or f"Upload {encoder.model.get_config().get('arch') or 'ViT'} encoder ({objective})"
    )
    with tempfile.TemporaryDirectory(prefix="sslvit-publish-") as tmp:
        folder = Path(tmp)
        files = build_folder(encoder, folder, repo_id, results, pngs, license)
        assert_no_secret(folder, files, secret)
        url = upload_folder(folder, files, repo_id, secret, private, revision, message, endpoint)
    return PublishResult(folder, files, repo_id, url, results)
