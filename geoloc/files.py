"""Files that are never half-written: one atomic writer for every stage, JSON read back with errors that name the
file, and folders that geoloc deletes only when it made them itself.

Hand-written (a few lines of careful machinery); tests in `tests/test_files.py`, driven in the lesson of notebook
`09_machinery` and used by every stage.

- `atomic_write(path, data)` writes bytes or text through a temporary file in the same folder, fsyncs it and
  renames it into place: a crash or a full disk leaves the old file (or none), never half of one. The new file gets
  the permissions a plain `open(path, 'w')` would give (the umask's), not `mkstemp`'s 0600, so that a team sharing a
  folder can read it.
- `atomic_path(path)` is the same for writers that want a file name (parquet, GeoJSON drivers, `torch.save`).
- `read_json(path)` raises `FileError` naming the file and the fix when it holds no valid JSON.
- `read_config(path)`: the settings of a YAML or TOML config file (a pipeline's, a study's) as a dict, with errors
  that name the file.
- `mark_folder` / `owned_by` / `remove_owned`: a folder that geoloc made carries a marker file; only such a folder
  is ever removed, and only by the kind of run that made it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ['FileError', 'atomic_write', 'atomic_path', 'write_json', 'read_json', 'read_config', 'MARKER', 'mark_folder',
           'owned_by', 'remove_owned', 'disk_full']

MARKER = '.geoloc-made'  # the marker file inside a folder geoloc made: JSON {"by": <kind of run>}


class FileError(OSError):
    "A file geoloc reads or writes is unusable (corrupt, or the disk is full); the message names the file and the fix."
    def __str__(self): return str(self.strerror) if self.strerror else super().__str__()  # no "[Errno 28]" prefix


def _umask() -> int:
    "The process's umask (read without changing it for other threads for longer than two calls)."
    m = os.umask(0o022); os.umask(m)
    return m


def disk_full(e: BaseException) -> bool:
    "Whether `e` is the operating system saying that the disk (or the user's quota) is full."
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _full_error(path: Path, e: OSError) -> FileError:
    err = FileError(e.errno, f"the disk holding {path.parent} is full ({e.strerror}); {path.name} was not changed. "
                             f"Fix: free space there (or use another folder), then run the same command again: "
                             f"it resumes.")
    err.filename = str(path)
    return err


@contextlib.contextmanager
def atomic_path(path, *, mode: int = None, fsync: bool = True):
    "Yield a temporary path beside `path`; when the block ends without an error, it replaces `path` atomically."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix=f'.part{path.suffix}')  # GDAL drivers read it
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, 'rb+') as f: os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
        os.replace(tmp, path)
    except OSError as e:
        if disk_full(e): raise _full_error(path, e) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError): os.remove(tmp)


def atomic_write(path, # the file to (over)write
                 data, # bytes, or text (written as UTF-8)
                 *, fsync: bool = True) -> Path:
    "Write `data` to `path` through a temporary file and a rename: never half a file, normal permissions."
    if isinstance(data, str): data = data.encode('utf-8')
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            if fsync: os.fsync(f.fileno())
    return Path(path)


def write_json(path, obj, *, indent: int = 1) -> Path:
    "Write `obj` as JSON (UTF-8, unicode kept) atomically."
    return atomic_write(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + '\n')


def read_json(path, *, what: str = 'file', fix: str = None):
    "The JSON in `path`; `FileError` naming the file (and `fix`) when it is empty or not JSON."
    path = Path(path)
    text = path.read_bytes()
    try: return json.loads(text)
    except ValueError as e:
        state = 'is empty' if not text.strip() else f'is not valid JSON ({e})'
        raise FileError(errno.EINVAL, f"{path} ({what}) {state}. Fix: "
                        + (fix or f"delete {path.name} and run the same command again; it is written anew.")) from None


def read_config(path, allowed=None) -> dict:
    """The settings in a .yaml/.yml or .toml file; a clear ValueError (naming the file) when it is missing or malformed,
    or holds a top-level setting not in `allowed` (when given)."""
    p = Path(path).expanduser()
    if not p.is_file(): raise FileNotFoundError(f"config file {p} not found. Fix: pass a .yaml or .toml file (see "
                                                "configs/ and `geoloc pipeline --help` or `geoloc study --help`).")
    text = p.read_text()
    if p.suffix.lower() == '.toml':
        try: import tomllib  # Python 3.11+
        except ModuleNotFoundError: import tomli as tomllib  # Python 3.10: the same parser, as a package
        try: d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e: raise ValueError(f"{p} is not valid TOML: {e}") from None
    elif p.suffix.lower() in ('.yaml', '.yml'):
        import yaml
        try: d = yaml.safe_load(text) or {}
        except yaml.YAMLError as e: raise ValueError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    else: raise ValueError(f"{p}: a config is a .yaml, .yml or .toml file.")
    if not isinstance(d, dict): raise ValueError(f"{p} must hold a mapping of settings (name: ..., city: ...).")
    bad = sorted(set(d) - set(allowed)) if allowed is not None else []
    if bad: raise ValueError(f"{p}: unknown setting(s) {bad}. Fix: use some of {sorted(allowed)}.")
    return d


def mark_folder(folder, by: str) -> Path:
    "Create `folder` (it must be new or empty) and mark it as made by a geoloc run of kind `by`."
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and owned_by(folder) != by:
        raise FileError(errno.EEXIST, f"{folder} already holds files that geoloc did not put there. Fix: choose a new "
                                      f"or empty folder.")
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder/MARKER).exists(): write_json(folder/MARKER, {'by': by})
    return folder


def owned_by(folder) -> str | None:
    "The kind of run that made `folder` (its marker), or None when geoloc did not make it."
    f = Path(folder)/MARKER
    if not f.is_file(): return None
    try: return json.loads(f.read_text()).get('by')
    except (ValueError, OSError, AttributeError): return None


def remove_owned(folder, by: str) -> bool:
    "Delete `folder` only if a run of kind `by` made it (its marker says so); refuse anything else. False if absent."
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink(): return False
    resolved = folder.resolve()
    if folder.is_symlink() or not folder.is_dir():
        raise FileError(errno.ENOTDIR, f"{folder} is not a folder that geoloc made; it was left alone. Fix: pass the "
                                       f"folder of an earlier run, or a new one.")
    if resolved in (Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)) or owned_by(folder) != by:
        raise FileError(errno.EPERM, f"{folder} was not made by geoloc {by} (it has no {MARKER} marker of a {by} run); "
                                     f"nothing was deleted. Fix: pass the folder of an earlier {by} run, or delete it "
                                     f"yourself.")
    shutil.rmtree(folder)
    return True
