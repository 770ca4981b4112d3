"""The safetensors layout, and how a nested state dict maps onto it.

A safetensors file is an 8-byte little-endian header length, a JSON header
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``, padded with spaces to a multiple of 8 bytes) and the tensors'
bytes back to back, offsets relative to the end of the header.

Tensors at the top level of a state dict keep their key as their name, so a
model's ``state_dict()`` saved here reads back with
``safetensors.torch.load_file`` under the same names. Anything else (nested
dicts and lists, as in optimizer state; ints, floats, strings, None) is
recorded in ``__metadata__["curvine.tree"]`` as JSON, with nested tensors
named by their path (``optimizer.state.0.exp_avg``).
"""

import json
import struct

import torch

DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
                     ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        DTYPES[getattr(torch, _name)] = _code
CODES = {v: k for k, v in DTYPES.items()}

TREE_KEY = "curvine.tree"
FORMAT_KEY = "format"


def flatten(state):
    """``(tensors, tree)``: tensors by safetensors name, in insertion order,
    and the JSON tree that rebuilds ``state`` (None for a flat dict of
    tensors with string keys)."""
    if not isinstance(state, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
    tensors = {}
    flat = all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())

    def name_for(path):
        name = ".".join(str(p) for p in path)
        base, i = name, 1
        while name in tensors:
            name = f"{base}#{i}"
            i += 1
        return name

    def enc(v, path):
        if isinstance(v, torch.Tensor):
            name = name_for(path)
            tensors[name] = v
            return {"t": name}
        if isinstance(v, dict):
            items = []
            for k, x in v.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"{'.'.join(map(str, path)) or 'state_dict'}: keys must be str or int, got {k!r}")
                items.append([k, enc(x, path + [k])])
            return {"d": items}
        if isinstance(v, (list, tuple)):
            tag = "l" if isinstance(v, list) else "u"
            return {tag: [enc(x, path + [i]) for i, x in enumerate(v)]}
        if v is None or isinstance(v, (bool, int, float, str)):
            return {"v": v}
        where = ".".join(map(str, path))
        raise TypeError(f"{where}: cannot store {type(v).__name__} in a checkpoint "
                        "(tensors, dicts, lists, tuples, str, int, float, bool, None)")

    tree = enc(state, [])
    return tensors, (None if flat else tree)


def unflatten(tree, tensors):
    def dec(node):
        ((tag, x),) = node.items()
        if tag == "t":
            return tensors[x]
        if tag == "d":
            return {k: dec(v) for k, v in x}
        if tag == "l":
            return [dec(v) for v in x]
        if tag == "u":
            return tuple(dec(v) for v in x)
        return x

    return dec(tree)


def header(tensors, metadata):
    """``(header_bytes, [(name, tensor, nbytes)])`` for tensors laid out in
    the order given."""
    entries = {}
    layout = []
    off = 0
    for name, t in tensors.items():
        code = DTYPES.get(t.dtype)
        if code is None:
            raise TypeError(f"{name}: dtype {t.dtype} has no safetensors code")
        n = t.numel() * t.element_size()
        entries[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + n]}
        layout.append((name, t, n))
        off += n
    if metadata:
        entries = {"__metadata__": metadata, **entries}
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, layout


def parse_header(prefix: bytes, path: str):
    """``(header_dict, data_start)`` from the file's first bytes; raises
    ValueError when they are not a safetensors header."""
    if len(prefix) < 8:
        raise ValueError(f"{path}: not a safetensors file (only {len(prefix)} bytes)")
    (n,) = struct.unpack("<Q", prefix[:8])
    if 8 + n > len(prefix):
        raise ValueError(f"{path}: safetensors header of {n} bytes is cut short")
    try:
        h = json.loads(prefix[8:8 + n])
    except ValueError as e:
        raise ValueError(f"{path}: bad safetensors header: {e}") from None
    if not isinstance(h, dict):
        raise ValueError(f"{path}: bad safetensors header")
    return h, 8 + n
