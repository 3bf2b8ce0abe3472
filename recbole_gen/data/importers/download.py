"""``--download-images``: fetch item images into the image folder, the only network access of an import.

A bounded pool of threads fetches; a timeout, a dropped connection or an HTTP 5xx/408/429 is retried
with exponential backoff, anything else (404, a body that is not an image) fails at once. A body is
decoded with Pillow before it is written, atomically, so the folder never holds a partial or corrupt
download, whether the run fails or is interrupted; a rerun skips the files already there that decode
(it resumes), and refetches the ones that do not.
"""
import concurrent.futures
import http.client
import io
import posixpath
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from PIL import Image
from tqdm import tqdm

from recbole_gen.data.images import IMAGE_EXTENSIONS
from recbole_gen.files import atomic_write_bytes

USER_AGENT = "recbole-gen (dataset importer)"
RETRY_STATUS = (408, 429)  # and every 5xx


@dataclass
class DownloadReport:
    """What a download run did, for manifest.json and the console."""

    fetched: int = 0
    present: int = 0  # already in the folder and decodable: not fetched again
    failed: dict = field(default_factory=dict)  # file name -> reason


class _Permanent(Exception):
    """A failure that a retry would only repeat."""


def undecodable(data):
    """Why ``data`` (bytes or a path) is not a usable image, or None when Pillow decodes it."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def image_file_name(token, url):
    """``<token><ext>``, the extension taken from the URL's path when it is an image's (else ``.jpg``)."""
    suffix = posixpath.splitext(urllib.parse.urlparse(url).path)[1].lower()
    return token + (suffix if suffix in IMAGE_EXTENSIONS else ".jpg")


def download_images(jobs, workers=8, retries=3, timeout=30.0, backoff=0.5):
    """Fetch ``jobs``, ``[(destination path, url), ...]``; return a :class:`DownloadReport`."""
    report = DownloadReport()
    todo = []
    for dest, url in tqdm(jobs, desc="checking images already downloaded", unit=" files"):
        if dest.is_file() and undecodable(dest) is None:
            report.present += 1
        else:
            todo.append((dest, url))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = {pool.submit(_download, dest, url, retries, timeout, backoff): dest for dest, url in todo}
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="downloading images",
                           unit=" files"):
            reason = future.result()
            if reason is None:
                report.fetched += 1
            else:
                report.failed[futures[future].name] = reason
    finally:  # on an interrupt: drop what has not started; what has finishes (or not) atomically
        pool.shutdown(wait=True, cancel_futures=True)
    report.failed = dict(sorted(report.failed.items()))
    return report


def _download(dest, url, retries, timeout, backoff):
    """Fetch one image into ``dest``; None on success, else the reason it failed."""
    for attempt in range(retries + 1):
        try:
            data = _fetch(url, timeout)
        except _Permanent as error:
            return str(error)
        except (OSError, http.client.HTTPException) as error:  # timeouts, resets, 5xx: worth another try
            if attempt == retries:
                return f"{_describe(error)} (after {retries + 1} tries)"
            time.sleep(backoff * 2 ** attempt)
            continue
        reason = undecodable(data)
        if reason:
            return f"not an image ({reason})"
        atomic_write_bytes(dest, data)
        return None


def _fetch(url, timeout):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()  # raises IncompleteRead if the body is shorter than Content-Length
    except urllib.error.HTTPError as error:
        if error.code in RETRY_STATUS or error.code >= 500:
            raise
        raise _Permanent(f"HTTP {error.code} {error.reason}") from None
    except ValueError as error:  # not a URL urllib can fetch
        raise _Permanent(f"bad URL ({error})") from None


def _describe(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"
