"""Where generated files go, and how they are written safely.

Everything generated lives under one outputs root so that git never sees it and a user can delete
it in one go. Writes go to a temporary name first, so an interrupted run never leaves half a file
that a later run would trust.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator
from contextlib import contextmanager

REPO_ROOT = Path(__file__).resolve().parent.parent


def outputs_root() -> Path:
    """`$GEOLIB_OUTPUTS`, else `<repo>/outputs` (editable install), else `./outputs`."""
    env = os.environ.get("GEOLIB_OUTPUTS")
    if env:
        return Path(env).expanduser().resolve()
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "outputs"
    return Path.cwd() / "outputs"


def profile_dir(profile: str, kind: str | None = None) -> Path:
    """`outputs/<profile>[/<kind>]`, created on demand."""
    path = outputs_root() / profile
    if kind:
        path = path / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def _phase1_folder(seed: int | None) -> str:
    return "phase1" if seed is None else f"phase1-seed{seed}"


def phase1_checkpoint_dir(profile: str, seed: int | None = None) -> Path:
    """`outputs/<profile>/checkpoints/phase1`, created on demand: where notebook 02 (and
    `python -m geolib train`) keep Phase 1; `phase1-seed<N>` for notebook 02's extra seeds."""
    path = profile_dir(profile, "checkpoints") / _phase1_folder(seed)
    path.mkdir(exist_ok=True)
    return path


def phase1_checkpoint(profile: str, seed: int | None = None) -> Path | None:
    """Notebook 02's Phase 1 checkpoint: `best`, else `last`, else None when 02 has not run.

    The one rule for every reader (notebooks 03-05, the explorer): a checkpoint counts only when both
    its tensors and its JSON exist, since the JSON is written last and a half-written pair must not
    be loaded.
    """
    folder = outputs_root() / profile / "checkpoints" / _phase1_folder(seed)
    for name in ("best", "last"):
        if (folder / f"{name}.json").is_file() and (folder / f"{name}.safetensors").is_file():
            return folder / name
    return None


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without a window in which it is changed (Linux), else under a lock.

    `os.umask` can only be read by setting it; another thread creating a file in between would get
    the temporary value, so the /proc read comes first.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    `mkstemp` creates the file 0600; before the rename it gets the mode an ordinary `open` would
    (0666 less the umask), so a report or checkpoint stays readable by the rest of a team.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, **kwargs: Any) -> Path:
    kwargs.setdefault("indent", 2)
    kwargs.setdefault("sort_keys", True)
    return atomic_write_text(path, json.dumps(obj, **kwargs) + "\n")




def build_once(out: str | os.PathLike, stamp: str, build: Callable[[Path], None], what: str) -> bool:
    """Build the folder `out` once per `stamp` (its `.complete` file): `build(tmp)` fills a temporary
    sibling, which is stamped and renamed into place, so a killed run never leaves a half folder that
    looks finished. Returns False when `out` already holds this stamp, or another process finished the
    same build first; a non-empty `out` without a stamp is refused (it is not `what`)."""
    import shutil

    out = Path(out)
    marker = out / ".complete"

    def done() -> bool:
        return marker.is_file() and marker.read_text(encoding="utf-8").strip() == stamp

    if done():
        return False
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise FileExistsError(f"{out} exists and is not {what}; choose another out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f".{out.name}.building-*"):  # left by a run that was killed
        if not _alive(old.name.rsplit("-", 1)[-1]):
            shutil.rmtree(old, ignore_errors=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        (tmp / ".complete").write_text(stamp + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if done():
            return False
        raise
    return True


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
