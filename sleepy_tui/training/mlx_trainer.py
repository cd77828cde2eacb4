"""Sleep with mlx-lm: LoRA on a local HF-format model, driven from Python so that events stream step by step.

Built on mlx-lm's tuner pieces (`mlx_lm.load`, `linear_to_lora_layers`, its adapter files, the compiled
train step of `tuner/trainer.py`) with our own loop around them, because mlx-lm's `train()` resumes weights
only: here a checkpoint also holds the optimizer state (Adam moments and step, which drives the learning-rate
schedule), the RNG key (LoRA dropout) and the data order, so a stopped or crashed run resumes to the same
weights as an unbroken one.

    checkpoints/step-000020/   adapters.safetensors + adapter_config.json (mlx-lm format, loadable as is),
                               optimizer.safetensors (tree_flatten(optimizer.state)), trainer_state.json
                               (step, RNG key, data order, config, dataset hash, the loss log so far)
    adapter/                   the final adapter: mlx_lm.load(model_dir, adapter_path=out_dir / "adapter")
    loss.jsonl, train_config.json, train_stats.json (see loop.py)

The loss is taken on the assistant reply only: the prompt (system + user turns and the assistant header) is
masked. One step is one optimizer update over `grad_accum` batches of `batch_size` examples.

mlx is imported inside the functions, so this module imports anywhere; `train` raises TrainingUnavailable
where mlx can't run.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

from .. import events as ev
from ..atomic import write_json
from ..backends.mlx_backend import mlx_config_fixes
from . import checkpoint as ckpt
from .base import (TrainConfig, TrainingUnavailable, TrainResult, copied_mask, encode_example, encode_rows,
                   read_dataset)
from .loop import reported, train_loop

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"        # written last: a checkpoint folder without it is incomplete
MAX_GRAD_NORM = 1.0                      # transformers' Trainer default
PAD_MULTIPLE = 32                        # pad batches to few distinct shapes: the compiled step retraces per shape

INSTALL_HINT = "pip install mlx-lm (and on Linux mlx[cpu], or mlx[cuda] for an NVIDIA GPU)"


def mlx_problem() -> str | None:
    """Why mlx-lm can't train here (None: it can)."""
    try:
        import mlx.core as mx
        import mlx_lm  # noqa: F401
        mx.eval(mx.ones((2, 2)) @ mx.ones((2, 2)))
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken native library
        return f"mlx-lm is not usable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); " \
               f"{INSTALL_HINT}"
    return None


# ---- the model ---------------------------------------------------------------------------------------------------


def load_model(model_dir: str | os.PathLike, adapter_path: str | os.PathLike | None = None,
               *, float32_on_cpu: bool = True):
    """`mlx_lm.load` of a local HF-format folder, with the config fixes above; (model, tokenizer).

    On the CPU, half-precision weights are cast to float32 (mlx's CPU kernels are faster in float32 and
    the LoRA update is then not rounded away)."""
    import mlx.core as mx
    import mlx_lm
    model_dir = Path(model_dir)
    model, tokenizer = mlx_lm.load(str(model_dir), model_config=mlx_config_fixes(model_dir) or None,
                                   adapter_path=str(adapter_path) if adapter_path else None)
    if float32_on_cpu and mx.default_device() == mx.cpu:
        model.set_dtype(mx.float32)
    return model, tokenizer


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and any(p.glob("model*.safetensors"))


def resolve_base_model(base_model: str, cache_dir: Path | None = None) -> Path:
    """The local HF-format folder to train on; empty: a safetensors copy of the embedded SmolLM2 GGUF; a table
    model or a GGUF path: a safetensors copy of its GGUF (the weights llama.cpp serves)."""
    from ..backends.embedded import hf_copy, is_gguf_model
    if is_gguf_model(base_model):
        try:
            return hf_copy(base_model, cache_dir)
        except Exception as e:  # noqa: BLE001 - BackendUnavailable, a transformers/gguf failure
            raise TrainingUnavailable(f"can't convert {base_model} into an HF folder for mlx ({e})") from None
    if base_model:
        p = Path(base_model).expanduser()
        if not _is_model_dir(p):
            raise TrainingUnavailable(
                f"the mlx trainer needs a local model folder in Hugging Face format (config.json + *.safetensors); "
                f"{base_model!r} is not one (no downloads: convert or download it first)")
        return p
    try:
        from ..backends.embedded import embedded_hf_dir
    except ImportError as e:
        raise TrainingUnavailable(f"can't convert the embedded model for mlx ({e}); set base_model to a local "
                                  "HF-format model folder") from None
    try:
        return embedded_hf_dir(cache_dir)
    except Exception as e:  # noqa: BLE001 - BackendUnavailable, a transformers/gguf failure
        raise TrainingUnavailable(f"can't convert the embedded SmolLM2 GGUF into an HF folder for mlx ({e}); "
                                  "set base_model to a local HF-format model folder") from None


