"""Size on disk: the saved (effective) state dict, dense and in a compressed sparse encoding.

Sparse encoding (``CAPLSPZ1``), chosen to show what unstructured/kernel sparsity could save
on disk without any special runtime:

- a header (JSON: per tensor name, dtype, shape, encoding, payload length) and payloads;
- a tensor is stored as ``packbits(tensor != 0)`` followed by the non-zero values when that is
  smaller than its raw bytes (roughly: more than 1/32 zeros for float32), otherwise raw;
- the whole blob is zlib-compressed (level 6).

It is lossless (:func:`sparse_decode` restores the tensors exactly) and at 90% zeros a float32
tensor costs about 0.125 + 0.4 bytes per entry before zlib, against 4 dense.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from capl.benchmark._masks import effective_state_dict

MAGIC = b"CAPLSPZ1"
ZLIB_LEVEL = 6


def state_dict_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(state_dict)`` in memory, with masks made permanent.

    Masked models are saved as deployed: effective weights only, without the ``_orig`` and
    ``_mask`` duplicates, so a masked model is exactly as large as the dense one.

    Args:
        model: The network; not modified.

    Returns:
        Size of the serialised state dict in bytes.
    """
    buffer = io.BytesIO()
    torch.save(effective_state_dict(model), buffer)
    return buffer.getbuffer().nbytes


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in sparse blob")
    return dtype


def sparse_encode(state: Mapping[str, torch.Tensor]) -> bytes:
    """Encode tensors as the compressed sparse blob described in the module docstring.

    Args:
        state: Name -> tensor (any dtype, any device).

    Returns:
        The zlib-compressed blob.
    """
    header: list[dict] = []
    payloads: list[bytes] = []
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        raw = _raw_bytes(tensor)
        entry = {"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape)}
        numel = tensor.numel()
        if numel and tensor.dtype != torch.bool:
            flat = tensor.contiguous().reshape(-1)
            mask = flat != 0
            nnz = int(mask.sum())
            sparse_len = (numel + 7) // 8 + nnz * tensor.element_size()
            if sparse_len < len(raw):
                bits = np.packbits(mask.numpy()).tobytes()
                values = _raw_bytes(flat[mask])
                entry.update(encoding="bitmask", nnz=nnz)
                payload = bits + values
            else:
                entry["encoding"] = "raw"
                payload = raw
        else:
            entry["encoding"] = "raw"
            payload = raw
        entry["length"] = len(payload)
        header.append(entry)
        payloads.append(payload)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob = MAGIC + struct.pack("<Q", len(head)) + head + b"".join(payloads)
    return zlib.compress(blob, ZLIB_LEVEL)


def sparse_decode(data: bytes) -> OrderedDict[str, torch.Tensor]:
    """Invert :func:`sparse_encode`.

    Args:
        data: A blob produced by :func:`sparse_encode`.

    Returns:
        Name -> CPU tensor, bit-identical to the encoded tensors.

    Raises:
        ValueError: If ``data`` is not such a blob.
    """
    blob = zlib.decompress(data)
    if not blob.startswith(MAGIC):
        raise ValueError("not a capl sparse blob (bad magic)")
    (head_len,) = struct.unpack_from("<Q", blob, len(MAGIC))
    offset = len(MAGIC) + 8
    header = json.loads(blob[offset : offset + head_len].decode("utf-8"))
    offset += head_len
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for entry in header:
        payload = blob[offset : offset + entry["length"]]
        offset += entry["length"]
        dtype = _dtype_from_name(entry["dtype"])
        shape = entry["shape"]
        numel = int(np.prod(shape)) if shape else 1

        def from_bytes(buf: bytes, count: int, dtype: torch.dtype = dtype) -> torch.Tensor:
            if count == 0:
                return torch.empty(0, dtype=dtype)
            return torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(dtype)[:count]

        if entry["encoding"] == "bitmask":
            nbits = (numel + 7) // 8
            mask = np.unpackbits(np.frombuffer(payload[:nbits], dtype=np.uint8))[:numel]
            mask_t = torch.from_numpy(mask.astype(bool))
            flat = torch.zeros(numel, dtype=dtype)
            flat[mask_t] = from_bytes(payload[nbits:], entry["nnz"])
        else:
            flat = from_bytes(payload, numel)
        out[entry["name"]] = flat.reshape(shape).clone()
    return out


def sparse_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's effective state dict in the compressed sparse encoding.

    Args:
        model: The network (masked or not); not modified.

    Returns:
        ``len(sparse_encode(effective_state_dict(model)))``.
    """
    return len(sparse_encode(effective_state_dict(model)))
