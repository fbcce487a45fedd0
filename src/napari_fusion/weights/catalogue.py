"""The catalogue of downloadable weights: describing, locating, verifying and fetching them.

Each set of weights is described once by a :class:`WeightsSpec` (registered
with :func:`register_weights`) and located, in this order, at

1. a path the user names (a method's ``weights`` parameter, or ``path=``);
2. the file named by the spec's environment variable
   (e.g. ``NAPARI_FUSION_VGG19_WEIGHTS``);
3. a file shipped inside the package (``package_file``), if the spec has one;
4. the torch hub cache, ``torch.hub.get_dir()/checkpoints/<filename>``
   (where torchvision itself would have put a download).

An explicitly named file (1 or 2) that is missing or fails the checksum is an
error: there is no silent fall-back to another copy. Every file is checked
against the spec's SHA-256 (torchvision's file names embed the first eight
hex digits of it, which is what torch hub checks too). When nothing is found,
:class:`napari_fusion.WeightsUnavailableError` says how to get the file; users
with internet can run ``napari-fusion weights fetch <name>``, which downloads
into the torch hub cache and verifies the result.

A method never falls back to random weights.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FusionInputError, WeightsUnavailableError


class WeightsChecksumError(WeightsUnavailableError):
    """A weights file exists but its SHA-256 does not match the expected value."""


@dataclass(frozen=True)
class WeightsSpec:
    """One downloadable (or shipped) set of weights.

    ``sha256`` is the full hex digest or a prefix of it of at least 8 digits
    (torchvision publishes only the 8-digit prefix in its file names).
    ``package_file`` is a path relative to the ``napari_fusion`` package for
    weights shipped with it.
    """

    name: str
    filename: str
    url: str
    sha256: str
    env_var: str
    description: str
    size_mb: float | None = None
    licence: str = ""
    methods: tuple[str, ...] = ()
    package_file: str | None = None

    def __post_init__(self):
        digest = self.sha256.lower()
        if len(digest) < 8 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("sha256 must be a hex digest or a prefix of at least 8 hex digits")


@dataclass(frozen=True)
class WeightsLocation:
    """Where a verified weights file was found and by which rule."""

    path: Path
    source: str  # "'weights' parameter", "environment variable NAME", "package", "torch hub cache"
    sha256: str


@dataclass(frozen=True)
class WeightsStatus:
    """Result of :func:`weights_status`: found or not, where, and why not."""

    name: str
    found: bool
    path: Path | None
    source: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "found": self.found,
            "path": None if self.path is None else str(self.path),
            "source": self.source,
            "message": self.message,
        }


_SPECS: dict[str, WeightsSpec] = {}


def register_weights(spec: WeightsSpec, *, replace: bool = False) -> WeightsSpec:
    """Add ``spec`` to the catalogue (``napari-fusion weights`` lists it)."""
    if spec.name in _SPECS and not replace and _SPECS[spec.name] != spec:
        raise ValueError(f"weights {spec.name!r} are already registered")
    _SPECS[spec.name] = spec
    return spec


def unregister_weights(name: str) -> None:
    """Remove a catalogue entry (for tests and plugins)."""
    _SPECS.pop(name, None)


def _ensure_catalogue() -> None:
    # Method modules register the weights they need when they are imported.
    from ..registry import ensure_methods_loaded

    ensure_methods_loaded()


def get_weights_spec(name: str | WeightsSpec) -> WeightsSpec:
    """The registered spec called ``name`` (a spec is returned as is)."""
    if isinstance(name, WeightsSpec):
        return name
    if name not in _SPECS:
        _ensure_catalogue()
    try:
        return _SPECS[name]
    except KeyError:
        known = ", ".join(sorted(_SPECS)) or "none"
        raise FusionInputError(f"unknown weights {name!r}; known weights: {known}") from None


def list_weights() -> list[WeightsSpec]:
    """Every registered weights spec, sorted by name."""
    _ensure_catalogue()
    return [_SPECS[k] for k in sorted(_SPECS)]


def hub_checkpoints_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints`` (honours ``$TORCH_HOME``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_path(spec: str | WeightsSpec) -> Path:
    """Where the torch hub cache keeps ``spec``'s file."""
    spec = get_weights_spec(spec)
    return hub_checkpoints_dir() / spec.filename