def lora_keys(model, target_modules: tuple[str, ...]) -> list[str]:
    """Paths inside a transformer block (`self_attn.q_proj`) of the linear layers named in target_modules."""
    import mlx.nn as nn
    found = sorted({name for layer in model.layers for name, m in layer.named_modules()
                    if name.rsplit(".", 1)[-1] in target_modules and isinstance(m, (nn.Linear, nn.QuantizedLinear))})
    missing = [t for t in target_modules if not any(k.rsplit(".", 1)[-1] == t for k in found)]
    if missing:
        linears = sorted({n.rsplit(".", 1)[-1] for layer in model.layers for n, m in layer.named_modules()
                          if isinstance(m, (nn.Linear, nn.QuantizedLinear))})
        raise ValueError(f"target_modules {missing} not found in the model; its linear layers: {', '.join(linears)}")
    return found


def adapter_config(config: TrainConfig, model, base_dir: Path) -> dict:
    """adapter_config.json as mlx-lm's `load_adapters` reads it (peft's alpha becomes mlx-lm's scale).

    Call it on the model before the LoRA layers go in (the keys name the plain linears)."""
    return {
        "fine_tune_type": "lora",
        "num_layers": len(config.adapted_layers(len(model.layers))),
        "lora_parameters": {"rank": config.lora_rank, "scale": config.lora_alpha / config.lora_rank,
                            "dropout": config.lora_dropout, "keys": lora_keys(model, config.target_modules)},
        "model": str(base_dir),
        "trainer": "sleepy-tui mlx",
    }


# ---- data --------------------------------------------------------------------------------------------------------

class DataOrder:
    """Which examples each batch takes: a fresh permutation per epoch, from (seed, epoch) alone.

    Batches run across epoch ends (no example is dropped); the state is (epoch, position)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        import numpy as np
        return np.random.default_rng([self.seed, epoch]).permutation(self.n).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            out.append(self._perm[self.position])
            self.position += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)


def make_batch(examples: list[tuple[list[int], int]], idx: list[int], copied: list[list[bool]] | None = None,
               copy_weight: float = 1.0):
    """(tokens [B, T], positions [B, K], mask [B, K], weights [B, K], changed [B, K]) for `reply_loss`.

    tokens are zero-padded to T = 1 + a multiple of PAD_MULTIPLE; positions are the input positions whose
    next token is a reply token (K a multiple of PAD_MULTIPLE too: few distinct shapes, few retraces of the
    compiled step); mask marks the real ones; weights is each one's loss weight (`copy_weight` where `copied`
    marks the reply token a copy of the prompt, else 1; 0 on padding) and changed the real ones not copied."""
    import mlx.core as mx
    import numpy as np
    rows = [examples[i] for i in idx]
    starts = [max(offset, 1) - 1 for _, offset in rows]          # predicts tokens[offset]
    counts = [len(toks) - 1 - st for (toks, _), st in zip(rows, starts)]
    width = 1 + PAD_MULTIPLE * math.ceil((max(len(t) for t, _ in rows) - 1) / PAD_MULTIPLE)
    k = PAD_MULTIPLE * math.ceil(max(counts) / PAD_MULTIPLE)
    tokens = np.zeros((len(rows), width), np.int32)
    positions = np.zeros((len(rows), k), np.int32)
    mask = np.zeros((len(rows), k), np.bool_)
    changed = np.zeros((len(rows), k), np.bool_)
    for r, (i, (toks, offset), st, n) in enumerate(zip(idx, rows, starts, counts)):
        tokens[r, :len(toks)] = toks
        positions[r] = np.minimum(st + np.arange(k), width - 2)
        mask[r, :n] = True
        copy = np.array(copied[i], np.bool_) if copied is not None else np.zeros(len(toks) - offset, np.bool_)
        changed[r, :n] = ~copy[len(copy) - n:]                   # offset 0: the first token is never predicted
    weights = np.where(changed, 1.0, np.where(mask, copy_weight, 0.0)).astype(np.float32)
    return mx.array(tokens), mx.array(positions), mx.array(mask), mx.array(weights), mx.array(changed)


# Architectures whose __call__ is exactly `lm_head(self.model(inputs))` (tied: embed_tokens.as_linear): for
# them the output layer runs on the reply positions only, a large share of the work for a small model.
_PLAIN_HEAD = ("llama", "qwen2", "qwen3", "phi3")


def reply_logits(model, inputs, positions):
    """Logits [B, K, V] at `positions` of `inputs`."""
    import mlx.core as mx
    args = getattr(model, "args", None)
    if getattr(model, "model_type", None) in _PLAIN_HEAD and args is not None and hasattr(model, "model"):
        hidden = model.model(inputs)
        hidden = mx.take_along_axis(hidden, positions[..., None], axis=1)
        if getattr(args, "tie_word_embeddings", False):
            return model.model.embed_tokens.as_linear(hidden)
        return model.lm_head(hidden)
    return mx.take_along_axis(model(inputs), positions[..., None], axis=1)


def reply_loss(model, tokens, positions, mask, weights, changed):
    """The weighted mean cross-entropy over the reply tokens (the prompt is masked; see make_batch), with
    (the plain mean, the changed tokens' summed loss, their count) as the outputs it is not differentiated in."""
    import mlx.core as mx
    import mlx.nn as nn
    logits = reply_logits(model, tokens[:, :-1], positions)
    targets = mx.take_along_axis(tokens, positions + 1, axis=1)
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), targets)
    loss = (ce * weights).sum() / mx.maximum(weights.sum(), 1e-9)
    plain = (ce * mask).sum() / mx.maximum(mask.sum(), 1)
    return loss, (mx.stop_gradient(plain), mx.stop_gradient((ce * changed).sum()), changed.sum())


