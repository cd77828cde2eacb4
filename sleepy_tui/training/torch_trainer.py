"""Sleep with torch: a peft LoRA on the base model, one optimizer step at a time (the loop is training/loop.py).

Not transformers' Trainer: owning the step lets a stop request be honoured between micro-batches, and a
checkpoint hold everything the next step depends on, so that a stopped or crashed run resumes to the same
weights as an unbroken one.

    checkpoints/step-000020/   adapter_config.json + adapter_model.safetensors (peft, loadable as is) and
                               trainer_state.pt, one dict: step, optimizer, scheduler, RNG states (torch, cuda,
                               python, numpy), data order, config, dataset hash, the loss log so far.
    adapter/                   the final adapter: PeftModel.from_pretrained(base, out_dir / "adapter")
    loss.jsonl, train_config.json, train_stats.json (see loop.py)

Precision: `precision = "auto"` computes in bfloat16 where the hardware multiplies it natively (a CPU with
AVX-512 BF16 or AMX, a CUDA GPU with bf16; see devices.fast_bf16), else in float32. In bfloat16 the frozen
base weights are bf16, the LoRA weights, their gradients and the optimizer state stay float32 (peft upcasts
adapter weights), and the loss is taken in float32.

The loss is the mean cross-entropy over the assistant reply tokens of a step (prompt and padding labels are
-100), and the output layer runs on those positions only. With `copy_weight` below 1 it is a weighted mean:
a reply token that copies the prompt (base.copied_mask: most of a repair repeats the broken program) weighs
`copy_weight`, a changed one 1. The logged `loss` stays the plain mean; `changed_loss` is the changed tokens'.

One step is one optimizer update over `grad_accum` batches of `batch_size` examples; on a CPU each example of a
batch runs as its own micro-batch (no padding, and a CPU gains nothing from stacking sequences); on a GPU
batches are grouped by length (see `BatchPlan`), so little of the compute goes to padding. Which examples a
batch takes is a function of (seed, step) alone.

Data parallel: under `accelerate launch` (or torchrun), i.e. WORLD_SIZE > 1, each process takes every
WORLD_SIZE-th batch, the module is wrapped for DDP by accelerate, and rank 0 writes the run folder:
    accelerate launch -m sleepy_tui.training.torch_trainer DATASET OUT_DIR [--steps N ...]
A global batch is then batch_size * grad_accum * WORLD_SIZE examples.

torch, transformers and peft are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import threading
import time
from pathlib import Path

from .. import events as ev
from ..atomic import write_json
from . import checkpoint as ckpt
from .base import (TrainConfig, TrainingUnavailable, TrainResult, copied_mask, encode_example, encode_rows,
                   read_dataset)
from .base_model import load_base, pick_device, resolve_base, source_gguf
from .loop import StepAborted, reported, train_loop

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
STATE_FILE = "trainer_state.pt"          # written last: a checkpoint folder without it is incomplete
IGNORE = -100                            # the label of a token the loss skips
MAX_GRAD_NORM = 1.0                      # transformers' Trainer default
MEGABATCH = 16                           # batches per length-sorted group (see BatchPlan)
PRECISIONS = ("auto", "float32", "bfloat16")
# Architectures whose causal LM is exactly `lm_head(self.model(...))`: the head then runs on reply positions only.
_PLAIN_HEAD = ("llama", "mistral", "qwen2", "qwen3")


def torch_problem() -> str | None:
    """Why the torch trainer can't run here (None: it can)."""
    missing = []
    for pkg in ("torch", "transformers", "peft"):
        try:
            __import__(pkg)
        except Exception:  # noqa: BLE001 - ImportError, or a broken native library
            missing.append(pkg)
    return f"the torch trainer needs {', '.join(missing)}: pip install {' '.join(missing)}" if missing else None


# ---- data ----------------------------------------------------------------------------------------------------------

def reply_labels(tokens: list[int], offset: int) -> list[int]:
    """Labels for `tokens`: IGNORE on the prompt, the token itself on the reply."""
    return [IGNORE] * offset + tokens[offset:]