_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()


def sha256_of(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (remembered per path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    digest = h.hexdigest()
    with _DIGEST_LOCK:
        _DIGESTS[key] = digest
    return digest


def how_to_get(spec: str | WeightsSpec) -> str:
    """The instructions shown when ``spec``'s weights cannot be found."""
    spec = get_weights_spec(spec)
    size = f" (about {spec.size_mb:.0f} MB)" if spec.size_mb else ""
    lines = [
        f"To get the {spec.description} weights{size}, either",
        f"  - run `napari-fusion weights fetch {spec.name}` on a computer with internet access "
        f"(downloads {spec.url} into {hub_path(spec)}), or",
        f"  - download {spec.url} yourself and put it at {hub_path(spec)},",
        f"    or point the environment variable {spec.env_var} at it,",
        "    or give its path in the method's 'weights' parameter.",
    ]
    if spec.name == "vgg19":
        lines.append(
            "  - or convert a VGG19 you already have (Keras .h5 or MatConvNet imagenet-vgg-verydeep-19.mat): "
            "`napari-fusion weights convert vgg19 SOURCE -o vgg19-converted.pth`, then use that file as above."
        )
    if spec.licence:
        lines.append(f"Licence: {spec.licence}")
    return "\n".join(lines)


def verify_file(path: str | Path, spec: str | WeightsSpec) -> str:
    """Check ``path`` against ``spec``'s SHA-256; return the digest or raise.

    A file converted with :func:`napari_fusion.weights.convert.convert_vgg19` is accepted when
    its JSON sidecar names ``spec`` and records the file's own SHA-256.

    Raises :class:`WeightsChecksumError` on a mismatch (a truncated download,
    a different file), naming the expected and the actual digest.
    """
    spec = get_weights_spec(spec)
    digest = sha256_of(path)
    expected = spec.sha256.lower()
    if not digest.startswith(expected):
        from .convert import converted_record

        if converted_record(path, spec.name, digest) is not None:
            return digest  # converted here from another framework's file (see .convert)
        raise WeightsChecksumError(
            f"{path} is not the expected {spec.name} weights file: its SHA-256 is {digest}, "
            f"expected one starting with {expected}. The file may be incomplete or a different "
            f"model; delete it and get it again.\n" + how_to_get(spec)
        )
    return digest


def _candidates(spec: WeightsSpec, path: str | Path | None) -> list[tuple[str, Path, bool]]:
    """``(source, path, explicit)`` in search order."""
    out: list[tuple[str, Path, bool]] = []
    if path not in (None, ""):
        out.append(("'weights' parameter", Path(path).expanduser(), True))
        return out
    env = os.environ.get(spec.env_var, "").strip()
    if env:
        out.append((f"environment variable {spec.env_var}", Path(env).expanduser(), True))
        return out
    if spec.package_file:
        out.append(("package", Path(__file__).resolve().parent.parent / spec.package_file, False))
    out.append(("torch hub cache", hub_path(spec), False))
    return out


def locate_weights(spec: str | WeightsSpec, path: str | Path | None = None, *, verify: bool = True) -> WeightsLocation:
    """Find and verify ``spec``'s weights (see the module docstring for the order).

    Raises :class:`napari_fusion.WeightsUnavailableError` (or its subclass
    :class:`WeightsChecksumError`) with instructions when no valid file exists.
    """
    spec = get_weights_spec(spec)
    looked: list[str] = []
    for source, p, explicit in _candidates(spec, path):
        if p.is_file():
            digest = verify_file(p, spec) if verify else ""
            return WeightsLocation(p, source, digest)
        if explicit:
            what = "is a folder, not a file" if p.is_dir() else "does not exist"
            raise WeightsUnavailableError(
                f"the {spec.name} weights file named by the {source} ({p}) {what}.\n" + how_to_get(spec)
            )
        looked.append(f"{p} ({source})")
    raise WeightsUnavailableError(
        f"the {spec.description} weights were not found (looked at: "
        + "; ".join(looked)
        + f"; ${spec.env_var} is not set).\n"
        + how_to_get(spec)
    )


def weights_status(spec: str | WeightsSpec, path: str | Path | None = None) -> WeightsStatus:
    """Whether ``spec``'s weights are available, without raising."""
    spec = get_weights_spec(spec)
    try:
        loc = locate_weights(spec, path)
    except WeightsUnavailableError as exc:
        first = str(exc).split("\n", 1)[0]
        return WeightsStatus(spec.name, False, None, None, first)
    return WeightsStatus(
        spec.name, True, loc.path, loc.source, f"found in the {loc.source}: {loc.path} (SHA-256 verified)"
    )


def weights_for_method(method: str) -> list[WeightsSpec]:
    """The registered weights a method declares it uses (``WeightsSpec.methods``)."""
    return [s for s in list_weights() if method in s.methods]


def method_weights_status(method: str) -> list[WeightsStatus]:
    """Status of every weights file ``method`` needs (empty for methods that need none).

    Meant for front ends, e.g. a widget line "VGG19 weights: missing - run ...".
    """
    return [weights_status(s) for s in weights_for_method(method)]


def fetch_weights(
    spec: str | WeightsSpec,
    *,
    force: bool = False,
    progress: bool = True,
    dest_dir: str | Path | None = None,
) -> Path:
    """Download ``spec``'s weights into the torch hub cache (or ``dest_dir``) and verify them.

    An existing valid file is kept unless ``force``. The download goes to a
    temporary name and is moved into place only after the checksum matches.
    Raises :class:`napari_fusion.WeightsUnavailableError` when the download
    fails (no internet, server error) or the checksum does not match.
    """
    import torch

    spec = get_weights_spec(spec)
    folder = Path(dest_dir).expanduser() if dest_dir is not None else hub_checkpoints_dir()
    dest = folder / spec.filename
    if dest.is_file() and not force:
        try:
            verify_file(dest, spec)
            return dest
        except WeightsChecksumError:
            pass  # replace the bad copy
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsUnavailableError(f"cannot create {folder}: {exc}") from None
    partial = dest.with_name(dest.name + ".partial")
    try:
        torch.hub.download_url_to_file(spec.url, str(partial), hash_prefix=None, progress=progress)
    except KeyboardInterrupt:
        partial.unlink(missing_ok=True)
        raise
    except Exception as exc:  # URLError, HTTPError, timeouts, disk full...
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise WeightsUnavailableError(
            f"could not download the {spec.name} weights from {spec.url}: {reason}. "
            "This needs internet access; on a machine without it, copy the file over instead.\n" + how_to_get(spec)
        ) from None
    try:
        verify_file(partial, spec)
    except WeightsChecksumError:
        digest = sha256_of(partial)
        partial.unlink(missing_ok=True)
        raise WeightsChecksumError(
            f"the file downloaded from {spec.url} has SHA-256 {digest}, expected one starting "
            f"with {spec.sha256}; it was deleted. Try again later."
        ) from None
    os.replace(partial, dest)
    return dest


def load_state_dict(path: str | Path) -> dict:
    """Read a ``torch.save``-d state dict safely (``weights_only``) onto the CPU."""
    import torch

    p = str(path)
    try:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # legacy (pre-zip) files, such as torchvision's 2017 checkpoints, cannot be mmapped
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"cannot read weights file {p}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{p} does not hold a state dict")
    return state


#: torchvision's ImageNet VGG19 (``torchvision.models.vgg19(weights="IMAGENET1K_V1")``).
VGG19_IMAGENET = register_weights(
    WeightsSpec(
        name="vgg19",
        filename="vgg19-dcbb9e9d.pth",
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        sha256="dcbb9e9d",
        env_var="NAPARI_FUSION_VGG19_WEIGHTS",
        description="torchvision ImageNet VGG19",
        size_mb=548,
        licence="torchvision pretrained weights, trained on ImageNet; see torchvision's documentation for their terms",
        methods=("li2018_vgg19",),
    )
)


__all__ = [
    "WeightsSpec",
    "WeightsLocation",
    "WeightsStatus",
    "WeightsChecksumError",
    "VGG19_IMAGENET",
    "register_weights",
    "unregister_weights",
    "get_weights_spec",
    "list_weights",
    "hub_checkpoints_dir",
    "hub_path",
    "sha256_of",
    "how_to_get",
    "verify_file",
    "locate_weights",
    "weights_status",
    "weights_for_method",
    "method_weights_status",
    "fetch_weights",
    "load_state_dict",
]
