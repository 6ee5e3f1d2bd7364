"""Where a deployed routing policy lives, so a promotion survives a restart and one command rolls it back (ROS-free).

A store is a folder: `current.onnx` (the policy a node runs: point the node's `policy` parameter at it),
`previous.onnx` (the one before the last promotion, for rollback) and `history.jsonl` (one JSON line per
promotion or rollback: time, what moved, policy ids, and the gate's decision with its numbers). Every change
validates the file first (a `Policy` loads it) and replaces `current.onnx` by an atomic rename, so a node
restarting at any moment loads either the old policy or the new one, never half a file. Changes hold the store's
lock (`.lock`, an flock), so two promotions at once (a retraining's and an operator's) take turns; temporary files
get fresh names and no file of the store is written through a symbolic link.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from adaptive_perception.config import resolve_model
from adaptive_perception.detector import file_digest
from adaptive_perception.errors import ConfigError, file_lock
from adaptive_perception.policy import META_PREFIX, Policy, PolicyFileError

CURRENT, PREVIOUS, HISTORY, LOCK = "current.onnx", "previous.onnx", "history.jsonl", ".lock"


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stored_id(path: Path) -> str:
    """The policy id a policy file's metadata holds, read without validating the file ('?' when none can be read)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 (a damaged file: no id to read)
        return "?"
    return next((p.value for p in model.metadata_props if p.key == f"{META_PREFIX}policy_id"), "?")


class PolicyStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    @property
    def current(self) -> Path:
        return self.folder / CURRENT

    @property
    def previous(self) -> Path:
        return self.folder / PREVIOUS

    def policy_id(self, path: Path) -> str | None:
        """The id of the store's file at `path` (None: no file); a file this version cannot load (a policy of older
        features, kept from before an upgrade) is named by the id its metadata holds, marked so."""
        if not path.is_file():
            return None
        try:
            return Policy(str(path)).policy_id
        except PolicyFileError:
            return f"{_stored_id(path)} (not loadable by this version)"

    def init(self, policy: str | None = None) -> Path:
        """Start the store from `policy` (a file or embedded:policy; default embedded:policy) unless it already holds
        a current policy: then nothing changes, and a `policy` other than the current one is refused."""
        if not self.folder.exists():  # made once the policy is known good, then locked like any change
            Policy(resolve_model(policy or "embedded:policy"))
            self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            return self._init(policy)

    def _init(self, policy: str | None) -> Path:
        if self.current.is_file():
            if policy is not None and Policy(resolve_model(policy)).policy_id != self.policy_id(self.current):
                raise ConfigError(f"policy store {self.folder} already holds policy '{self.policy_id(self.current)}'; "
                                  f"nothing was changed: `adaptive-perception policy promote {policy} --store "
                                  f"{self.folder}` makes it current (and keeps the old one for rollback)")
            return self.current
        policy = policy or "embedded:policy"
        source = Path(resolve_model(policy))
        Policy(str(source))  # validated before anything is written
        self._install(source, self.current)
        self._log({"action": "init", "policy_id": self.policy_id(self.current),
                   "source": policy if policy.startswith("embedded:") else str(source.resolve())})
        return self.current

    def promote(self, candidate: str | Path, decision: dict | None = None,
                then: Callable[[Path, bool], None] | None = None, keep_current: bool = False) -> Path:
        """Make `candidate` current; the current policy becomes previous. Returns the current path. `then(path,
        changed)` runs before the store's lock is let go (loading the node: another promotion cannot change the file
        first). With `keep_current`, a candidate that is the current file already changes nothing (then(path,
        False)) instead of being refused."""
        with self._locked():
            if keep_current and self.current.is_file() and \
                    file_digest(resolve_model(str(candidate))) == file_digest(self.current):
                path, changed = self.current, False
            else:
                path, changed = self._promote(candidate, decision), True
            if then is not None:
                then(path, changed)
            return path

    def _promote(self, candidate: str | Path, decision: dict | None) -> Path:
        if not self.current.is_file():
            raise ConfigError(f"policy store {self.folder} holds no {CURRENT}; start it with `adaptive-perception "
                              "policy store-init --store DIR` first")
        candidate = Path(resolve_model(str(candidate)))
        new_id = Policy(str(candidate)).policy_id  # validated before anything moves
        old_id = self.policy_id(self.current)
        new_digest, old_digest = file_digest(candidate), file_digest(self.current)
        if new_digest == old_digest:  # a second promotion would make previous the same file: no way back
            raise ConfigError(f"policy '{new_id}' is already current in {self.folder} (the same file); nothing was "
                              "changed (the previous policy stays the rollback target)")
        # the same id in another file (a drift reference recomputed with `policy drift-reference --out`) is promoted:
        # the file it replaces is the rollback target; the digests tell them apart in the history
        self._install(self.current, self.previous)
        self._install(candidate, self.current)
        self._log({"action": "promote", "policy_id": new_id, "replaced": old_id, "source": str(candidate.resolve()),
                   "digest": new_digest, "replaced_digest": old_digest, "decision": decision or {}})
        return self.current

    def rollback(self, then: Callable[[Path, bool], None] | None = None) -> Path:
        """Swap current and previous (a second rollback undoes the first). Returns the current path; `then` as for
        `promote`."""
        with self._locked():
            path = self._rollback()
            if then is not None:
                then(path, True)
            return path

    def _rollback(self) -> Path:
        if not self.current.is_file():
            raise ConfigError(f"--store {self.folder}: no {CURRENT} there" + (
                "; it is not a policy store (start one with `adaptive-perception policy store-init --store DIR`)"
                if not (self.folder / HISTORY).is_file() else
                f"; restore it (its history: {self.folder / HISTORY}) or start again with `policy store-init`"))
        if not self.previous.is_file():
            raise ConfigError(f"policy store {self.folder} has no {PREVIOUS}: nothing was promoted, nothing to roll "
                              "back to")
        try:
            new_id = Policy(str(self.previous)).policy_id  # what a node would load: checked before anything moves
        except PolicyFileError as exc:
            raise ConfigError(f"policy store {self.folder}: {PREVIOUS} cannot be rolled back to: {exc}") from None
        old_id, old_digest, new_digest = self.policy_id(self.current), file_digest(self.current), \
            file_digest(self.previous)
        swap = self._copy(self.current, self.previous)  # the current policy, under a fresh temporary name
        try:
            self._install(self.previous, self.current)
            os.replace(swap, self.previous)
        except BaseException:
            swap.unlink(missing_ok=True)
            raise
        self._log({"action": "rollback", "policy_id": new_id, "replaced": old_id, "digest": new_digest,
                   "replaced_digest": old_digest})
        return self.current

    def history(self) -> list[dict]:
        """The store's log; an error when the folder holds no store at all (a mistyped --store)."""
        path = self.folder / HISTORY
        if not path.is_file() and not self.current.is_file():
            raise ConfigError(f"--store {self.folder}: no policy store there (no {CURRENT}, no {HISTORY}); start one "
                              "with `adaptive-perception policy store-init --store DIR`")
        entries = []
        for number, line in enumerate(path.read_text().splitlines() if path.is_file() else [], 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:  # a line cut short (a full disk, a hand edit): said, not a traceback
                raise ConfigError(f"{path} line {number} is not a JSON record ({exc.msg}): repair or remove that line "
                                  f"(the store's {CURRENT} and {PREVIOUS} are as they were)") from None
        return entries

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The store's lock, held while one change runs (another process's change waits for it). A folder that does
        not exist yet has nothing to lock: a promotion or rollback refuses it, an init makes it once its policy is
        validated."""
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"--store {self.folder} is a file; give a folder for the policy store")
        if not self.folder.is_dir():
            yield
            return
        with file_lock(self.folder / LOCK):
            yield

    def _copy(self, source: Path, target: Path) -> Path:
        """`source` copied and synced to a new temporary file beside `target` (created exclusively: a name
        planted in the folder, a symbolic link to another file, is never written through)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=self.folder, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.fchmod(descriptor, 0o666 & ~_umask())  # as any file the process writes (mkstemp makes it 0600: a
            # node running as another user could no longer read a promoted policy)
            with os.fdopen(descriptor, "wb") as handle, open(source, "rb") as original:
                shutil.copyfileobj(original, handle)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    def _install(self, source: Path, target: Path) -> None:
        """Copy `source` over `target` atomically (a temporary file in the same folder, then a rename: a link at
        `target` is replaced, not followed)."""
        os.replace(self._copy(source, target), target)

    def _log(self, entry: dict) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}) + "\n"
        descriptor = os.open(self.folder / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(descriptor, "a") as handle:
            handle.write(line)