class BatchPlan:
    """Which examples each micro-batch takes, a pure function of (seed, micro-batch index).

    Epoch e: a permutation from (seed, e); cut into groups of MEGABATCH batches; each group sorted by length
    (longest first) and cut into batches, so a batch holds examples of similar length; then the batches of the
    epoch are shuffled. Every example is seen once an epoch; a group's last batch may be short."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, megabatch: int = MEGABATCH):
        if not lengths:
            raise ValueError("no examples")
        self.lengths, self.seed, self.megabatch = list(lengths), seed, megabatch
        self.n = len(self.lengths)
        self.batch_size = max(1, min(batch_size, self.n))
        self._cached: tuple[int, list[list[int]]] | None = None
        self.per_epoch = len(self.epoch(0))

    def epoch(self, e: int) -> list[list[int]]:
        if self._cached is not None and self._cached[0] == e:
            return self._cached[1]
        import numpy as np
        rng = np.random.default_rng([self.seed, e])
        perm = [int(i) for i in rng.permutation(self.n)]
        group = self.batch_size * self.megabatch
        batches: list[list[int]] = []
        for start in range(0, self.n, group):
            chunk = sorted(perm[start:start + group], key=lambda i: -self.lengths[i])   # stable: ties stay random
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        batches = [batches[int(k)] for k in rng.permutation(len(batches))]
        self._cached = (e, batches)
        return batches

    def batch(self, index: int) -> list[int]:
        e, pos = divmod(index, self.per_epoch)
        return self.epoch(e)[pos]

    def position(self, index: int) -> dict:
        e, pos = divmod(index, self.per_epoch)
        return {"epoch": e, "batch": pos, "microbatch": index, "seed": self.seed, "batch_size": self.batch_size,
                "megabatch": self.megabatch, "batches_per_epoch": self.per_epoch}

    def padding_share(self, epoch: int = 0) -> float:
        """The share of the processed tokens that is padding over one epoch."""
        useful = processed = 0
        for b in self.epoch(epoch):
            widths = [self.lengths[i] for i in b]
            useful += sum(widths)
            processed += max(widths) * len(b)
        return 1 - useful / processed if processed else 0.0


def collate(examples: list[tuple[list[int], int]], idx: list[int], pad_id: int,
            copied: list[list[bool]] | None = None, copy_weight: float = 1.0) -> dict:
    """Right-padded input_ids / attention_mask / labels (IGNORE on prompt and padding) as tensors, and per label
    its loss weight (`copy_weight` where `copied` marks the reply token a copy of the prompt, else 1) and
    whether it is `changed` (not a copy)."""
    import torch
    rows = [examples[i] for i in idx]
    width = max(len(t) for t, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    weights = torch.zeros((len(rows), width), dtype=torch.float32)
    changed = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (i, (toks, offset)) in enumerate(zip(idx, rows)):
        input_ids[r, :len(toks)] = torch.tensor(toks, dtype=torch.long)
        attention_mask[r, :len(toks)] = 1
        labels[r, offset:len(toks)] = torch.tensor(toks[offset:], dtype=torch.long)
        copy = torch.tensor(copied[i], dtype=torch.bool) if copied is not None else \
            torch.zeros(len(toks) - offset, dtype=torch.bool)
        changed[r, offset:len(toks)] = ~copy
        weights[r, offset:len(toks)] = torch.where(copy, copy_weight, 1.0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weights": weights,
            "changed": changed}


# ---- learning rate ---------------------------------------------------------------------------------------------------

def lr_factor(config: TrainConfig):
    """f(s) with lr = learning_rate * f(s) for update s = 0, 1, ...: linear warmup (never 0), then cosine /
    linear decay to 0 at `steps`, or constant. The same curve as the mlx trainer's."""
    warm, total, kind = max(0, config.warmup_steps), config.steps, config.lr_schedule
    if kind not in ("cosine", "linear", "constant"):
        raise ValueError(f"lr_schedule: unknown {kind!r} (cosine | linear | constant)")

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / (warm + 1)
        p = min(1.0, max(0.0, (s - warm) / max(1, total - warm)))
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * p))
        return 1 - p if kind == "linear" else 1.0

    return f


# ---- the model -----------------------------------------------------------------------------------------------------

def _reply_loss_module(peft_model):
    """A module whose forward gives the cross-entropy of each reply token, in order (what DDP wraps)."""
    import torch
    import torch.nn.functional as F

    class ReplyLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, labels):
            base = self.inner.get_base_model()
            targets = labels[:, 1:]
            keep = targets != IGNORE
            decoder, head = getattr(base, "model", None), base.get_output_embeddings()
            if getattr(base.config, "model_type", None) in _PLAIN_HEAD and decoder is not None and head is not None:
                hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                logits = head(hidden[:, :-1][keep])
            else:
                logits = base(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][keep]
            return F.cross_entropy(logits.float(), targets[keep], reduction="none")

    return ReplyLoss(peft_model)


