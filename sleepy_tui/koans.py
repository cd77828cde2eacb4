"""Koans: small broken Rust programs with a reference fix and behavioural tests.

One TOML file per koan (`koans/<family>/<id>.toml`). The frozen eval set is named in
`koans/frozen_eval.toml` with a content hash per koan, so an edited frozen koan is refused.

Three splits: `eval` (the frozen set, for the gate's verdict alone), `validation` (a fixed slice of the other
koans, never trained on either: it picks a cycle's recipe and guards against forgetting) and `train`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, locations
from .safe_text import KOAN_MAX_BYTES, read_regular_file

FAMILIES = ("borrow_checker", "trait_bounds", "result_handling", "lifetimes", "type_mismatch")  # the project's
TEST_FAILURE = "test_failure"   # expected_error of a behaviour-bug koan: it compiles and fails a test
_FAMILY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,47}")  # a folder of the user's own: any such name
REQUIRED = ("id", "family", "title", "expected_error", "buggy", "solution", "tests")
OPTIONAL = ("hint",)
# The validation slice: a training koan whose root id hashes below VALIDATION_SHARE of the range. It depends on
# the id alone, so adding koans never moves one in or out (a koan trained on can't become a validation koan).
# A koan generated from another (gen_<source>_...) goes with its source, so no mutant of a validation koan is
# trained on. A folder with fewer than VALIDATION_MIN training koans keeps them all for training.
VALIDATION_SHARE = 1 / 8
VALIDATION_MIN = 40
_GENERATED = re.compile(r"^gen_([A-Za-z]+_\d+)_")


class KoanError(ValueError):
    """A koan file or the manifest is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Koan:
    id: str
    family: str
    title: str
    expected_error: str
    buggy: str
    solution: str
    tests: str
    hint: str = ""
    path: Path | None = field(default=None, compare=False)
    split: str = "train"

    @property
    def content_hash(self) -> str:
        return content_hash(self)

    @property
    def kind(self) -> str:
        """TEST_FAILURE for a behaviour bug (it compiles, a test fails), else "compile_error" (a rustc code)."""
        return TEST_FAILURE if self.expected_error == TEST_FAILURE else "compile_error"


def content_hash(k: Koan) -> str:
    """Hash of everything that defines a koan's behaviour (not its path or split)."""
    h = hashlib.sha256()
    for part in (k.id, k.family, k.title, k.expected_error, k.buggy, k.solution, k.tests, k.hint):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def parse_koan(text: str, path: Path, families: tuple[str, ...] | None = FAMILIES) -> Koan:
    """Parse one koan file; raise KoanError naming the file and field on any problem. `families`: the names a
    family may have (None: any plain name, as in a user's own folder)."""
    where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KoanError(f"{where}: invalid TOML: {e}") from None
    except RecursionError:                      # tomllib parses nested arrays recursively
        raise KoanError(f"{where}: invalid TOML: nested too deeply") from None
    missing = [f for f in REQUIRED if f not in data]
    if missing:
        raise KoanError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise KoanError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(REQUIRED + OPTIONAL)})")
    for f in REQUIRED + OPTIONAL:
        if f in data and not isinstance(data[f], str):
            raise KoanError(f"{where}: field {f} must be a string, got {type(data[f]).__name__}")
    for f in REQUIRED:
        if not data[f].strip():
            raise KoanError(f"{where}: field {f} is empty")
    if families is not None and data["family"] not in families:
        raise KoanError(f"{where}: unknown family {data['family']!r} (known: {', '.join(families)})")
    if not _FAMILY_NAME.fullmatch(data["family"]):
        raise KoanError(f"{where}: family {data['family'][:48]!r} is not a plain name (letters, digits, _ . -)")
    if path.stem != data["id"] and path.suffix == ".toml":
        raise KoanError(f"{where}: id {data['id']!r} does not match the file name {path.stem!r}")
    if "#[test]" not in data["tests"]:
        raise KoanError(f"{where}: field tests has no #[test] function")
    return Koan(
        id=data["id"], family=data["family"], title=data["title"].strip(),
        expected_error=data["expected_error"].strip(), buggy=data["buggy"], solution=data["solution"],
        tests=data["tests"], hint=data.get("hint", "").strip(), path=path,
    )


def families_for(root: Path) -> tuple[str, ...] | None:
    """The family names allowed under `root`: the project's five in its own koans/, any name in a user's folder."""
    project = locations.koans_dir().resolve()
    root = Path(root).resolve()
    return FAMILIES if root == project or project in root.parents else None


def load_koan(path: Path, families: tuple[str, ...] | None = FAMILIES) -> Koan:
    try:
        text = read_regular_file(path, KOAN_MAX_BYTES).decode("utf-8")   # a FIFO or /dev/zero is refused
    except UnicodeDecodeError as e:
        raise KoanError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise KoanError(f"{path}: cannot read: {e.strerror}") from None
    return parse_koan(text, path, families)


