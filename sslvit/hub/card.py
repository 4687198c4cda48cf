"""The model card (``README.md``): YAML front matter with a ``model-index``, then usage, recipe,
results and pictures.

The card is written as a plain file and uploaded with the rest of the folder (``ModelCard.push_to_hub``
would validate it against the live Hub first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sslvit.files import MANIFEST_FILE
from sslvit.hub.metrics import EvalResult
from sslvit.objectives import objective_class

CAPTIONS = {  # in the order the card shows them
    "patch_embed_pcs": "Principal components of the patch-embedding filters (ViT paper, figure 7 left).",
    "pos_embed_similarity": "Cosine similarity of each patch's position embedding with every other "
    "(figure 7 centre).",
    "attention_distance": "Mean attention distance of every head against depth (figure 7 right).",
    "attention_rollout": "Attention rollout over sample images.",
    "mae_reconstructions": "MAE reconstructions: original, masked input, reconstruction.",
}


def front_matter(
    repo_id: str, config: dict[str, Any], results: list[EvalResult], license: str
) -> dict[str, Any]:
    """The card metadata: library, license, tags, datasets, pipeline tag and the ``model-index``."""
    sv = config["sslvit"]
    objective = (sv.get("objective") or {}).get("name", "")
    tags = ["sslvit", "vision-transformer", "image-feature-extraction", "pytorch", "safetensors"]
    tags += [objective] if objective else []
    tags += ["self-supervised"] if objective and not _objective_needs_labels(objective) else []
    tags += ["timm"] if sv["timm"]["loadable"] else []
    datasets = sorted({r.dataset for r in results} | {_train_dataset(sv.get("data") or {})})
    meta: dict[str, Any] = {
        "library_name": "sslvit",
        "license": license,
        "tags": tags,
        "datasets": datasets,
        "pipeline_tag": "image-feature-extraction",
    }
    if results:
        meta["model-index"] = [{"name": repo_id.split("/")[-1], "results": [_result(r) for r in results]}]
    return meta


def _objective_needs_labels(name: str) -> bool:

    try:
        return objective_class(name).needs_labels
    except KeyError:
        return True


def _result(r: EvalResult) -> dict[str, Any]:
    metrics = [{"type": "accuracy", "name": "Top-1 accuracy", "value": r.top1}]
    if r.top5 is not None:
        metrics.append({"type": "top_5_accuracy", "name": "Top-5 accuracy", "value": r.top5})
    return {
        "task": {"type": "image-classification", "name": r.task_name},
        "dataset": {"type": r.dataset, "name": r.dataset, "split": r.split},
        "metrics": metrics,
    }


def _train_dataset(data: dict[str, Any]) -> str:
    spec = str(data.get("train_shards") or "")
    if not spec:
        return "digits"
    if spec.startswith("hf:"):
        return spec[3:].split(":")[0]
    path = Path(spec.split(",")[0])
    return (
        path.parent.name if path.name in ("train", MANIFEST_FILE) or path.suffix == ".tar" else path.name
    ) or spec


def _usage(repo_id: str, config: dict[str, Any]) -> str:
    sv, pre = config["sslvit"], config["pretrained_cfg"]
    _, h, w = pre["input_size"]
    mean, std = [round(v, 4) for v in pre["mean"]], [round(v, 4) for v in pre["std"]]
    text = [
        "## How to use",
        "",
        f"Inputs are RGB images resized to {h}x{w}, scaled to [0, 1] and normalised with mean {mean} "
        f"and std {std}.",
        "",
        "With sslvit (the weights load with strict key matching):",
        "",
        "```python",
        "import sslvit",
        "",
        f'model = sslvit.from_pretrained("{repo_id}")  # a Hub repo id or a local folder',
        "tokens = model.forward_features(images)  # images (N, 3, H, W) -> (N, prefix + L, D)",
        "features = model(images)                 # pooled features (N, D), or logits with a head",
        "```",
        "",
    ]
    if sv["timm"]["loadable"]:
        text += [
            "With timm (`config.json` is in timm's Hub layout):",
            "",
            "```python",
            "import timm",
            "",
            f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)',
            "data_cfg = timm.data.resolve_data_config({}, model=model)",
            "transform = timm.data.create_transform(**data_cfg)",
            "```",
            "",
        ]
        if not sv["timm"]["variant"]:
            text += [
                f"timm's `{config['architecture']}` entry point is only the constructor here: "
                "`model_args` in "
                f"`config.json` override all of its defaults to build this `{sv['model'].get('arch')}` "
                "architecture.",
                "",
            ]
    else:
        text += [f"timm cannot build this encoder ({sv['timm']['reason']}); load it with sslvit.", ""]
    return "\n".join(text)


def _recipe(config: dict[str, Any]) -> str:
    sv = config["sslvit"]
    obj, recipe, data = sv.get("objective") or {}, sv.get("recipe") or {}, sv.get("data") or {}
    optim, train = recipe.get("optim") or {}, recipe.get("train") or {}
    rows = [
        (
            "Architecture",
            f"`{sv['model'].get('arch')}`: "
            + ", ".join(
                f"{k}={sv['model'][k]}"
                for k in (
                    "family",
                    "img_size",
                    "patch_size",
                    "embed_dim",
                    "embed_dims",
                    "depth",
                    "depths",
                    "num_heads",
                    "mlp_ratio",
                    "class_token",
                    "global_pool",
                    "pos_embed",
                )
                if k in sv["model"]
            ),
        )
    ]
    if obj:
        rows.append(("Objective", _objective_card(obj)))
    if data:
        rows.append(
            (
                "Data",
                f"{_train_dataset(data)}, image size {data.get('image_size')}, batch "
                f"{data.get('batch_size')} per process, crop scale {data.get('crop_scale')}, "
                f"hflip {data.get('hflip')}; mean/std from the {data.get('stats_source')}",
            )
        )
    if optim:
        rows.append(
            (
                "Optimiser",
                ", ".join(
                    f"{k}={optim.get(k)}"
                    for k in (
                        "name",
                        "lr",
                        "base_lr",
                        "min_lr",
                        "weight_decay",
                        "betas",
                        "schedule",
                        "warmup_steps",
                        "warmup_epochs",
                        "clip_grad",
                        "layer_decay",
                    )
                    if optim.get(k) is not None
                ),
            )
        )
    if train:
        rows.append(
            (
                "Schedule",
                ", ".join(
                    f"{k}={train.get(k)}"
                    for k in ("steps", "epochs", "grad_accum", "precision", "seed")
                    if train.get(k) is not None
                ),
            )
        )
    lines = ["## Training recipe", "", "| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    lines += ["", "The full run config is in `config.json` under `sslvit`.", ""]
    return "\n".join(lines)


def _objective_card(obj: dict[str, Any]) -> str:

    try:
        return objective_class(obj.get("name", "")).card(obj)
    except KeyError:
        return f"`{obj.get('name')}`"


def _results(results: list[EvalResult]) -> str:
    if not results:
        return "## Results\n\nNo evaluation results were published with this checkpoint.\n"
    lines = [
        "## Results",
        "",
        "| Task | Dataset | Split | Top-1 | Top-5 | Source |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        top5 = "" if r.top5 is None else f"{r.top5:.2f}"
        lines.append(f"| {r.task_name} | {r.dataset} | {r.split} | {r.top1:.2f} | {top5} | `{r.source}` |")
    return "\n".join(lines + [""])


def _pictures(figures: list[str]) -> str:
    if not figures:
        return ""
    lines = ["## Pictures", ""]
    order = list(CAPTIONS)
    for rel in sorted(figures, key=lambda f: (order.index(Path(f).stem) if Path(f).stem in order else 99, f)):
        caption = CAPTIONS.get(Path(rel).stem, Path(rel).stem.replace("_", " "))
        lines += [f"![{caption}]({rel})", "", f"*{caption}* Numbers: `{Path(rel).with_suffix('.json')}`.", ""]
    return "\n".join(lines)


def model_card(
    repo_id: str,
    config: dict[str, Any],
    results: list[EvalResult],
    figures: list[str],
    license: str = "apache-2.0",
    num_params: int | None = None,
) -> str:
    """The full ``README.md`` text; ``figures`` are paths relative to the repo root."""
    sv = config["sslvit"]
    m = sv["model"]
    objective = (sv.get("objective") or {}).get("name", "an unknown objective")
    params = f", {num_params / 1e6:.2f}M parameters" if num_params else ""
    meta = yaml.safe_dump(
        front_matter(repo_id, config, results, license), sort_keys=False, allow_unicode=True
    )
    body = [
        f"---\n{meta}---",
        "",
        f"# {repo_id}",
        "",
        f"A `{m.get('family', 'vit')}` encoder (`{m.get('arch')}`{params}) "
        f"pretrained with `{objective}` by sslvit. The weights in `model.safetensors` use timm's parameter "
        "names for this family and hold the encoder only.",
        "",
        _usage(repo_id, config),
        _recipe(config),
        _results(results),
        _pictures(figures),
        "## Files",
        "",
        "- `model.safetensors`: encoder weights (safetensors, `format: pt`, the sslvit model config in "
        "its metadata)",
        "- `config.json`: timm's Hub config plus an `sslvit` section (model, objective, recipe, data)",
        "- `README.md`: this card",
        *(["- `figures/`: the pictures above and their numbers (JSON)"] if figures else []),
        "",
        "<details><summary>sslvit model config</summary>",
        "",
        "```json",
        json.dumps(m, indent=2),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(body)
