"""One settings object, layered: defaults < config file < SLEEPY_* environment < command-line flags.

Validated once; every problem is reported together. The object is frozen: change settings by building a new
one (`settings.replace(...)`), which is validated again.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import locations
from .safe_text import read_regular_file



@dataclass(frozen=True)
class BackendKind:
    """What the rest of sleepy knows of a backend without importing it (the one table that names them)."""
    name: str
    module: str                # backends/<module>.py ("": auto, which picks one of the others)
    adapter: str               # the adapter form it loads, an AdapterRecord field: gguf | peft_dir | mlx_dir;
                               # "any": the first the record has (the backend refuses what it can't load)
    cycles: bool               # a cycle can run on it: it loads the adapter the sleep has just trained
    hf_model: bool = False     # its --model is a Hugging Face folder, which the trainers adapt as it is
    listed: bool = True        # offered in the app's picker (fake is the tests' double)


BACKEND_KINDS = (
    BackendKind("auto", "", "gguf", cycles=True),      # a cycle serves the embedded model, for that cycle only
    BackendKind("ollama", "ollama_backend", "gguf", cycles=False),
    BackendKind("embedded", "embedded", "gguf", cycles=True),
    BackendKind("transformers", "transformers_backend", "peft_dir", cycles=True, hf_model=True),
    BackendKind("mlx", "mlx_backend", "mlx_dir", cycles=True, hf_model=True),
    BackendKind("openai", "openai_backend", "any", cycles=False),
    BackendKind("fake", "fake", "any", cycles=True, listed=False),
)
BACKENDS = tuple(b.name for b in BACKEND_KINDS)
TRAIN_BACKENDS = ("torch", "mlx")


def backend_kind(name: str) -> BackendKind | None:
    return next((b for b in BACKEND_KINDS if b.name == name), None)


class ConfigError(ValueError):
    """Bad settings; the message lists every problem, one per line."""


def setting(default, help: str, *, group: str = "", flag: str = "", metavar: str = ""):
    """A field of Settings with its one description: the CLI flag (for a `group` of commands: "model" for every
    command that runs the model, "train" for the ones that train), its --help and the docs read it from here."""
    return field(default=default, metadata={"help": help, "group": group, "flag": flag, "metavar": metavar})


@dataclass(frozen=True)
class Settings:
    # --- model serving ---
    backend: str = setting("auto", "auto | ollama | embedded | transformers | mlx | openai | fake", group="model")
    model: str = setting("", "model name (a table model, an Ollama name) or a GGUF/model path; empty: the "
                             "backend's default", group="model")
    adapter: str = setting("", "LoRA adapter path for backends that take one; empty: the promoted one",
                           group="model")
    ollama_host: str = setting("http://127.0.0.1:11434", "where Ollama answers (default: OLLAMA_HOST, else "
                               "http://127.0.0.1:11434)", group="model", metavar="URL")
    openai_base_url: str = setting("http://127.0.0.1:8000/v1", "the OpenAI-compatible server's base URL")
    openai_api_key: str = setting("none", "the OpenAI-compatible server's API key")
    temperature: float = setting(0.2, "sampling temperature where the retry strategy does not set one",
                                 group="model")
    seed: int = setting(0, "the seed every attempt's sampling seed is derived from", group="model")
    max_tokens: int = setting(768, "tokens per reply", group="model")
    threads: int = setting(0, "llama.cpp threads of the embedded model (0: every CPU but one)")
    # --- the agent loop ---
    max_attempts: int = setting(5, "attempts per koan", group="model")
    retry_strategy: str = setting("explore", "how sampling changes between attempts (retry.py): explore | fixed",
                                  group="model", metavar="NAME")
    parallel: int = setting(1, "koans in flight at once (servers: Ollama, OpenAI-compatible; the embedded model "
                               "runs one)", group="model", metavar="N")
    compile_timeout_s: float = setting(60.0, "seconds rustc may take per check")
    run_timeout_s: float = setting(10.0, "seconds a test binary may take")
    memory_mb: int = setting(1024, "address space of a test binary, MiB")
    # --- sleep (LoRA training) ---
    train_backend: str = setting("torch", "torch | mlx", group="train")
    steps: int = setting(60, "training steps", group="train")
    learning_rate: float = setting(2e-4, "LoRA learning rate", group="train")
    lora_rank: int = setting(8, "LoRA rank", group="train", flag="--rank")
    lora_alpha: int = setting(16, "LoRA alpha", group="train", flag="--alpha")
    lora_dropout: float = setting(0.05, "LoRA dropout")
    target_modules: tuple[str, ...] = setting(("q_proj", "k_proj", "v_proj", "o_proj"), "modules LoRA adapts")
    lora_layers: int = setting(0, "LoRA on the last N decoder layers only, so the backward stops below them "
                                  "(0: every layer)", group="train", metavar="N")
    batch_size: int = setting(4, "examples per step", group="train")
    grad_accum: int = setting(1, "micro-batches accumulated per step")
    max_seq_len: int = setting(1024, "tokens per training example")
    precision: str = setting("auto", "training compute dtype: auto (bfloat16 where the CPU/GPU multiplies it "
                                     "natively, else float32) | float32 | bfloat16", group="train", metavar="DTYPE")
    copy_weight: float = setting(1.0, "loss weight (0..1) of the reply tokens that copy the broken program, "
                                      "against 1 for the tokens of the fix (1: all alike)",
                                 group="train", metavar="W")
    checkpoint_every: int = setting(20, "steps between resumable checkpoints (0: only at the end or on stop)",
                                    group="train", metavar="N")
    validation_attempts: int = setting(1, "attempts per koan on the validation slice (1: the first, greedy "
                                          "attempt)", group="train", metavar="N")
    validation_picks: int = setting(3, "adapters the validation slice chooses among: the trained one and those "
                                       "of its last checkpoints (1: the trained one)", group="train", metavar="N")
    day_samples: int = setting(0, "expert iteration: independent first attempts at each training koan the day did "
                                  "not solve at its first attempt; every verified one is trained on (0: none)",
                               group="train", metavar="K")
    reference_fixes: str = setting("failed", "which training koans' reference fixes a dataset takes: failed (those "
                                             "the day failed) | all (also those of every training koan the day "
                                             "did not take)", group="train", metavar="WHICH")
    eval_repeats: int = setting(1, "whole frozen-eval runs of the base and of the candidate in a cycle (each "
                                   "repeat its own seeds); the gate judges every koan on its pass rate over them",
                                group="train", metavar="K")
    replay_share: float = setting(0.3, "share of replayed, already-solved examples in a dataset", group="train")
    gate_tolerance: float = setting(0.0, "share (0..1) of frozen koans that may regress, and of pass rate that "
                                         "may drop, for the gate to promote; 0: none")
    # --- where ---
    koans_dir: str = setting("", "koan folder; empty: the project's koans/ (flag: --koans)")
    state_dir: str = setting("", "state folder; empty: the project's state/ (flag: --state)")

    def replace(self, **changes) -> "Settings":
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    @property
    def koans_path(self) -> Path:
        return Path(self.koans_dir) if self.koans_dir else locations.koans_dir()

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else locations.state_dir()

    def problems(self) -> list[str]:
        p: list[str] = []
        if self.backend not in BACKENDS:
            p.append(f"backend: unknown {self.backend!r} (choose from {', '.join(BACKENDS)})")
        if self.train_backend not in TRAIN_BACKENDS:
            p.append(f"train_backend: unknown {self.train_backend!r} (choose from {', '.join(TRAIN_BACKENDS)})")
        from .retry import STRATEGIES
        if self.retry_strategy not in STRATEGIES:
            p.append(f"retry_strategy: unknown {self.retry_strategy!r} (choose from {', '.join(STRATEGIES)})")
        positive = ("max_attempts", "validation_attempts", "validation_picks", "eval_repeats", "parallel", "steps",
                    "lora_rank", "lora_alpha", "batch_size", "grad_accum", "max_seq_len", "max_tokens",
                    "compile_timeout_s", "run_timeout_s", "memory_mb", "learning_rate")
        for name in positive:
            if getattr(self, name) <= 0:
                p.append(f"{name}: must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.temperature <= 2.0:
            p.append(f"temperature: must be within 0..2, got {self.temperature}")
        for name in ("checkpoint_every", "lora_layers", "day_samples"):
            if getattr(self, name) < 0:
                p.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("lora_dropout", "replay_share", "gate_tolerance"):
            if not 0.0 <= getattr(self, name) < 1.0:
                p.append(f"{name}: must be within 0..1, got {getattr(self, name)}")
        if self.reference_fixes not in ("failed", "all"):
            p.append(f"reference_fixes: unknown {self.reference_fixes!r} (failed | all)")
        if not 0.0 <= self.copy_weight <= 1.0:
            p.append(f"copy_weight: must be within 0..1, got {self.copy_weight}")
        if not self.target_modules:
            p.append("target_modules: name at least one module")
        if self.precision not in ("auto", "float32", "bfloat16"):
            p.append(f"precision: unknown {self.precision!r} (auto | float32 | bfloat16)")
        return p

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("\n".join(problems))


def _coerce(name: str, typ, value):
    """Convert a file/env/CLI value to the field's type, or raise ValueError naming the field."""
    if value is None:
        return None
    try:
        if typ in ("int", int):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if typ in ("float", float):
            return float(value)
        if typ in ("tuple[str, ...]",):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {typ}, got {value!r}") from None