def _check_targets(model, target_modules: tuple[str, ...]) -> None:
    import torch
    linears = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in target_modules if t not in linears]
    if missing:
        raise ValueError(f"target_modules {missing} not found in the model; its linear layers: "
                         f"{', '.join(sorted(linears))}")


# ---- one process, or data parallel -----------------------------------------------------------------------------------

class _Parallel:
    """Single process; or, with WORLD_SIZE > 1 (accelerate launch / torchrun), data parallel through accelerate."""

    def __init__(self, device: str):
        self.acc = None
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            try:
                from accelerate import Accelerator
            except ImportError:
                raise TrainingUnavailable("data-parallel training (WORLD_SIZE > 1) needs accelerate: "
                                          "pip install accelerate") from None
            # cpu=True is what makes accelerate set up gloo for processes without a GPU (else it runs them alone)
            self.acc = Accelerator(cpu=pick_device(device) == "cpu")
            self.device = str(self.acc.device)
            self.rank, self.world = self.acc.process_index, self.acc.num_processes
        else:
            self.device = pick_device(device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module):
        return self.acc.prepare_model(module) if self.acc else module

    def no_sync(self, module, skip: bool):
        return self.acc.no_sync(module) if (self.acc and skip) else contextlib.nullcontext()

    def sum(self, values: list[float]) -> list[float]:
        if not self.acc:
            return values
        import torch
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        if not self.acc:
            return flag
        import torch
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj) -> list:
        if not self.acc:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.acc:
            self.acc.wait_for_everyone()


# ---- checkpoints ---------------------------------------------------------------------------------------------------


def checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in out_dir, oldest first."""
    return ckpt.complete(out_dir, (STATE_FILE, ADAPTER_WEIGHTS))


def _save_adapter(peft_model, folder: Path) -> None:
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)      # peft's model card template: noise in every checkpoint


def _rng_state(device: str) -> dict:
    import numpy as np
    import torch
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)]}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict, device: str) -> None:
    import numpy as np
    import torch
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if device.startswith("cuda") and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---- the run -------------------------------------------------------------------------------------------------------

def pick_precision(requested: str, device: str) -> str:
    """"float32" or "bfloat16" for `requested` (auto | float32 | bfloat16) on `device`: auto takes bfloat16
    where the hardware multiplies it natively (devices.fast_bf16), else float32."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision: unknown {requested!r} ({' | '.join(PRECISIONS)})")
    if requested != "auto":
        return requested
    from ..devices import fast_bf16
    return "bfloat16" if fast_bf16(device) else "float32"


