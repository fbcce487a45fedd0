"""Many focal stacks with the same settings: the work of ``napari-fusion batch``
(its command line is :mod:`napari_fusion.cli.batch`).

Each INPUT is a folder of slices, a multi-page TIFF (``(Z, Y, X)`` or
``(Z, Y, X, 3)``), a multi-position TIFF (``(P, Z, Y, X)``: one stack per
position), or a folder whose sub-folders are stacks. Inside a folder,
single-page images together form one stack, while every multi-page (or
multi-position) TIFF is a stack (or stacks) of its own.

For every stack, OUTDIR receives ``<name>_fused.tif``, ``<name>_labels.tif``
(0-based slice index), ``<name>_height.tif`` (float32, z units) and
``<name>_record.json`` with every parameter used (method parameters with
defaults filled, alignment transforms, versions, input paths, the output name
and the source). Output names are unique: stacks whose names collide (e.g.
``day1/stackA`` and ``day2/stackA``) get parent folder names added until they
differ, and, when the cleaned-up names still collide (``odd name`` and
``odd_name``), a short hash of the source path.

Data safety:

* OUTDIR may not be, lie inside or contain an input (refused before any work);
  input files are only read.
* Each stack's images are written under hidden temporary names and renamed
  into place together; the record is written last (atomically). A run killed
  at any moment leaves no partial file at a final name.
* The record and the TIFF metadata carry a *fingerprint* of the parameters and
  the inputs (path, size, modification time). A rerun skips stacks already done
  with the same fingerprint (``--no-resume`` redoes them) and refuses to replace
  outputs from other parameters, or files no record of ours describes, unless
  ``--overwrite`` is given.
* A summary of done, skipped and failed stacks is printed and written to
  ``OUTDIR/batch_summary.json``; the exit status is 1 when any stack failed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FusionInputError, FusionOutputError
from ..io import list_image_files, read_image, read_stack, write_image

#: Version of the fingerprint layout; bump when its content changes meaning.
FINGERPRINT_VERSION = 1
SUMMARY_NAME = "batch_summary.json"
_ROLES = ("fused", "labels", "height")


@dataclass
class StackSource:
    """One stack to process: a display name, where it comes from and how to load it.

    ``key`` identifies the source (real path of the folder or file, plus
    ``#position=i`` for multi-position TIFFs); ``files`` are the files read
    (their identity goes into the fingerprint); ``stem`` is the unique output
    name chosen by :func:`discover` (``None``: derived from ``name``).
    """

    name: str
    inputs: list[str]
    load: Callable[[], list[np.ndarray]]
    key: str = ""
    files: list[str] = field(default_factory=list)
    stem: str | None = None
    parts: tuple[str, ...] = ()

    @property
    def output_name(self) -> str:
        return self.stem or _safe(self.name)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "stack"


# --------------------------------------------------------------------------- discovery


def _tiff_info(path: Path) -> tuple[tuple[int, ...], str] | None:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            s = tf.series[0]
            return tuple(s.shape), str(getattr(s, "axes", ""))
    except Exception:  # noqa: BLE001 - not a readable TIFF: read (and reported) as an image later
        return None


def _tiff_shape(path: Path) -> tuple[int, ...] | None:
    info = _tiff_info(path)
    return None if info is None else info[0]


def _tiff_kind(path: Path) -> str:
    """``"positions"`` (P, Z, Y, X), ``"stack"`` (multi-page grey or RGB) or ``"image"`` (one page / unknown)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return "image"
    info = _tiff_info(path)
    if info is None:
        return "image"  # unreadable: reported when the stack is read
    shape, axes = info
    rgb = axes.endswith("S") if axes else (len(shape) >= 3 and shape[-1] in (3, 4))
    spatial = len(shape) - (1 if rgb else 0)
    if spatial == 3:
        return "stack"
    if spatial == 4 and not rgb:
        return "positions"
    return "image"


def _abs(p: Path) -> Path:
    return Path(os.path.abspath(p))


def _real(p: Path | str) -> str:
    return os.path.realpath(os.fspath(p))


def _file_sources(p: Path, kind: str | None = None) -> list[StackSource]:
    """Stacks held by one file: one, or one per position of a (P, Z, Y, X) TIFF."""
    kind = kind or _tiff_kind(p)
    parent = _abs(p).parent.parts
    if kind == "positions":
        shape = _tiff_shape(p) or (0,)
        return [
            StackSource(
                f"{p.stem}_p{i:03d}",
                [f"{p}#position={i}"],
                lambda p=p, i=i: list(read_image(p)[i]),
                key=f"{_real(p)}#position={i}",
                files=[str(p)],
                parts=parent + (f"{p.stem}_p{i:03d}",),
            )
            for i in range(shape[0])
        ]
    return [
        StackSource(
            p.stem or str(p),
            [str(p)],
            lambda p=p: read_stack(p),
            key=_real(p),
            files=[str(p)],
            parts=parent + (p.stem or str(p),),
        )
    ]


def _folder_sources(d: Path) -> tuple[list[StackSource], bool]:
    """Stacks of a folder's own files; second value: whether it holds single-page slices."""
    out: list[StackSource] = []
    slices: list[Path] = []
    for f in list_image_files(d):
        kind = _tiff_kind(f)
        if kind == "image":
            slices.append(f)
        else:
            out.extend(_file_sources(f, kind))
    if slices:
        out.insert(
            0,
            StackSource(
                d.name,
                [str(f) for f in slices],
                lambda s=tuple(slices): read_stack(list(s)),
                key=_real(d),
                files=[str(f) for f in slices],
                parts=_abs(d).parts,
            ),
        )
    return out, bool(slices)


def discover(inputs: list[Path]) -> list[StackSource]:
    """Expand the command's INPUT arguments into stacks with unique output names (nothing is read yet)."""
    out: list[StackSource] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            own, has_slices = _folder_sources(p)
            subs: list[StackSource] = []
            if not has_slices:
                for d in sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")):
                    subs.extend(_folder_sources(d)[0])
            found = own + subs
            if found:
                out.extend(found)
            else:
                out.append(
                    StackSource(
                        p.name, [str(p)], lambda p=p: _fail(f"no image files in {p}"), key=_real(p), parts=_abs(p).parts
                    )
                )
        elif p.suffix.lower() in (".tif", ".tiff") and p.exists():
            out.extend(_file_sources(p))
        else:
            out.append(
                StackSource(
                    p.stem or str(p),
                    [str(p)],
                    lambda p=p: read_stack(p),
                    key=_real(p),
                    files=[str(p)],
                    parts=_abs(p).parent.parts + (p.stem or str(p),),
                )
            )
    unique: list[StackSource] = []
    seen: set[str] = set()
    for s in out:  # the same stack named twice (a folder and its parent, or twice on the command line)
        if s.key and s.key in seen:
            continue
        seen.add(s.key)
        unique.append(s)
    assign_output_names(unique)
    return unique


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def assign_output_names(sources: list[StackSource]) -> None:
    """Give every source a unique, stable output stem (``stem``) and display name.

    A stack keeps its own name when it is unique; colliding names get parent
    folder names added (``day1_stackA``, ``day2_stackA``) until they differ;
    names that still collide once cleaned up (``odd name`` / ``odd_name``, or
    names differing only in case) get a short hash of the source path. Names
    are compared case-insensitively (case-insensitive file systems).
    """
    parts = [s.parts or (s.name,) for s in sources]
    depth = [1] * len(sources)

    def name_at(i: int) -> str:
        return _safe("/".join(parts[i][-depth[i] :]))

    def prefix(i: int) -> tuple[str, ...]:  # the folders above the name, as they would appear in it
        return tuple(_safe(c).casefold() for c in parts[i][: len(parts[i]) - depth[i]])

    for _ in range(max((len(p) for p in parts), default=1) + 1):
        groups: dict[str, list[int]] = {}
        for i in range(len(sources)):
            groups.setdefault(name_at(i).casefold(), []).append(i)
        changed = False
        for members in groups.values():
            if len(members) < 2 or len({prefix(i) for i in members}) < 2:
                continue  # unique, or parent folders cannot tell them apart: a hash will
            for i in members:
                if depth[i] < len(parts[i]):
                    depth[i] += 1
                    changed = True
        if not changed:
            break
    names = [name_at(i) for i in range(len(sources))]
    for n in (8, 16, 64):
        groups = {}
        for i, nm in enumerate(names):
            groups.setdefault(nm.casefold(), []).append(i)
        clashes = [m for m in groups.values() if len(m) > 1]
        if not clashes:
            break
        for members in clashes:
            for i in members:
                names[i] = f"{name_at(i)}-{_short_hash(sources[i].key or '/'.join(parts[i]), n)}"
    for i, s in enumerate(sources):
        s.stem = names[i]
        if s.parts:
            s.name = "/".join(parts[i][-depth[i] :])


def _fail(msg: str):
    raise FusionInputError(msg)


# --------------------------------------------------------------------------- fingerprint and state


def _file_identity(path: str) -> dict[str, Any]:
    real = _real(path)
    try:
        st = os.stat(real)
    except OSError:
        return {"path": real, "missing": True}
    return {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stack_fingerprint(
    source: StackSource,
    *,
    method: str,
    params: dict[str, Any],
    align: str | None,
    crop: bool,
    z_step: float | None,
    refine: str,
    reference_channel: int | None,
    slab: int | None,
) -> dict[str, Any]:
    """Everything that decides a stack's outputs, with its SHA-256 ``digest``.

    ``params`` are resolved (defaults filled) so that ``-p window=7`` and the
    default 7 give the same fingerprint.
    """
    from ..registry import get_method

    resolved = get_method(method).resolve_params(dict(params))
    body = {
        "version": FINGERPRINT_VERSION,
        "source": source.key or source.name,
        "method": method,
        "params": resolved,
        "align": align,
        "crop": bool(crop),
        "z_step": z_step,
        "refine": refine,
        "reference_channel": reference_channel,
        "slab": slab,
        "inputs": [_file_identity(f) for f in source.files],
    }
    canon = json.dumps(body, sort_keys=True, default=str, separators=(",", ":"))
    body["digest"] = hashlib.sha256(canon.encode()).hexdigest()
    return body


def output_paths(outdir: Path, stem: str) -> dict[str, Path]:
    return {
        "fused": outdir / f"{stem}_fused.tif",
        "labels": outdir / f"{stem}_labels.tif",
        "height": outdir / f"{stem}_height.tif",
        "record": outdir / f"{stem}_record.json",
    }


def _read_record(path: Path) -> dict | None | bool:
    """The record at ``path``: a dict when it is ours, ``None`` when absent, ``False`` when foreign/damaged."""
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if isinstance(rec, dict) and isinstance(rec.get("fingerprint"), dict) and "digest" in rec["fingerprint"]:
        return rec
    return False


def _tiff_digest(path: Path) -> str | None:
    """The fingerprint digest in a TIFF written by this command, else ``None``."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            desc = tf.pages[0].description
        meta = json.loads(desc)
        digest = meta.get("fingerprint") if isinstance(meta, dict) else None
        return digest if isinstance(digest, str) else None
    except Exception:  # noqa: BLE001 - unreadable or not ours: no fingerprint
        return None


def stack_state(outdir: Path, stem: str, fingerprint: dict[str, Any]) -> tuple[str, str]:
    """What is at a stack's output names: ``(state, detail)``.

    States: ``"new"`` (nothing there), ``"done"`` (finished with this
    fingerprint), ``"ours"`` (ours with this fingerprint but unfinished, e.g. a
    run killed before the record), ``"other"`` (ours from other parameters or
    inputs), ``"foreign"`` (files no record of ours describes).
    """
    paths = output_paths(outdir, stem)
    digest = fingerprint["digest"]
    rec = _read_record(paths["record"])
    existing = [k for k in _ROLES if paths[k].exists()]
    if rec is False:
        return "foreign", f"{paths['record'].name} is not a batch record of this command"
    if rec is not None:
        if rec["fingerprint"].get("digest") != digest:
            old = rec["fingerprint"]
            changed = sorted(
                k for k in set(old) | set(fingerprint) if k != "digest" and old.get(k) != fingerprint.get(k)
            )
            return "other", ("changed: " + ", ".join(changed)) if changed else ""
        files = rec.get("files") or {}
        for k in existing:  # a file at one of our names that the record does not list
            if paths[k].name not in files.values() and _tiff_digest(paths[k]) != digest:
                return "foreign", f"{paths[k].name} exists and no batch record describes it"
        listed = [outdir / n for k, n in files.items() if k != "record"]
        if rec.get("status") == "done" and listed and all(p.exists() for p in listed):
            return "done", "already done with the same parameters"
        return "ours", "unfinished"
    if not existing:
        return "new", ""
    digests = {k: _tiff_digest(paths[k]) for k in existing}
    if all(d == digest for d in digests.values()):
        return "ours", "interrupted before its record was written"
    if any(d is None for d in digests.values()):
        names = ", ".join(paths[k].name for k, d in digests.items() if d is None)
        return "foreign", f"{names} exist(s) and no batch record describes it"
    return "other", ""


def _refusal(state: str, detail: str) -> str:
    if state == "other":
        return "outputs exist from other parameters; use --overwrite" + (f" ({detail})" if detail else "")
    return f"{detail}; use --overwrite"


# --------------------------------------------------------------------------- one stack


def process(
    source: StackSource,
    outdir: Path,
    *,
    method: str,
    params: dict[str, Any],
    align: str | None,
    z_step: float | None,
    refine: str,
    reference_channel: int | None,
    slab: int | None,
    crop: bool,
    device: str,
    overwrite: bool = False,
    fingerprint: dict[str, Any] | None = None,
) -> list[Path]:
    """Fuse one stack and write its outputs and record; returns the written paths.

    Outputs from the same parameters (same fingerprint) are replaced; outputs
    from other parameters, or files at the output names that no record of ours
    describes, raise :class:`~napari_fusion.FusionOutputError` unless
    ``overwrite``. The images are written together (temporaries renamed at the
    end), then the record.
    """
    from .pipeline import fuse_focal_stack

    outdir = Path(outdir)
    stem = source.output_name
    if fingerprint is None:
        fingerprint = stack_fingerprint(
            source,
            method=method,
            params=params,
            align=align,
            crop=crop,
            z_step=z_step,
            refine=refine,
            reference_channel=reference_channel,
            slab=slab,
        )

    def check() -> None:
        state, detail = stack_state(outdir, stem, fingerprint)
        if state in ("other", "foreign") and not overwrite:
            raise FusionOutputError(_refusal(state, detail))

    check()
    z_note = "--z-step"
    if z_step is None:
        z_step, z_note = metadata_z_step(source)
        print(f"note: {source.name}: {z_note}", file=sys.stderr)
    images = source.load()
    if len(images) < 2:
        raise FusionInputError(f"{source.name}: a focal stack needs at least 2 slices, got {len(images)}")
    res = fuse_focal_stack(
        images,
        method=method,
        params=params,
        align=align,
        crop=crop,
        z_step=z_step,
        refine=refine,
        reference_channel=reference_channel,
        slab=slab,
        device=device,
    )
    del images
    paths = output_paths(outdir, stem)
    written = _write_stack_images(res, paths, source, stem, fingerprint, check)
    _write_record(res, paths, written, source, stem, fingerprint, z_step, z_note)
    return list(written) + [paths["record"]]


def metadata_z_step(source: StackSource) -> tuple[float | None, str]:
    """The z step a stack's file states in its metadata (OME-TIFF, ImageJ TIFF), and a note saying so.

    Never a guess: slices in separate files, and files without calibration,
    give ``None`` (the height map stays in slice units) and a note that the
    calibration is missing.
    """
    from ..io import read_calibration

    try:
        cal = read_calibration([Path(f) for f in source.files]) if source.files else None
    except FusionInputError:
        cal = None  # unreadable metadata: the stack's reader reports the file
    if cal is None or cal.z_step is None:
        return None, "calibration missing: no z step in the metadata, height map in slice units (pass --z-step)"
    return cal.z_step, f"z step {cal.z_step:g} {cal.unit_text} from metadata ({cal.source})"


def _write_stack_images(
    res, paths: dict[str, Path], source: StackSource, stem: str, fingerprint: dict, check: Callable[[], None]
) -> list[Path]:
    """Fused, labels and height of one stack, renamed into place together; returns what was written."""
    from ..output_safety import AtomicGroup

    meta = {
        "method": res.method,
        "params": res.params,
        "record": paths["record"].name,
        "output_name": stem,
        "source": source.key or source.name,
        "fingerprint": fingerprint["digest"],
    }
    arrays = {
        "fused": res.fused,
        "labels": res.labels,
        "height": None if res.height is None else res.height.astype(np.float32),
    }
    paths["record"].parent.mkdir(parents=True, exist_ok=True)
    with AtomicGroup() as group:
        for role, arr in arrays.items():
            if arr is not None:
                write_image(group.temp_for(paths[role]), arr, metadata=meta)
        check()  # nothing changed at the final names while we worked
        if paths["record"].exists():  # never let an old record describe files being replaced
            paths["record"].unlink()
        written = group.commit()
    for role in _ROLES:  # an output of ours from an earlier run that this method no longer makes
        if arrays[role] is None and paths[role].exists():
            paths[role].unlink()
    return written


def _write_record(
    res,
    paths: dict[str, Path],
    written: list[Path],
    source: StackSource,
    stem: str,
    fingerprint: dict,
    z_step: float | None,
    z_source: str = "--z-step",
) -> None:
    """The stack's JSON record, written last and atomically: its presence means "done"."""
    from ..output_safety import atomic_file

    record = res.record()
    record.update(
        {
            "status": "done",
            "stack": source.name,
            "output_name": stem,
            "source": source.key or source.name,
            "inputs": source.inputs,
            "z_step": z_step,
            "z_step_source": z_source,
            "fingerprint": fingerprint,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "files": {k: p.name for k, p in paths.items() if p in written or k == "record"},
            "command": " ".join(sys.argv) if sys.argv else "",
        }
    )
    with atomic_file(paths["record"]) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str))


# --------------------------------------------------------------------------- output folder


def remove_dead_partials(outdir: Path) -> None:
    """Delete hidden temporaries left in ``outdir`` by killed runs (never files of live processes)."""
    from ..output_safety import _PARTIAL_RE, _pid_alive

    if not outdir.is_dir():
        return
    for entry in outdir.iterdir():
        m = _PARTIAL_RE.match(entry.name)
        if m and entry.is_file() and not _pid_alive(int(m.group("pid"))):
            with contextlib.suppress(OSError):
                entry.unlink()


def write_summary(outdir: Path, summary: dict[str, Any]) -> None:
    """Write ``OUTDIR/batch_summary.json`` atomically."""
    from ..output_safety import atomic_file

    with atomic_file(outdir / SUMMARY_NAME) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))


__all__ = [
    "SUMMARY_NAME",
    "StackSource",
    "assign_output_names",
    "discover",
    "output_paths",
    "process",
    "remove_dead_partials",
    "stack_fingerprint",
    "stack_state",
    "write_summary",
]