def config_file(state_dir: str | os.PathLike | None = None) -> Path:
    """SLEEPY_CONFIG, else config.toml in the state folder (`state_dir`, e.g. from --state, or the default)."""
    env = os.environ.get("SLEEPY_CONFIG")
    return Path(env) if env else Path(state_dir or locations.state_dir()) / "config.toml"


def load_settings(cli: dict | None = None, *, env: dict | None = None, file: Path | None = None) -> Settings:
    """Build Settings from defaults < file < env (SLEEPY_<FIELD>) < cli; raise ConfigError listing all problems."""
    env = os.environ if env is None else env
    file = config_file((cli or {}).get("state_dir")) if file is None else file
    values: dict = {}
    problems: list[str] = []
    types = {f.name: f.type for f in fields(Settings)}
    layers: list[tuple[str, dict]] = []
    if file.exists():
        try:
            # a regular file of sane size only: a FIFO or a device named config.toml is refused, never waited on
            layers.append((str(file), tomllib.loads(read_regular_file(file, 1 << 20).decode("utf-8"))))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
            problems.append(f"{file}: invalid TOML: {e}")
        except OSError as e:
            problems.append(f"{file}: cannot read: {e.strerror or e}")
    layers.append(("environment", {k[7:].lower(): v for k, v in env.items() if k.startswith("SLEEPY_")
                                   and k[7:].lower() in types}))
    layers.append(("command line", {k: v for k, v in (cli or {}).items() if v is not None}))
    for where, layer in layers:
        for k, v in layer.items():
            if k not in types:
                if where != "environment":
                    problems.append(f"{where}: unknown setting {k!r}")
                continue
            try:
                values[k] = _coerce(k, types[k], v)
            except ValueError as e:
                problems.append(f"{where}: {e}")
    settings = Settings(**values)
    problems += settings.problems()
    if problems:
        raise ConfigError("\n".join(problems))
    return settings