# ---- learning rate -----------------------------------------------------------------------------------------------

def lr_schedule(config: TrainConfig):
    """lr(s) for update s = 0, 1, ...: linear warmup (never 0), then cosine / linear decay or constant.

    A function of the optimizer's step counter, which the checkpoint restores: that is the scheduler state."""
    import mlx.core as mx
    base, warm, total = config.learning_rate, max(0, config.warmup_steps), config.steps
    kind = config.lr_schedule
    if kind not in ("cosine", "linear", "constant"):
        raise ValueError(f"lr_schedule: unknown {kind!r} (cosine | linear | constant)")

    def lr(step):
        s = mx.array(step).astype(mx.float32)
        warmup = base * (s + 1) / (warm + 1)
        p = mx.clip((s - warm) / max(1, total - warm), 0.0, 1.0)
        if kind == "cosine":
            after = base * 0.5 * (1 + mx.cos(math.pi * p))
        elif kind == "linear":
            after = base * (1 - p)
        else:
            after = mx.array(base, mx.float32)
        return mx.where(s < warm, warmup, after)

    return lr


# ---- checkpoints ---------------------------------------------------------------------------------------------------

def _save_adapter(folder: Path, model, adapter_cfg: dict) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    mx.save_safetensors(str(folder / ADAPTER_WEIGHTS), dict(tree_flatten(model.trainable_parameters())))
    write_json(folder / ADAPTER_CONFIG, adapter_cfg)


def checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in out_dir, oldest first."""
    return ckpt.complete(Path(out_dir), (STATE_FILE,))


def _rng_key() -> list[int]:
    import mlx.core as mx
    return [int(x) for x in mx.random.state[0].tolist()]


def _set_rng_key(key: list[int]) -> None:
    """mx.random.seed(s) sets the key to (s >> 32, s & 0xffffffff): any key can be put back that way."""
    import mlx.core as mx
    mx.random.seed((int(key[0]) << 32) | int(key[1]))


# ---- the trainer -----------------------------------------------------------------------------------------------------

class _Run:
    """One training run in memory: the model with its LoRA layers, the optimizer, the data order, the loss log.

    Everything a checkpoint holds is here, so `write_checkpoint` and `restore` are each other's inverse."""

    required = (STATE_FILE,)

    def __init__(self, config: TrainConfig, model, examples: list, base_dir: Path, data_hash: str, compile: bool):
        import mlx.core as mx
        import mlx.optimizers as optim
        from mlx_lm.tuner.utils import linear_to_lora_layers
        self.config, self.model, self.examples = config, model, examples
        self.base_dir, self.data_hash = base_dir, data_hash
        mx.random.seed(config.seed)                  # fixes the LoRA initialisation (and the dropout after it)
        model.freeze()
        self.adapter_cfg = adapter_config(config, model, base_dir)
        linear_to_lora_layers(model, self.adapter_cfg["num_layers"], self.adapter_cfg["lora_parameters"])
        self.optimizer = optim.Adam(learning_rate=lr_schedule(config), bias_correction=True)
        self.optimizer.init(model.trainable_parameters())
        self.order = DataOrder(len(examples), config.seed)
        self.copied = [copied_mask(t, o) for t, o in examples]
        self.per_batch = min(config.batch_size, len(examples))
        self.log: list[dict] = []
        self.step = 0
        self._compile = compile
        self._step_fn = None

    # -- checkpoints --

    def snapshot(self) -> None:
        return None                                  # one process: the state is read when it is written

    def write_adapter(self, folder: Path) -> None:
        _save_adapter(folder, self.model, {**self.adapter_cfg, "steps": self.step})

    def write_checkpoint(self, folder: Path, snapshot=None) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten
        self.write_adapter(folder)
        mx.save_safetensors(str(folder / OPTIMIZER_FILE), dict(tree_flatten(self.optimizer.state)))
        write_json(folder / STATE_FILE, {
            "step": self.step, "rng_key": _rng_key(), "data_order": self.order.state(),
            "config": self.config.to_dict(), "dataset_sha256": self.data_hash, "base_model_dir": str(self.base_dir),
            "log": self.log})

    def restore(self, folder: Path, state: dict) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_map_with_path
        self.model.load_weights(list(mx.load(str(folder / ADAPTER_WEIGHTS)).items()), strict=False)
        saved = mx.load(str(folder / OPTIMIZER_FILE))
        if {k for k, _ in tree_flatten(self.optimizer.state)} != set(saved):
            raise ValueError(f"{folder}: its optimizer state does not match the model's LoRA parameters")
        self.optimizer.state = tree_map_with_path(lambda path, _: saved[path], self.optimizer.state)
        self.order.restore(state["data_order"])
        _set_rng_key(state["rng_key"])
        self.step = int(state["step"])
        self.log = [r for r in state["log"] if r["step"] <= self.step]

    # -- training --

    def _build_step(self):
        """mlx-lm's compiled train step: model, optimizer and RNG state are its inputs and outputs."""
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        from mlx.utils import tree_map
        model, optimizer, accum = self.model, self.optimizer, self.config.grad_accum
        loss_and_grad = nn.value_and_grad(model, reply_loss)
        self.state = [model.state, optimizer.state, mx.random.state]

        def step_fn(batch, prev_grad, do_update: bool):
            (_, (loss, changed_sum, changed_n)), grad = loss_and_grad(model, *batch)
            if prev_grad is not None:
                grad = tree_map(lambda a, b: a + b, grad, prev_grad)
            if do_update:
                if accum > 1:
                    grad = tree_map(lambda g: g / accum, grad)
                grad, _ = optim.clip_grad_norm(grad, MAX_GRAD_NORM)
                optimizer.update(model, grad)
                grad = None
            return loss, (changed_sum, changed_n), grad

        return mx.compile(step_fn, inputs=self.state, outputs=self.state) if self._compile else step_fn

    def train_step(self, stop: threading.Event | None = None) -> dict:
        """One optimizer update over grad_accum batches; its log record (a stop waits for the step's end)."""
        import mlx.core as mx
        if self._step_fn is None:
            self._step_fn = self._build_step()
            self.model.train()
        t0 = time.perf_counter()
        grad, losses, tokens, processed, changed = None, [], 0, 0, []
        for micro in range(self.config.grad_accum):
            idx = self.order.take(self.per_batch)
            tokens += sum(len(self.examples[i][0]) for i in idx)
            batch = make_batch(self.examples, idx, self.copied, self.config.copy_weight)
            processed += int(batch[0].size)
            loss, ch, grad = self._step_fn(batch, grad, micro == self.config.grad_accum - 1)
            losses.append(loss)
            changed.append(ch)
            mx.eval(self.state, losses, changed, grad)
        dt = time.perf_counter() - t0
        self.step += 1
        changed_n = sum(int(n.item()) for _, n in changed)
        rec = {"step": self.step, "loss": sum(x.item() for x in losses) / len(losses),
               "lr": float(self.optimizer.learning_rate.item()),        # the rate this update used
               "tokens_per_s": tokens / dt if dt > 0 else 0.0, "seconds": dt,
               "useful_tokens": tokens, "processed_tokens": processed,
               "changed_loss": sum(float(x.item()) for x, _ in changed) / changed_n if changed_n else None,
               "changed_tokens": changed_n}
        self.log.append(rec)
        return rec


