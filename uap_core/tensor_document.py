"""Tensors and a JSON document in one safetensors file, with a checksum: the container of a run's checkpoint
(:mod:`uap_core.checkpoint`) and of a finished run's result (:mod:`uap_core.result_file`).

The safetensors header's metadata holds ``format``, ``format_version`` (text) and, under the caller's key, the JSON
document; the document carries ``tensor_digest``, the SHA-256 of the tensors (:func:`tensor_digest`), so that a damaged
file is refused instead of being read wrong. Reading never unpickles (safetensors and JSON only).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import safetensors.torch
import torch


class NotThisDocument(ValueError):
    """The bytes are readable but are not (or no longer) a document of the expected format and version, or their
    tensors do not match their checksum. Its text is the reason, in a few words."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over every tensor's name, dtype, shape and bytes, in name order, wherever the tensors are."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encode(tensors: dict[str, torch.Tensor], document: dict[str, Any], file_format: str, version: int, key: str,
           default: Callable[[Any], Any] | None = None) -> bytes:
    """The file's bytes: ``tensors`` (contiguous, CPU) and ``document`` (JSON; ``default`` as json.dumps' fallback) under
    ``key``, the document given the tensors' ``tensor_digest``."""
    document = {**document, "tensor_digest": tensor_digest(tensors)}
    header = {"format": file_format, "format_version": str(version), key: json.dumps(document, default=default)}
    return safetensors.torch.save(tensors, metadata=header)


def decode(data: bytes, file_format: str, version: int, key: str, what: str) -> tuple[dict[str, Any],
                                                                                        dict[str, torch.Tensor]]:
    """(the JSON document, the tensors) of a file's bytes, its checksum verified. :class:`NotThisDocument` when the
    format or version differs (``what``: the kind of file, e.g. "a UAP Explorer checkpoint") or the tensors do not
    match their checksum; any other exception when the bytes are not a safetensors file at all."""
    header_size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + header_size]).get("__metadata__") or {}
    if metadata.get("format") != file_format:
        raise NotThisDocument(f"it is not {what}")
    if metadata.get("format_version") != str(version):
        raise NotThisDocument(f"format version {metadata.get('format_version')}; this version reads {version}")
    document = json.loads(metadata[key])
    tensors = safetensors.torch.load(data)
    if tensor_digest(tensors) != document["tensor_digest"]:
        raise NotThisDocument("its tensors do not match their checksum: the file is damaged")
    return document, tensors


__all__ = ["NotThisDocument", "decode", "encode", "tensor_digest"]
