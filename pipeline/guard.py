"""What keeps a phase directory one build: its recorded settings and its lock.

A rerun into the same ``{output}/{phase}`` resumes: datatrove skips every task that
left a completion under ``_logs``. That is only right when the rerun would write what
the first run wrote, so the first run records its settings in ``build.json`` and a
rerun with other settings is refused, naming each change, unless ``--overwrite``
empties the directory first (old shards and completions would otherwise mix with the
new ones).

Two builds writing one phase directory at once would corrupt it, so a build holds
``build.lock`` while it runs (a :class:`mixtures.files.FileLock`: an exclusive
``flock`` naming the holder's pid and host; a dead build's lock is taken over).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mixtures.files import FileLock, LockHeld, write_atomic

SETTINGS_FORMAT = "mmbert-data/build"
SETTINGS_VERSION = 1
SETTINGS_NAME = "build.json"
LOCK_NAME = "build.lock"
LISTED = 8  # a changed list is shown as what was added and removed, this many items of each


class BuildConflict(ValueError):
    """A build that must not go ahead: another one holds the output, or it was made with other settings."""


class BuildLock(FileLock):
    """An exclusive lock on one phase directory for as long as the ``with`` block runs.

    ``taken_over`` is the record of a build that died holding the lock, when there was one.
    """

    def __init__(self, phase_dir: Path):
        super().__init__(phase_dir / LOCK_NAME)

    def __enter__(self) -> BuildLock:
        try:
            super().__enter__()
        except LockHeld as held:
            raise BuildConflict(
                f"{self.path.parent} is being written by another build ({held}); "
                "wait for it to finish or stop it, then run this again"
            ) from None
        except OSError as err:
            raise BuildConflict(
                f"cannot lock {self.path}: {err.strerror}; write the build to a filesystem that "
                "supports flock (a local disk, or the cluster's flock-enabled scratch)"
            ) from err
        return self


def check_settings(
    phase_dir: Path, settings: dict[str, Any], labels: dict[str, str], overwrite: bool
) -> None:
    """Record ``settings`` in ``phase_dir``, or refuse a rerun made with other ones.

    ``labels`` says how a hashed setting is known to people (the tokenizer's name
    beside its sha256); it is recorded too but never compared. With ``overwrite`` the
    phase directory is emptied (all but the lock) and the new settings recorded.
    """
    path = phase_dir / SETTINGS_NAME
    if overwrite:
        _empty(phase_dir)
    elif path.exists():
        recorded = _read(path)
        changes = [
            _change(key, recorded["settings"].get(key), value, recorded.get("labels", {}), labels)
            for key, value in settings.items()
            if recorded["settings"].get(key) != value
        ]
        if changes:
            raise BuildConflict(
                f"{phase_dir} was built with other settings ({'; '.join(changes)}); rerun with the "
                f"settings in {path} to resume it, or pass --overwrite to rebuild it from scratch"
            )
        return
    elif any(entry.name != LOCK_NAME for entry in phase_dir.iterdir()):
        raise BuildConflict(
            f"{phase_dir} holds files but no {SETTINGS_NAME}, so its settings are unknown; pass --overwrite "
            "to rebuild it from scratch, or choose another --output"
        )
    record = {"format": SETTINGS_FORMAT, "version": SETTINGS_VERSION, "settings": settings, "labels": labels}
    write_atomic(path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BuildConflict(
            f"{path}: unreadable build settings ({err}); pass --overwrite to rebuild"
        ) from err
    if not isinstance(record, dict) or record.get("format") != SETTINGS_FORMAT:
        raise BuildConflict(f"{path}: not an mmbert-data build record; pass --overwrite to rebuild")
    if record.get("version") != SETTINGS_VERSION or not isinstance(record.get("settings"), dict):
        raise BuildConflict(
            f"{path}: build record version {record.get('version')!r}, this version of mmbert-data writes "
            f"{SETTINGS_VERSION}; pass --overwrite to rebuild"
        )
    return record


def _change(key: str, old: Any, new: Any, old_labels: dict[str, str], new_labels: dict[str, str]) -> str:
    """``key: old -> new``, lists as what was added and removed, hashes with their labels."""
    if isinstance(old, list) and isinstance(new, list):
        added = [item for item in new if item not in old]
        removed = [item for item in old if item not in new]
        parts = [_listed(added, "added"), _listed(removed, "removed")]
        return f"{key}: {', '.join(p for p in parts if p) or 'reordered'}"
    return f"{key}: {_shown(old, old_labels.get(key))} -> {_shown(new, new_labels.get(key))}"


def _listed(items: list, what: str) -> str:
    if not items:
        return ""
    shown = ", ".join(map(str, items[:LISTED]))
    return f"{len(items)} {what} ({shown}{', ...' if len(items) > LISTED else ''})"


def _shown(value: Any, label: str | None) -> str:
    if isinstance(value, str) and len(value) == 64 and label:
        return f"{label} (sha256 {value[:12]}...)"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _empty(phase_dir: Path) -> None:
    """Remove everything a build left in ``phase_dir`` except the lock this build holds."""
    for entry in phase_dir.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