@dataclass
class Corpus:
    koans: dict[str, Koan]
    errors: list[str]  # one line per skipped file / manifest problem
    edited: dict[str, Koan] = field(default_factory=dict)  # frozen koans refused because they were edited
    frozen_ids: tuple[str, ...] = ()                        # the manifest's ids, loaded or not

    @property
    def families(self) -> list[str]:
        return sorted({k.family for k in self.koans.values()})

    def select(self, *, split: str | None = None, family: str | None = None, ids: list[str] | None = None) -> list[Koan]:
        if family is not None and self.koans and family not in self.families:
            raise KoanError(f"unknown family {family!r} (this folder's: {', '.join(self.families)})")
        out = [k for k in self.koans.values()
               if (split is None or k.split == split) and (family is None or k.family == family)]
        if ids:
            unknown = [i for i in ids if i not in self.koans]
            if unknown:
                raise KoanError(f"unknown koan id(s): {', '.join(unknown)}")
            out = [self.koans[i] for i in ids]
        return sorted(out, key=lambda k: k.id)

    @property
    def eval_set(self) -> list[Koan]:
        return self.select(split="eval")

    @property
    def train_set(self) -> list[Koan]:
        return self.select(split="train")

    @property
    def validation_set(self) -> list[Koan]:
        return self.select(split="validation")

    def day_queue(self, count: int | None = None, family: str | None = None) -> list[Koan]:
        """The training koans in the order a day takes them: one of each family in turn (each family in id
        order), so that the first `count` cover every family rather than the first family alone."""
        by_family: dict[str, list[Koan]] = {}
        for k in self.select(split="train", family=family):
            by_family.setdefault(k.family, []).append(k)
        columns = [by_family[f] for f in sorted(by_family)]
        queue = [k for row in itertools.zip_longest(*columns) for k in row if k is not None]
        return queue[:count] if count else queue


def read_manifest(path: Path) -> dict[str, str]:
    """id -> content hash of the frozen eval set."""
    try:
        data = tomllib.loads(read_regular_file(path, KOAN_MAX_BYTES).decode("utf-8"))
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as e:
        raise KoanError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise KoanError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise KoanError(f"{path}: invalid TOML: {e}") from None
    except RecursionError:
        raise KoanError(f"{path}: invalid TOML: nested too deeply") from None
    koans = data.get("koans")
    if not isinstance(koans, list) or not all(isinstance(k, dict) and {"id", "hash"} <= set(k)
                                              and isinstance(k["id"], str) and isinstance(k["hash"], str)
                                              for k in koans):
        raise KoanError(f"{path}: expected [[koans]] tables with id and hash")
    return {k["id"]: k["hash"] for k in koans}


def write_manifest(path: Path, koans: list[Koan]) -> None:
    lines = ["# The frozen eval set: never trained on. An edit to one of these koans changes its hash and is refused.",
             "# Regenerate only on purpose, with `sleepy koans freeze`.", ""]
    for k in sorted(koans, key=lambda k: k.id):
        lines += ["[[koans]]", f'id = "{k.id}"', f'family = "{k.family}"', f'hash = "{k.content_hash}"', ""]
    atomic.write_text(path, "\n".join(lines))


def load_corpus(root: Path | None = None, *, all_frozen: bool = False, strict: bool = False) -> Corpus:
    """Load every koan under `root` (default: the project's koans/).

    Malformed files are skipped and reported in `errors` (or raised when strict). The frozen manifest
    decides the split; with `all_frozen` (a user's own folder used for eval) every koan counts as eval.
    A frozen koan whose hash does not match the manifest is refused (never loaded).
    """
    root = Path(root) if root else locations.koans_dir()
    if not root.is_dir():
        raise KoanError(f"{root}: no such koan folder")
    manifest_path = locations.frozen_manifest(root)
    errors: list[str] = []
    koans: dict[str, Koan] = {}
    for path in sorted(root.rglob("*.toml")):
        if path == manifest_path:
            continue
        try:
            k = load_koan(path, None if all_frozen else families_for(root))
        except KoanError as e:
            if strict:
                raise
            errors.append(str(e))
            continue
        if k.id in koans:
            msg = f"{path}: duplicate id {k.id!r} (also in {koans[k.id].path})"
            if strict:
                raise KoanError(msg)
            errors.append(msg)
            continue
        koans[k.id] = k
    manifest = {} if all_frozen else read_manifest(manifest_path)
    edited: dict[str, Koan] = {}
    for kid, want in manifest.items():
        k = koans.get(kid)
        if k is None:
            errors.append(f"{manifest_path}: frozen koan {kid!r} is missing from {root}")
            continue
        if k.content_hash != want:
            msg = (f"{k.path}: frozen eval koan {kid!r} was edited (hash {k.content_hash} != {want} in "
                   f"{manifest_path.name}); restore it, or re-freeze on purpose with `sleepy koans freeze`")
            if strict:
                raise KoanError(msg)
            errors.append(msg)
            edited[kid] = _with_split(koans.pop(kid), "eval")
            continue
    for kid, k in koans.items():
        if all_frozen or kid in manifest:
            koans[kid] = _with_split(k, "eval")
    if sum(k.split == "train" for k in koans.values()) >= VALIDATION_MIN:
        for kid, k in koans.items():
            if k.split == "train" and in_validation(kid):
                koans[kid] = _with_split(k, "validation")
    return Corpus(koans=koans, errors=errors, edited=edited, frozen_ids=tuple(manifest))


def root_id(koan_id: str) -> str:
    """The koan a generated koan was made from (gen_bc_011_drop_clone_... -> bc_011); any other id itself."""
    m = _GENERATED.match(koan_id)
    return m.group(1) if m else koan_id


def in_validation(koan_id: str) -> bool:
    """Whether a (non-frozen) koan belongs to the validation slice: a stable hash of its root id."""
    h = int(hashlib.sha256(f"validation:{root_id(koan_id)}".encode()).hexdigest()[:8], 16)
    return h < VALIDATION_SHARE * 2 ** 32


def _with_split(k: Koan, split: str) -> Koan:
    from dataclasses import replace
    return replace(k, split=split)


def combine(code: str, tests: str) -> str:
    """The source the checker compiles: the program, then its tests in a cfg(test) module."""
    return code.rstrip() + "\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n\n" + tests.strip("\n") + "\n}\n"