class _Run:
    """One training run in memory: LoRA model, optimizer, scheduler, batch plan, loss log (loop.Run).

    Everything a checkpoint holds is here, so `snapshot` and `restore` are each other's inverse."""

    required = (STATE_FILE, ADAPTER_WEIGHTS)

    def __init__(self, config: TrainConfig, model, tokenizer, examples: list, par: _Parallel, data_hash: str):
        import torch
        from peft import LoraConfig, get_peft_model
        self.config, self.examples, self.par, self.data_hash = config, examples, par, data_hash
        _check_targets(model, config.target_modules)
        model.config.use_cache = False
        torch.manual_seed(config.seed)                       # fixes the LoRA initialisation
        layers = config.adapted_layers(model.config.num_hidden_layers)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM",
                          layers_to_transform=list(layers) if layers.start else None)
        self.peft_model = get_peft_model(model, lora, autocast_adapter_dtype=True)   # adapter weights float32
        torch.manual_seed(config.seed + 7919 * par.rank)     # the dropout stream, one per process
        self.peft_model.train()
        self.params = [p for p in self.peft_model.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()                          # trained weights and optimizer state in float32
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(config))
        self.module = par.wrap(_reply_loss_module(self.peft_model))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.plan = BatchPlan([len(t) for t, _ in examples], config.batch_size, config.seed)
        self.copied = [copied_mask(t, o) for t, o in examples]
        self.one_by_one = par.device.startswith("cpu")       # see the module docstring
        self.log: list[dict] = []
        self.step = 0

    # -- checkpoints --

    def microbatch_index(self, step: int, micro: int) -> int:
        return (step * self.config.grad_accum + micro) * self.par.world + self.par.rank

    def snapshot(self) -> dict:
        """The trainer_state.pt dict (every process must call it: the RNG states are gathered)."""
        rngs = self.par.gather(_rng_state(self.par.device))
        return {"format": 1, "step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rngs, "world_size": self.par.world,
                "data_order": self.plan.position(self.microbatch_index(self.step, 0)),
                "config": self.config.to_dict(), "dataset_sha256": self.data_hash, "log": self.log}

    def write_checkpoint(self, folder: Path, snapshot: dict) -> None:
        import torch
        _save_adapter(self.peft_model, folder)
        torch.save(snapshot, folder / STATE_FILE)            # last: it marks the folder complete

    def write_adapter(self, folder: Path) -> None:
        _save_adapter(self.peft_model, folder)

    def restore(self, folder: Path, state: dict) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        weights = load_file(str(folder / ADAPTER_WEIGHTS), device="cpu")
        result = set_peft_model_state_dict(self.peft_model, weights)
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if getattr(result, "unexpected_keys", None) or missing:
            raise ValueError(f"{folder}: its adapter does not match this model's LoRA layers")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        if len(rngs) == self.par.world:
            _set_rng_state(rngs[self.par.rank], self.par.device)
        else:   # a different number of processes: the data order differs anyway
            torch.manual_seed(self.config.seed + 7919 * self.par.rank + int(state["step"]))
        self.step = int(state["step"])
        self.log = [r for r in state["log"] if r["step"] <= self.step]

    # -- training --

    def _micro_batches(self) -> list[dict]:
        out = []
        for m in range(self.config.grad_accum):
            idx = self.plan.batch(self.microbatch_index(self.step, m))
            for part in ([[i] for i in idx] if self.one_by_one else [idx]):
                out.append(collate(self.examples, part, self.pad_id, self.copied, self.config.copy_weight))
        return out

    def train_step(self, stop: threading.Event | None) -> dict:
        """One optimizer update over grad_accum batches; its log record. Raises StepAborted (with the step
        undone) when `stop` is set between micro-batches."""
        import torch
        par = self.par
        t0 = time.perf_counter()
        batches = self._micro_batches()
        replies = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        weight = sum(float(b["weights"][:, 1:].sum()) for b in batches)   # what the loss is normalised by
        useful = sum(int(b["attention_mask"].sum()) for b in batches)
        processed = sum(b["input_ids"].numel() for b in batches)
        rng_before = _rng_state(par.device)        # dropout draws from it (the CUDA one on a GPU)
        loss_sum = changed_sum = 0.0
        changed_n = 0
        for m, batch in enumerate(batches):
            if m and par.any(stop is not None and stop.is_set()):
                self.optimizer.zero_grad(set_to_none=True)
                _set_rng_state(rng_before, par.device)
                raise StepAborted
            if not (batch["attention_mask"] == 0).any():
                batch["attention_mask"] = None          # no padding: attention may take its causal fast path
            keep = batch["labels"][:, 1:] != IGNORE
            w, ch = batch.pop("weights")[:, 1:][keep], batch.pop("changed")[:, 1:][keep]
            batch = {k: (v.to(par.device) if v is not None else None) for k, v in batch.items()}
            with par.no_sync(self.module, skip=m < len(batches) - 1):
                ce = self.module(**batch)
                ((ce * w.to(ce.device)).sum() / max(weight, 1e-9)).backward()
            ce = ce.detach().cpu()
            loss_sum += float(ce.sum())
            changed_sum += float(ce[ch].sum())
            changed_n += int(ch.sum())
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        lr = float(self.scheduler.get_last_lr()[0])     # the rate this update uses
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, replies, useful, processed, changed_sum, changed_n = par.sum(
            [loss_sum, float(replies), float(useful), float(processed), changed_sum, float(changed_n)])
        dt = time.perf_counter() - t0
        self.step += 1
        # `loss`: every reply token alike, whatever copy_weight is, so runs with different weights compare
        rec = {"step": self.step, "loss": loss_sum / max(1.0, replies), "lr": lr,
               "tokens_per_s": useful / dt if dt > 0 else 0.0, "seconds": dt,
               "useful_tokens": int(useful), "processed_tokens": int(processed), "reply_tokens": int(replies),
               "changed_loss": changed_sum / changed_n if changed_n else None, "changed_tokens": int(changed_n)}
        self.log.append(rec)
        return rec


# ---- the trainer -----------------------------------------------------------------------------------------------------

