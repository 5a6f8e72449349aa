"""The released CDT weights on the Hugging Face Hub, fetched into the Hub's cache on first use.

Upstream publishes CDT-base and CDT-small as ``cdt_base.ckpt`` and ``cdt_small.ckpt`` in the Hub
repository ``yangnianzu/CDT``. :func:`fetch` finds one in the Hugging Face cache
(``HF_HUB_CACHE``, or ``HF_HOME``/hub) or downloads it there through ``huggingface_hub``
(``pip install 'cdt-fast[hub]'``) with its progress bar; ``HF_HUB_OFFLINE=1`` reads the cache
only. The client writes a download under a temporary name and renames it when complete, so a failed
download never leaves a file that looks whole. Whatever keeps the file out of reach (offline and
not cached, no such file, no ``huggingface_hub``, no network) raises one
:class:`ReleaseUnavailableError`: a single line naming the repository and the file, where to get it
by hand, and how to pass the downloaded file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["RELEASE_REPO", "RELEASED_PRESETS", "Release", "ReleaseUnavailableError", "fetch"]

RELEASE_REPO = "yangnianzu/CDT"
RELEASED_PRESETS = ("base", "small")


def _check_name(value, name: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{name} must be a non-empty string or None, got {value!r}")


@dataclass(frozen=True)
class Release:
    """Where one preset's released checkpoint lives: ``repo_id`` (default :data:`RELEASE_REPO`),
    ``filename`` (default ``cdt_{preset}.ckpt``, at the repository's root) and ``revision`` (a
    branch, tag or commit; None: the default branch)."""

    preset: str
    repo_id: Optional[str] = None
    filename: Optional[str] = None
    revision: Optional[str] = None

    def __post_init__(self):
        if self.preset not in RELEASED_PRESETS:
            raise ValueError(
                f"released weights exist for the presets {RELEASED_PRESETS}, got {self.preset!r}"
            )
        for name in ("repo_id", "filename", "revision"):
            if getattr(self, name) is not None:
                _check_name(getattr(self, name), name)
        if self.repo_id is None:
            object.__setattr__(self, "repo_id", RELEASE_REPO)
        if self.filename is None:
            object.__setattr__(self, "filename", f"cdt_{self.preset}.ckpt")

    @property
    def url(self) -> str:
        """The file's download address on the Hub."""
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{self.filename}"

    def __str__(self) -> str:
        revision = f", revision {self.revision}" if self.revision else ""
        return f"{self.filename} of the Hugging Face repository {self.repo_id}{revision}"


class ReleaseUnavailableError(FileNotFoundError):
    """A released checkpoint that cannot be had here; the message (one line) says why, where to
    download it by hand and how to pass the downloaded file."""

    def __init__(self, release: Release, reason: str):
        self.release, self.reason = release, reason
        super().__init__(
            f"cannot get the released CDT-{release.preset} weights, {release}: {reason}. "
            f"Download {release.url} by hand and pass the file as ckpt=PATH "
            "(on the command line: --ckpt PATH)"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def fetch(release: Release) -> Path:
    """The local path of ``release``'s file in the Hugging Face cache, downloaded first when it is
    not there (and the Hub may be reached). Raises :class:`ReleaseUnavailableError`."""
    if not isinstance(release, Release):
        raise TypeError(f"release must be a cdt_fast.hub.Release, got {type(release).__name__}")
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ReleaseUnavailableError(
            release, "huggingface_hub is not installed (pip install 'cdt-fast[hub]')"
        ) from None
    from . import __version__

    try:
        path = hf_hub_download(
            release.repo_id,
            release.filename,
            revision=release.revision,
            library_name="cdt_fast",
            library_version=__version__,
        )
    except LocalEntryNotFoundError:
        where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
        if constants.HF_HUB_OFFLINE:
            reason = f"HF_HUB_OFFLINE is set and the file is not in {where}"
        else:
            reason = f"the Hub could not be reached and the file is not in {where}"
        raise ReleaseUnavailableError(release, reason) from None
    except EntryNotFoundError:
        raise ReleaseUnavailableError(release, "the repository holds no such file") from None
    except GatedRepoError:
        raise ReleaseUnavailableError(
            release,
            "the repository is gated: accept its terms on the Hub and log in (hf auth login)",
        ) from None
    except RevisionNotFoundError:
        raise ReleaseUnavailableError(release, "the repository has no such revision") from None
    except RepositoryNotFoundError:
        raise ReleaseUnavailableError(
            release, "no such repository on the Hub (or it is private)"
        ) from None
    except (OSError, ValueError) as err:  # network and HTTP failures, bad repository names
        raise ReleaseUnavailableError(
            release, f"the download failed ({_first_line(err)})"
        ) from None
    return Path(path)
