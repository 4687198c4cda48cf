"""Data layer: tar shards in, uint8 image batches out.

    write_shards / ShardWriter / load_manifest     sslvit.data.shards   (`sslvit shards` is the CLI)
    image_folder / hf_dataset                      sslvit.data.sources
    ensure_digits_shards                           sslvit.data.digits   (built-in corpus)
    ensure_fashion_mnist_shards, read_idx          sslvit.data.fashion_mnist   (second built-in corpus)
    build_loader / StreamLoader / resolve_shards   sslvit.data.stream, sslvit.data.plan
    index_shards                                   sslvit.data.index    (manifest.json for existing shards)
    pretrain/finetune/probe/eval_transform, normalize   sslvit.data.transforms
"""

from sslvit.data.decode import DEFAULT_MAX_PIXELS, SampleError, decode_image
from sslvit.data.digits import ensure_digits_shards
from sslvit.data.fashion_mnist import FashionMNISTNotFound, IdxError, ensure_fashion_mnist_shards, read_idx
from sslvit.data.index import index_shards
from sslvit.data.plan import ShardSet, resolve, resolve_shards
from sslvit.data.shards import ShardWriter, SourceItem, load_manifest, write_shards
from sslvit.data.sources import hf_dataset, image_folder
from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD, normalization
from sslvit.data.stream import StreamLoader, build_loader, default_rank_world
from sslvit.data.transforms import (
                                    ImageTransform,
                                    eval_transform,
                                    finetune_transform,
                                    normalize,
                                    pretrain_transform,
                                    probe_transform,
)

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGENET_MEAN", "IMAGENET_STD", "FashionMNISTNotFound", "IdxError", "ImageTransform",
    "SampleError", "ShardSet", "ShardWriter", "SourceItem", "StreamLoader", "build_loader", "decode_image",
    "default_rank_world", "ensure_digits_shards", "ensure_fashion_mnist_shards", "eval_transform",
    "finetune_transform", "hf_dataset", "image_folder", "index_shards", "load_manifest", "normalization", "normalize", "pretrain_transform",
    "probe_transform", "read_idx", "resolve", "resolve_shards", "write_shards",
]