class MlxTrainer:
    """The Trainer protocol with mlx-lm LoRA (see the module docstring for the run folder)."""

    name = "mlx"

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, compile: bool = True):
        self.cache_dir = Path(cache_dir) if cache_dir else None   # where the embedded model's HF copy goes
        self.compile = compile

    def train(self, dataset: Path, config: TrainConfig, out_dir: Path, *, on_event: ev.EventSink,
              stop: threading.Event | None = None, resume: bool = True) -> TrainResult:
        return reported(on_event, mlx_problem,
                        lambda: self._train(Path(dataset), config, Path(out_dir), on_event, stop, resume))

    def _train(self, dataset: Path, config: TrainConfig, out_dir: Path, on_event: ev.EventSink,
               stop: threading.Event | None, resume: bool) -> TrainResult:
        import mlx.core as mx

        if min(config.steps, config.batch_size, config.grad_accum, config.lora_rank) <= 0:
            raise ValueError("steps, batch_size, grad_accum and lora_rank must be > 0")
        device = self._device(config.device)
        rows = read_dataset(dataset)
        data_hash = ckpt.sha256(dataset)
        found = checkpoints(out_dir) if resume else []
        latest = found[-1][1] if found else None
        saved = json.loads((latest / STATE_FILE).read_text()) if latest else None
        if saved is not None:
            diffs = ckpt.resume_problems(saved, config.to_dict(), data_hash)
            if diffs:
                raise ckpt.refuse_resume(latest, diffs)
        ckpt.prepare(out_dir, resume)

        t_load = time.perf_counter()
        base_dir = resolve_base_model(config.base_model, self.cache_dir)
        with mx.stream(device):
            model, tokenizer = load_model(base_dir)
            examples = self._encode(rows, tokenizer, config, dataset, on_event)
            run = _Run(config, model, examples, base_dir, data_hash, self.compile)
            if saved is not None:
                run.restore(latest, saved)
            mx.eval(model.parameters(), run.optimizer.state)
            write_json(out_dir / "train_config.json", {
                "trainer": self.name, **config.to_dict(), "base_model_dir": str(base_dir), "dataset": str(dataset),
                "dataset_sha256": data_hash, "examples": len(examples), "skipped_examples": len(rows) - len(examples),
                "optimizer": "adam (bias-corrected)", "max_grad_norm": MAX_GRAD_NORM,
                "lora_scale": config.lora_alpha / config.lora_rank, "device": str(device), "versions": _versions()})
            return train_loop(run, config, out_dir, emit=on_event, stop=stop, resumed_from=latest,
                              examples=len(examples), load_s=time.perf_counter() - t_load,
                              load_detail="loaded the base model", extra_stats=lambda: {"device": str(device)})

    @staticmethod
    def _encode(rows: list[dict], tokenizer, config: TrainConfig, dataset: Path, on_event) -> list:
        return encode_rows(rows, lambda messages: encode_example(tokenizer, messages), config.max_seq_len,
                           dataset, on_event)

    @staticmethod
    def _device(name: str):
        import mlx.core as mx
        if not name:
            return mx.default_device()
        if name == "cpu":
            return mx.cpu
        if name in ("cuda", "mps", "gpu", "metal"):
            if not mx.is_available(mx.gpu):
                raise TrainingUnavailable(f"device {name!r}: this mlx build has no GPU backend ({INSTALL_HINT})")
            return mx.gpu
        raise ValueError(f"device: unknown {name!r} (cpu | gpu | cuda | mps, or empty for mlx's default)")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("mlx", "mlx-lm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
