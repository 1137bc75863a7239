"""Plain resumable HTTP for files that are not on the Hub (face-alignment's landmark weights).

A file is streamed to a temporary name beside its target (:func:`xportrait_cli.files.temp_path_for`)
under a per-file lock, resumed with a ``Range`` request from a partial file an earlier run left
(:func:`xportrait_cli.files.partial_files`), and renamed into place once its size matches the
server's. No checksum is published for these files.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock

from xportrait_cli.errors import DownloadError
from xportrait_cli.files import partial_files, temp_path_for
from xportrait_cli.weights.registry import ProgressCallback

_CHUNK = 1 << 20


def http_size(url: str) -> int | None:
    """``Content-Length`` of a HEAD request, ``None`` when the server gives none.

    Raises:
        OSError, ValueError: the request failed (callers treat the size as unknown).
    """
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=30) as response:
        value = response.headers.get("Content-Length")
    return int(value) if value is not None else None


def fetch_url(
    url: str, target: Path, progress: ProgressCallback | None = None, *, label: str = "", attempts: int = 3
) -> int:
    """Stream ``url`` to ``target`` atomically, resuming a partial file; returns the size in bytes.

    A target already present is not fetched again. Short reads are resumed up to ``attempts`` times.

    Raises:
        DownloadError: HTTP errors, unreachable host, or a size that does not match the server's after
            ``attempts`` tries (the partial file is kept, so the next run resumes).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    label = label or f"download {target.name}"
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target.stat().st_size
        partials = partial_files(target)  # largest first: resume it, drop the others
        for extra in partials[1:]:
            extra.unlink(missing_ok=True)
        tmp = partials[0] if partials else temp_path_for(target)
        error: Exception | None = None
        for _ in range(attempts):
            try:
                total = _fetch_into(url, tmp, progress, label)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise DownloadError(
                        f"{url} not found (HTTP 404)", hint="check --landmark-url / XPORTRAIT_LANDMARK_URL"
                    ) from None
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}", hint="try again later") from None
            except urllib.error.URLError as exc:
                raise DownloadError(
                    f"cannot reach {url}: {exc.reason}",
                    hint="check your connection, or use a mirror with --landmark-url",
                ) from None
            except (OSError, ValueError, http.client.HTTPException) as exc:  # short read: resume
                error = exc
                continue
            size = tmp.stat().st_size
            if total is not None and size != total:
                error = OSError(f"got {size} of {total} bytes")
                continue
            os.replace(tmp, target)
            return size
        raise DownloadError(
            f"download of {url} did not complete ({error}); the partial file {tmp} is kept",
            hint="run the command again to resume",
        )


def _fetch_into(url: str, tmp: Path, progress: ProgressCallback | None, label: str) -> int | None:
    """One GET of ``url`` appended to ``tmp`` (Range from its size). Returns the full size if known."""
    have = tmp.stat().st_size if tmp.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial is not a prefix we can extend: start again
            tmp.unlink()
            return _fetch_into(url, tmp, progress, label)
        raise
    with response:
        if response.status == 206:
            match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
            total = int(match.group(1)) if match else None
            mode = "ab"
        else:  # 200: the server ignored the Range header, start over
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            mode = "wb"
        done = have
        with open(tmp, mode) as f:
            while block := response.read(_CHUNK):
                f.write(block)
                done += len(block)
                if progress:
                    progress(label, done, total)
    return total
