"""The trainer contract: a dataset and a config in, events out, an adapter folder at the end.

Dataset: JSONL, one example a line: {"id", "koan_id", "family", "provenance", "messages": [system, user,
assistant]}; the loss is taken on the assistant reply only.

Run folder layout (`out_dir`):
    checkpoints/step-000020/   adapter + optimizer + scheduler + RNG + step + config (resume picks the latest)
    adapter/                   the final adapter (peft format for torch, mlx-lm format for mlx)
    loss.jsonl                 one {"step", "loss", "lr", "tokens_per_s"} a line
    train_config.json
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from ..events import EventSink


@dataclass(frozen=True)
class TrainConfig:
    base_model: str = ""                 # empty: the embedded SmolLM2-135M-Instruct GGUF
    steps: int = 60
    learning_rate: float = 2e-4
    lr_schedule: str = "cosine"          # cosine | linear | constant
    warmup_steps: int = 5
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lora_layers: int = 0                 # 0: every decoder layer; N: the last N only (the backward stops below)
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 1024
    seed: int = 0
    checkpoint_every: int = 20
    device: str = ""                     # empty: cuda, then mps, then cpu
    precision: str = "auto"              # auto | float32 | bfloat16 (auto: bf16 where the hardware has it)
    copy_weight: float = 1.0             # loss weight of reply tokens copied from the prompt (see copied_mask)

    def adapted_layers(self, n_layers: int) -> range:
        """The decoder layers the LoRA goes on: the last `lora_layers` of `n_layers`, or all of them."""
        return range(n_layers - self.lora_layers if 0 < self.lora_layers < n_layers else 0, n_layers)

    @classmethod
    def from_settings(cls, s, **overrides) -> "TrainConfig":
        base = dict(steps=s.steps, learning_rate=s.learning_rate, lora_rank=s.lora_rank, lora_alpha=s.lora_alpha,
                    lora_dropout=s.lora_dropout, target_modules=tuple(s.target_modules), lora_layers=s.lora_layers,
                    batch_size=s.batch_size,
                    grad_accum=s.grad_accum, max_seq_len=s.max_seq_len, seed=s.seed, precision=s.precision,
                    checkpoint_every=s.checkpoint_every, copy_weight=s.copy_weight)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    stopped: bool = False

    @property
    def initial_loss(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


class Trainer(Protocol):
    name: str

    def train(self, dataset: Path, config: TrainConfig, out_dir: Path, *, on_event: EventSink,
              stop: threading.Event | None = None, resume: bool = True) -> TrainResult:
        """Train; emit TrainStarted / TrainStep / CheckpointSaved / TrainDone (or TrainError, then raise).

        `stop` is checked every step: a stop saves a checkpoint and returns (TrainResult.stopped). With `resume`,
        the latest checkpoint in out_dir is restored (weights, optimizer, scheduler, RNG, step) so that a stopped
        or crashed run ends with the same result as an unbroken one.
        """
        ...


class TrainingUnavailable(RuntimeError):
    """This trainer can't run here (missing package / device); the message says what to install."""


def read_dataset(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from None
            msgs = row.get("messages")
            if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
                raise ValueError(f"{path}:{n}: expected messages ending with an assistant reply")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def _token_ids(encoded) -> list[int]:
    """apply_chat_template's tokens, whether it returned a list or a BatchEncoding (transformers >= 5)."""
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(t) for t in encoded]


def encode_example(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """(tokens of the whole chat, offset of the assistant reply): the loss covers tokens[offset:]."""
    tokens = _token_ids(tokenizer.apply_chat_template(messages, tokenize=True))
    prompt = _token_ids(tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True))
    offset = 0
    for a, b in zip(tokens, prompt):   # the prompt should be a prefix; if a template breaks that, mask the shared part
        if a != b:
            break
        offset += 1
    return tokens, offset


COPY_RUN = 4     # reply tokens in a run at least this long that the prompt also holds count as copied


def copied_mask(tokens: list[int], offset: int, min_run: int = COPY_RUN) -> list[bool]:
    """Per reply token (tokens[offset:]): whether it copies the prompt (tokens[:offset]).

    A repair repeats most of the broken program it was shown; only the tokens that differ carry the lesson.
    The reply is aligned with the prompt (difflib's longest matching blocks, in order); a token inside a
    matching run of at least `min_run` tokens is a copy, every other one (the changed code, the reply's own
    words and end token) is not. From the tokens alone, so every trainer and every tokenizer agree."""
    from difflib import SequenceMatcher
    prompt, reply = tokens[:offset], tokens[offset:]
    mask = [False] * len(reply)
    for block in SequenceMatcher(None, prompt, reply, autojunk=False).get_matching_blocks():
        if block.size >= min_run:
            mask[block.b:block.b + block.size] = [True] * block.size
    return mask


def encode_rows(rows: list[dict], encode, max_seq_len: int, dataset: Path, emit) -> list[tuple[list[int], int]]:
    """(tokens, reply offset) per example, cut to max_seq_len; examples with no reply token left are skipped
    (with a warning event). `encode(messages) -> (tokens, offset)` is the trainer's own tokenization."""
    from ..events import Notice
    examples = []
    for row in rows:
        toks, offset = encode(row["messages"])
        toks = toks[:max_seq_len]
        if offset < len(toks):        # something of the reply is left after truncation
            examples.append((toks, offset))
    if not examples:
        raise ValueError(f"{dataset}: no example has reply tokens within max_seq_len={max_seq_len}")
    if len(examples) < len(rows):
        emit(Notice("warning", f"{len(rows) - len(examples)} of {len(rows)} examples skipped: their prompt fills "
                               f"max_seq_len={max_seq_len}"))
    return examples
