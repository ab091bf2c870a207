"""The content hash that pitlake's manifests record (``output.content_hash``), computed here.

The server hashes an export's rows as it writes them: each row is encoded in the Arrow row
format of arrow-rs (``arrow_row``, ascending, nulls first — the encoding the Rust engine's
``ContentHash`` feeds to SHA-256), and the hash is the row count plus the sum, lane by lane
modulo 2^64, of the rows' SHA-256 digests read as four little-endian 64-bit words::

    rows3:sha256sum:1c7a6342b6c550e6178cdd577323f2fdab3feba0f7b1bf43fccf60acf506ae80

So it depends neither on the order of the rows nor on how they are cut into batches, and two
results with equal hashes hold the same rows with the same types. This module encodes rows
the same way, so :meth:`pitlake.Client.reproduce` can check a rebuilt training set against its
manifest on the client, where the ``reproduce`` command is not reachable (python/README.md).

The encoding, per column type (arrow-rs documents it on ``RowConverter``):

- integers, dates, times, timestamps, durations: ``01`` then the value big-endian with its
  sign bit flipped (unsigned: as is); a null is ``00`` and as many zero bytes;
- floats: their bits, negative values with every bit but the sign flipped, then as integers;
- decimals: the unscaled 128- or 256-bit integer, as integers;
- booleans: ``01`` then ``00``/``01``; null ``00 00``;
- strings and binaries: null ``00``, empty ``01``, else ``02`` then the bytes in blocks (four
  of 8 bytes, then blocks of 32), each followed by ``FF`` when more follow, the last padded
  with zeros and followed by its length;
- lists: null ``00``, empty ``01``, else each element's encoding encoded as bytes (above),
  then ``01``; fixed-size lists: null ``00``, else ``01`` and the elements' encodings;
- structs: ``01`` and the fields' encodings; null ``00`` and the encoding of all-null fields;
- dictionaries: their values.

Run-end encoded, union, map and interval columns are not encoded here (the server's training
sets do not produce them); hashing one raises :class:`pitlake.errors.Unimplemented`.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from typing import Callable, Iterable, List, Optional, Union

import pyarrow as pa
import pyarrow.types as pt

from .errors import Unimplemented

__all__ = ["ContentHash", "content_hash"]

_MASK64 = (1 << 64) - 1
_BLOCK = 32
_MINI = 8
_MINI_COUNT = 4

Rows = List[bytes]


def _encode_bytes(value: Optional[bytes]) -> bytes:
    """The variable-length encoding of one byte string (None: null)."""
    if value is None:
        return b"\x00"
    if len(value) == 0:
        return b"\x01"
    out = bytearray(b"\x02")

    def blocks(data: bytes, size: int) -> None:
        count = -(-len(data) // size)
        for i in range(count):
            chunk = data[i * size : (i + 1) * size]
            out.extend(chunk)
            if i < count - 1:
                out.append(0xFF)
            else:
                out.extend(b"\x00" * (size - len(chunk)))
                out.append(len(chunk))

    if len(value) <= _BLOCK:
        blocks(value, _MINI)
    else:
        blocks(value[:_BLOCK], _MINI)
        # The mini blocks end with a continuation, not with the length of the last one.
        out[-1] = 0xFF
        blocks(value[_BLOCK:], _BLOCK)
    return bytes(out)


def _signed(values: Iterable[Optional[int]], width: int) -> Rows:
    bias = 1 << (8 * width - 1)
    null = b"\x00" * (width + 1)
    return [
        null if v is None else b"\x01" + (v + bias).to_bytes(width, "big") for v in values
    ]


def _unsigned(values: Iterable[Optional[int]], width: int) -> Rows:
    null = b"\x00" * (width + 1)
    return [null if v is None else b"\x01" + v.to_bytes(width, "big") for v in values]


def _float_bits(values: Iterable[Optional[int]], width: int) -> Rows:
    """Floats given as their bits (signed integers of the same width)."""
    flip = (1 << (8 * width - 1)) - 1
    return _signed((None if v is None else (v ^ flip if v < 0 else v) for v in values), width)


_INT_WIDTHS = {
    pa.int8(): 1,
    pa.int16(): 2,
    pa.int32(): 4,
    pa.int64(): 8,
}
_UINT_WIDTHS = {
    pa.uint8(): 1,
    pa.uint16(): 2,
    pa.uint32(): 4,
    pa.uint64(): 8,
}
_FLOAT_BITS = {
    pa.float16(): pa.int16(),
    pa.float32(): pa.int32(),
    pa.float64(): pa.int64(),
}


def _temporal_width(t: pa.DataType) -> Optional[int]:
    if pt.is_date32(t) or pt.is_time32(t):
        return 4
    if pt.is_date64(t) or pt.is_time64(t) or pt.is_timestamp(t) or pt.is_duration(t):
        return 8
    return None


def _null_row(t: pa.DataType) -> bytes:
    """The encoding of a null of type ``t`` (what a null struct's fields encode as)."""
    return _encode(pa.nulls(1, type=t))[0]


def _encode(arr: pa.Array) -> Rows:
    """One encoded value per element of ``arr``."""
    t = arr.type
    if pt.is_dictionary(t):
        return _encode(arr.dictionary_decode())
    if pt.is_null(t):
        return [b"\x02\x03"] * len(arr)
    if pt.is_boolean(t):
        return [
            b"\x00\x00" if v is None else (b"\x01\x01" if v else b"\x01\x00")
            for v in arr.to_pylist()
        ]
    if t in _INT_WIDTHS:
        return _signed(arr.to_pylist(), _INT_WIDTHS[t])
    if t in _UINT_WIDTHS:
        return _unsigned(arr.to_pylist(), _UINT_WIDTHS[t])
    if t in _FLOAT_BITS:
        bits = _FLOAT_BITS[t]
        return _float_bits(arr.view(bits).to_pylist(), bits.bit_width // 8)
    width = _temporal_width(t)
    if width is not None:
        return _signed(arr.view(pa.int32() if width == 4 else pa.int64()).to_pylist(), width)
    if pt.is_decimal(t):
        width = t.bit_width // 8
        raw = arr.view(pa.binary(width)).to_pylist()
        return _signed(
            (None if b is None else int.from_bytes(b, "little", signed=True) for b in raw),
            width,
        )
    if pt.is_fixed_size_binary(t):
        null = b"\x00" * (t.byte_width + 1)
        return [null if b is None else b"\x01" + b for b in arr.to_pylist()]
    if pt.is_string(t) or pt.is_large_string(t) or _is(t, "is_string_view"):
        return [_encode_bytes(None if s is None else s.encode()) for s in arr.to_pylist()]
    if pt.is_binary(t) or pt.is_large_binary(t) or _is(t, "is_binary_view"):
        return [_encode_bytes(b) for b in arr.to_pylist()]
    if pt.is_list(t) or pt.is_large_list(t):
        children = _encode(arr.values)
        offsets = arr.offsets.to_pylist()
        valid = arr.is_valid().to_pylist()
        out: Rows = []
        for i, ok in enumerate(valid):
            start, end = offsets[i], offsets[i + 1]
            if not ok:
                out.append(b"\x00")
            elif start == end:
                out.append(b"\x01")
            else:
                out.append(
                    b"".join(_encode_bytes(children[j]) for j in range(start, end)) + b"\x01"
                )
        return out
    if pt.is_fixed_size_list(t):
        size = t.list_size
        if arr.null_count == 0:
            children = _encode(arr.flatten())
            first = 0
        else:
            # flatten() drops the slots of null lists; encode the whole child and index it.
            children = _encode(arr.values)
            first = arr.offset * size
        valid = arr.is_valid().to_pylist()
        out = []
        for i, ok in enumerate(valid):
            if not ok:
                out.append(b"\x00")
            else:
                base = first + i * size
                out.append(b"\x01" + b"".join(children[base : base + size]))
        return out
    if pt.is_struct(t):
        if t.num_fields == 0:
            raise Unimplemented("the client cannot hash a struct column without fields")
        fields = [_encode(child) for child in arr.flatten()]
        null = b"\x00" + b"".join(_null_row(t.field(i).type) for i in range(t.num_fields))
        valid = arr.is_valid().to_pylist()
        return [
            b"\x01" + b"".join(f[i] for f in fields) if ok else null
            for i, ok in enumerate(valid)
        ]
    raise Unimplemented(
        f"the client cannot hash a column of type {t}; check this training set with "
        "`pitlake reproduce MANIFEST` on a machine that reaches the warehouse"
    )


def _is(t: pa.DataType, name: str) -> bool:
    check: Optional[Callable[[pa.DataType], bool]] = getattr(pt, name, None)
    return bool(check and check(t))


class ContentHash:
    """An order-independent hash of rows, equal to the server's for the same rows and types.

    >>> h = ContentHash()
    >>> h.update(pa.table({"x": [1, 2]}))
    >>> h.rows
    2
    """

    def __init__(self) -> None:
        self._lanes = [0, 0, 0, 0]
        self.rows = 0

    def update(self, batch: Union[pa.RecordBatch, pa.Table]) -> None:
        """Adds the rows of a batch (or a table)."""
        if isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.update(b)
            return
        if batch.num_rows == 0:
            return
        columns = [_encode(c) for c in batch.columns]
        digests = bytearray()
        if columns:
            for parts in zip(*columns):
                digests += hashlib.sha256(b"".join(parts)).digest()
        else:
            digests += hashlib.sha256(b"").digest() * batch.num_rows
        words = array("Q")
        if words.itemsize != 8:  # pragma: no cover - every CPython platform has 8-byte Q
            raise Unimplemented("this platform has no 64-bit array type")
        words.frombytes(bytes(digests))
        if sys.byteorder != "little":  # pragma: no cover - the tests run on little-endian
            words.byteswap()
        for lane in range(4):
            self._lanes[lane] = (self._lanes[lane] + sum(words[lane::4])) & _MASK64
        self.rows += batch.num_rows

    def hexdigest(self) -> str:
        """The hash as the manifest writes it: ``rows<n>:sha256sum:<64 hex digits>``."""
        return f"rows{self.rows}:sha256sum:" + "".join(f"{lane:016x}" for lane in self._lanes)


def content_hash(data: Union[pa.Table, pa.RecordBatch, pa.RecordBatchReader]) -> str:
    """The content hash of Arrow data, as a manifest's ``output.content_hash`` records it."""
    h = ContentHash()
    if isinstance(data, pa.RecordBatchReader):
        for batch in data:
            h.update(batch)
    else:
        h.update(data)
    return h.hexdigest()