def default_threads() -> int:
    """CPU threads for training: $OMP_NUM_THREADS if set (torchrun sets it), else every CPU this process may use.

    torch's threads wait for each other at every operation, so one that loses its CPU to other work stalls
    them all: on a 2-CPU machine with another busy process of the same priority, a 2-thread step ran 4-7x
    slower than a 1-thread step. The app runs the trainer at a lower priority than its UI (priority.py), and a
    cycle trains after its day, not beside it, so every CPU is the right default; pass `threads` to
    TorchTrainer (or set OMP_NUM_THREADS) to leave some free."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    from ..devices import usable_cpus
    return usable_cpus()


def _return_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the system at once (Linux only; process-wide).

    glibc serves big allocations with mmap, but raises that threshold each time one is freed, so later
    activations of a similar size come from the heap, which fragments and keeps its peak. A fixed threshold
    keeps them mmapped: peak RSS of SmolLM2-135M training (batch 4 x 512, CPU) went from 5.7 to 4.4 GiB at the
    same speed. (The same as starting Python with MALLOC_MMAP_THRESHOLD_=131072.)"""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(128 * 1024))     # M_MMAP_THRESHOLD; fixed from now on
    except (OSError, AttributeError):                                 # not glibc (musl): nothing to tune
        pass


class TorchTrainer:
    """The Trainer protocol with transformers + peft LoRA (see the module docstring for the run folder)."""

    name = "torch"

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, threads: int = 0):
        self.cache_dir = Path(cache_dir) if cache_dir else None   # where a GGUF base's float32 copy goes
        self.threads = threads                                    # CPU threads; 0: default_threads()

    def train(self, dataset: Path, config: TrainConfig, out_dir: Path, *, on_event: ev.EventSink,
              stop: threading.Event | None = None, resume: bool = True) -> TrainResult:
        def body() -> TrainResult:
            import torch
            threads = torch.get_num_threads()      # process-wide: put back afterwards
            try:
                return self._train(Path(dataset), config, Path(out_dir), on_event, stop, resume)
            finally:
                torch.set_num_threads(threads)

        return reported(on_event, torch_problem, body)

    def _train(self, dataset: Path, config: TrainConfig, out_dir: Path, on_event: ev.EventSink,
               stop: threading.Event | None, resume: bool) -> TrainResult:
        import torch

        if min(config.steps, config.batch_size, config.grad_accum, config.lora_rank, config.max_seq_len) <= 0:
            raise ValueError("steps, batch_size, grad_accum, lora_rank and max_seq_len must be > 0")
        lr_factor(config)                                   # validates lr_schedule before the model loads
        par = _Parallel(config.device)
        precision = pick_precision(config.precision, par.device)
        if par.device.startswith("cpu"):
            torch.set_num_threads(self.threads or default_threads())
            _return_freed_memory()
        emit = on_event if par.main else ev.ignore
        rows = read_dataset(dataset)
        data_hash = ckpt.sha256(dataset)
        found = checkpoints(out_dir) if resume else []
        latest = found[-1][1] if found else None
        saved = torch.load(latest / STATE_FILE, map_location="cpu", weights_only=True) if latest else None
        if saved is not None:
            diffs = ckpt.resume_problems(saved, config.to_dict(), data_hash)
            if saved.get("world_size", 1) != par.world:
                diffs.append(f"processes: {saved.get('world_size', 1)} -> {par.world}")
            if diffs:
                raise ckpt.refuse_resume(latest, diffs)
        if par.main:
            ckpt.prepare(out_dir, resume)
        par.barrier()

        t_load = time.perf_counter()
        converted = False
        if par.main:                                        # converts a GGUF base once, before the others look
            converted = _needs_conversion(config.base_model, self.cache_dir)
            emit(ev.Notice("info", "de-quantizing the base GGUF into a float32 cache (once per model; a minute or "
                                   "more for a 1.5B model), then loading it" if converted else "loading the base model"))
            resolve_base(config.base_model, self.cache_dir)
        par.barrier()
        base_dir = resolve_base(config.base_model, self.cache_dir)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        model, tokenizer = load_base(base_dir, device=par.device, dtype=dtype)
        examples = self._encode(rows, tokenizer, config, dataset, emit)
        run = _Run(config, model, tokenizer, examples, par, data_hash)
        if saved is not None:
            run.restore(latest, saved)
        load_s = time.perf_counter() - t_load
        gguf = source_gguf(config.base_model)
        padding = 0.0 if run.one_by_one else run.plan.padding_share()
        if par.main:
            write_json(out_dir / "train_config.json", {
                "trainer": self.name, **config.to_dict(), "compute_dtype": precision, "base_model_dir": base_dir,
                "base_gguf": str(gguf) if gguf else None, "dataset": str(dataset), "dataset_sha256": data_hash,
                "examples": len(examples), "skipped_examples": len(rows) - len(examples),
                "optimizer": "AdamW (weight_decay 0)", "max_grad_norm": MAX_GRAD_NORM,
                "lora_scale": config.lora_alpha / config.lora_rank, "device": par.device, "world_size": par.world,
                "batches": "one example per micro-batch" if run.one_by_one else "length-grouped",
                "planned_padding_share": round(padding, 4), "versions": _versions()})
        n = torch.get_num_threads()
        where = f"{par.device}, {n} thread{'s' if n > 1 else ''}" if par.device.startswith("cpu") else par.device
        shape = (f"batches of {run.plan.batch_size}, one example at a time" if run.one_by_one
                 else f"length-grouped batches of {run.plan.batch_size} ({padding:.1%} padding)")
        describe = (f"torch trainer on {where}, {precision}" + (f" x{par.world} processes" if par.world > 1 else "")
                    + f": {len(examples)} examples, {shape}")
        detail = "de-quantized the GGUF into the cache (once), then loaded" if converted else "loaded the base model"
        return train_loop(run, config, out_dir, emit=emit, stop=stop, resumed_from=latest, examples=len(examples),
                          load_s=load_s, load_detail=detail, describe=describe, ranks=par,
                          extra_stats=lambda: {"planned_padding_share": padding, "device": par.device,
                                               "world_size": par.world, "threads": torch.get_num_threads(),
                                               "compute_dtype": precision})

    @staticmethod
    def _encode(rows: list[dict], tokenizer, config: TrainConfig, dataset: Path, emit) -> list:
        return encode_rows(rows, lambda messages: encode_example(tokenizer, messages), config.max_seq_len,
                           dataset, emit)


