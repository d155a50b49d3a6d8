"""dxproxy/models/gguf.py: a GGUF header's key-values (arrays skipped), the parameter count
summed from the tensor table, and GGUFError for files it cannot read."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from dxproxy.models.gguf import FILE_TYPES, GGUFError, read_metadata
from tests.conftest import smollm2_path
from tests.fakes.engine_requests import write_gguf

# GGUF value types (the spec's gguf_type).
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, kind: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", kind) + payload


def array(item: int, payloads: list[bytes]) -> bytes:
    return struct.pack("<IQ", item, len(payloads)) + b"".join(payloads)


def tensor(name: str, *shape: int) -> bytes:
    # name, dims, shape, then type (uint32) and data offset (uint64)
    return (
        gstr(name) + struct.pack(f"<I{len(shape)}Q", len(shape), *shape) + struct.pack("<IQ", 0, 0)
    )


def gguf(path: Path, kvs: list[bytes], tensors: tuple[bytes, ...] = (), version: int = 3) -> Path:
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    path.write_bytes(header + b"".join(kvs) + b"".join(tensors))
    return path


# -- a real file ---------------------------------------------------------------------------------


def test_real_smollm2_header() -> None:
    meta = read_metadata(str(smollm2_path()))
    assert meta["general.architecture"] == "llama"
    assert FILE_TYPES[meta["general.file_type"]] == "Q4_1"
    assert meta["llama.block_count"] == 30
    assert meta["llama.embedding_length"] == 576
    assert meta["llama.attention.head_count"] == 9
    assert meta["llama.attention.head_count_kv"] == 3
    assert meta["llama.context_length"] == 8192
    template = meta["tokenizer.chat_template"]
    assert isinstance(template, str) and "<|im_start|>" in template
    # The vocabulary and merges are arrays: skipped, never returned.
    assert "tokenizer.ggml.tokens" not in meta
    assert "tokenizer.ggml.merges" not in meta
    assert all(not isinstance(v, list | tuple) for v in meta.values())
    # Without `parameters`, nothing is computed from the tensor table.
    assert "general.parameter_count" not in meta


def test_real_smollm2_parameter_count_is_summed_from_tensor_shapes() -> None:
    meta = read_metadata(str(smollm2_path()), parameters=True)
    # SmolLM2-135M: 134,515,008 weights (tied embeddings: no separate output matrix).
    assert meta["general.parameter_count"] == 134_515_008
    assert meta["general.architecture"] == "llama"  # the key-values are still all there


# -- values --------------------------------------------------------------------------------------


def test_write_gguf_helper_round_trips(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        {"general.architecture": "qwen2", "qwen2.block_count": 28, "general.name": "Qwen"},
    )
    assert read_metadata(str(path)) == {
        "general.architecture": "qwen2",
        "qwen2.block_count": 28,
        "general.name": "Qwen",
    }


def test_every_scalar_type_is_decoded(tmp_path: Path) -> None:
    path = gguf(
        tmp_path / "m.gguf",
        [
            kv("u8", U8, struct.pack("<B", 255)),
            kv("i8", I8, struct.pack("<b", -128)),
            kv("u16", U16, struct.pack("<H", 65535)),
            kv("i16", I16, struct.pack("<h", -32768)),
            kv("u32", U32, struct.pack("<I", 4_000_000_000)),
            kv("i32", I32, struct.pack("<i", -2_000_000_000)),
            kv("f32", F32, struct.pack("<f", 0.5)),
            kv("bool", BOOL, struct.pack("<?", True)),
            kv("u64", U64, struct.pack("<Q", 2**63 + 1)),
            kv("i64", I64, struct.pack("<q", -(2**62))),
            kv("f64", F64, struct.pack("<d", math.pi)),
            kv("str", STRING, gstr("héllo")),
        ],
    )
    meta = read_metadata(str(path))
    assert meta == {
        "u8": 255,
        "i8": -128,
        "u16": 65535,
        "i16": -32768,
        "u32": 4_000_000_000,
        "i32": -2_000_000_000,
        "f32": 0.5,
        "bool": True,
        "u64": 2**63 + 1,
        "i64": -(2**62),
        "f64": math.pi,
        "str": "héllo",
    }
    assert meta["bool"] is True


def test_arrays_are_skipped_and_the_keys_after_them_still_read(tmp_path: Path) -> None:
    path = gguf(
        tmp_path / "m.gguf",
        [
            kv("before", U32, struct.pack("<I", 1)),
            kv("tokens", ARRAY, array(STRING, [gstr("<s>"), gstr("hello"), gstr("")])),
            kv("scores", ARRAY, array(F32, [struct.pack("<f", x) for x in (0.1, 0.2, 0.3)])),
            kv("types", ARRAY, array(I64, [struct.pack("<q", 7)])),
            kv("empty", ARRAY, array(U8, [])),
            # An array of arrays of strings: every level is skipped by its own length.
            kv(
                "nested",
                ARRAY,
                array(ARRAY, [array(STRING, [gstr("a"), gstr("bc")]), array(STRING, [])]),
            ),
            kv("after", STRING, gstr("still here")),
        ],
    )
    assert read_metadata(str(path)) == {"before": 1, "after": "still here"}


def test_invalid_utf8_in_a_string_is_replaced_not_fatal(tmp_path: Path) -> None:
    path = gguf(tmp_path / "m.gguf", [kv("general.name", STRING, gstr(b"ab\xffcd"))])
    assert read_metadata(str(path)) == {"general.name": "ab\ufffdcd"}


def test_version_2_is_accepted(tmp_path: Path) -> None:
    path = gguf(tmp_path / "m.gguf", [kv("k", U32, struct.pack("<I", 9))], version=2)
    assert read_metadata(str(path)) == {"k": 9}


# -- the parameter count -------------------------------------------------------------------------


def test_parameter_count_is_the_sum_of_tensor_sizes(tmp_path: Path) -> None:
    path = gguf(
        tmp_path / "m.gguf",
        [kv("general.architecture", STRING, gstr("llama"))],
        (tensor("token_embd.weight", 64, 100), tensor("norm.weight", 64), tensor("x", 2, 3, 4)),
    )
    meta = read_metadata(str(path), parameters=True)
    assert meta["general.parameter_count"] == 64 * 100 + 64 + 2 * 3 * 4
    assert read_metadata(str(path)) == {"general.architecture": "llama"}


def test_parameter_count_of_a_file_without_tensors_is_zero(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", {"general.architecture": "llama"})
    assert read_metadata(str(path), parameters=True)["general.parameter_count"] == 0


def test_a_parameter_count_the_file_states_wins(tmp_path: Path) -> None:
    # The tensor table is not even read: garbage after the key-values does not matter.
    header = b"GGUF" + struct.pack("<IQQ", 3, 5, 1)
    body = kv("general.parameter_count", U64, struct.pack("<Q", 7_000_000_000))
    (tmp_path / "m.gguf").write_bytes(header + body + b"\x01garbage")
    meta = read_metadata(str(tmp_path / "m.gguf"), parameters=True)
    assert meta == {"general.parameter_count": 7_000_000_000}


# -- files it cannot read ------------------------------------------------------------------------


def test_gguf_error_is_a_value_error() -> None:
    assert issubclass(GGUFError, ValueError)


@pytest.mark.parametrize("content", [b"", b"GG", b"GGML" + bytes(20), b"\x00GGUF" + bytes(20)])
def test_not_a_gguf_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match="is not a GGUF file"):
        read_metadata(str(path))


@pytest.mark.parametrize("version", [0, 1])
def test_version_1_is_too_old(tmp_path: Path, version: int) -> None:
    path = gguf(tmp_path / "m.gguf", [], version=version)
    with pytest.raises(GGUFError, match=f"GGUF version {version} is too old"):
        read_metadata(str(path))


@pytest.mark.parametrize("kind", [13, 99, 2**32 - 1])
def test_an_unknown_value_type_is_refused(tmp_path: Path, kind: int) -> None:
    path = gguf(tmp_path / "m.gguf", [kv("k", kind, bytes(8))])
    with pytest.raises(GGUFError, match=f"unknown GGUF value type {kind}"):
        read_metadata(str(path))


def test_an_unknown_value_type_inside_an_array_is_refused(tmp_path: Path) -> None:
    path = gguf(tmp_path / "m.gguf", [kv("k", ARRAY, struct.pack("<IQ", 42, 1) + bytes(8))])
    with pytest.raises(GGUFError, match="unknown GGUF value type 42"):
        read_metadata(str(path))


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_metadata(str(tmp_path / "absent.gguf"))


def _sample(tmp_path: Path) -> bytes:
    path = gguf(
        tmp_path / "full.gguf",
        [
            kv("general.architecture", STRING, gstr("llama")),
            kv("llama.block_count", U32, struct.pack("<I", 30)),
            kv("tokens", ARRAY, array(STRING, [gstr("a"), gstr("b")])),
            kv("general.name", STRING, gstr("SmolLM2")),
        ],
    )
    return path.read_bytes()


# Cut in: the version, a key, a u32 value, an array's items.
@pytest.mark.parametrize("cut", [4, 40, 100, 140])
def test_a_truncated_header_raises_gguf_error(tmp_path: Path, cut: int) -> None:
    data = _sample(tmp_path)
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:cut])
    with pytest.raises(GGUFError):
        read_metadata(str(path))


def test_a_string_cut_short_is_an_error_not_a_shorter_value(tmp_path: Path) -> None:
    data = _sample(tmp_path)
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:-3])  # inside the last value, the string "SmolLM2"
    with pytest.raises(GGUFError, match="ends early"):
        read_metadata(str(path))


def test_a_corrupt_string_length_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62))
    with pytest.raises(GGUFError, match="corrupt"):
        read_metadata(str(path))