def _needs_conversion(base_model: str, cache_dir: Path | None) -> bool:
    """Whether loading `base_model` will first de-quantize a GGUF into the cache (the slow first load)."""
    from .base_model import base_source, cached_conversion
    try:
        kind, path = base_source(base_model)
    except TrainingUnavailable:
        return False
    return kind == "gguf" and cached_conversion(path, cache_dir) is None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("torch", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _term_with_parent() -> None:
    """SIGTERM to this process when the thread that started it ends (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)    # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    from .process_trainer import PARENT_ENV
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):   # it ended before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


# ---- command line (for `accelerate launch -m sleepy_tui.training.torch_trainer ...`) ---------------------------------

def main(argv: list[str] | None = None) -> int:
    import argparse
    import dataclasses
    import signal
    ap = argparse.ArgumentParser(prog="python -m sleepy_tui.training.torch_trainer",
                                 description="Train a LoRA adapter with the torch trainer; events print as JSON lines.")
    ap.add_argument("dataset", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--no-resume", action="store_true", help="start over instead of resuming the latest checkpoint")
    ap.add_argument("--cache-dir", type=Path, default=None, help="where a GGUF base's float32 copy is kept")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: every CPU)")
    ap.add_argument("--die-with-parent", action="store_true",
                    help="stop (checkpoint and end) when the process or thread that started this one ends")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, tuple):
            ap.add_argument(flag, nargs="+", default=list(value))
        else:
            ap.add_argument(flag, type=type(value), default=value)
    args = ap.parse_args(argv)
    config = TrainConfig(**{f.name: (tuple(getattr(args, f.name)) if f.name == "target_modules"
                                     else getattr(args, f.name)) for f in dataclasses.fields(TrainConfig)})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):          # first signal: checkpoint and stop; the run resumes later
        signal.signal(sig, lambda *_: stop.set())
    if args.die_with_parent:
        _term_with_parent()

    def on_event(e: ev.Event) -> None:
        print(json.dumps(e.to_dict(), default=str), flush=True)

    try:
        trainer = TorchTrainer(args.cache_dir, threads=args.threads)
        result = trainer.train(args.dataset, config, args.out_dir, on_event=on_event, stop=stop,
                               resume=not args.no_resume)
    except Exception:  # noqa: BLE001 - already reported as a TrainError event
        return 1
    return 3 if result.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
