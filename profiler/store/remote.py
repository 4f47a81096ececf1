"""Run stores (S3, GCS, Azure, a shared filesystem): what a store URL is, and how objects get in and out.

SQLite must not be written over NFS or into a bucket, so every process keeps writing its local database
exactly as before; :mod:`~gpulens.profiler.store.publisher` sends what is new to the store as Parquet
segments (:mod:`~gpulens.profiler.store.segments`) from a process of its own, and
:mod:`~gpulens.profiler.store.mirror` puts them back together in a local cache that every reader (report,
advise, ls, the dashboard) works on.  URLs are anything fsspec opens (``s3://`` through s3fs with the
standard ``AWS_ENDPOINT_URL`` / credential variables, ``gs://``, ``az://``, ``file:///shared/runs``).
Credentials come from the environment or the store's own configuration, never from the URL into a message.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from gpulens.profiler.errors import GpulensError

ENV_STORE = "GPULENS_STORE"


def is_url(text: object) -> bool:
    return isinstance(text, str) and "://" in text


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """A URL (or a message quoting one) as messages show it: every ``user:password@`` part (ftp://, http://,
    sftp:// stores) left out."""
    return _USERINFO.sub(r"\1***@", str(text))


#: Stores that hold objects or files whole and list them (fsspec opens many more -- zip://, hdfs://, ftp:// --
#: whose reads hang on DNS, start a JVM or read archives; a store is none of those).
SCHEMES = ("file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


#: A publisher's S3 client: it has a back-off of its own and a training process that waits for its last round,
#: so a store that does not answer fails a request in seconds (2 attempts in all) -- botocore's defaults (a 60 s
#: connect timeout, 5 attempts with back-off) held a script's exit 13-20 s behind a store that refused
#: connections.  A user's own ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` still win for the retries.
QUICK_CONNECT_TIMEOUT_S, QUICK_MAX_ATTEMPTS = 5, 2


def _quick_options(url: str) -> dict[str, Any]:
    if scheme_of(url) not in ("s3", "s3a"):
        return {}
    # built afresh each time: botocore rewrites the retries dict it is given (max_attempts -> total_max_attempts)
    config: dict[str, Any] = {"connect_timeout": QUICK_CONNECT_TIMEOUT_S}
    if not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
        config["retries"] = {"total_max_attempts": QUICK_MAX_ATTEMPTS, "mode": "standard"}
    return {"config_kwargs": config}


def filesystem(url: str, quick: bool = False) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for ``url``; one-line error when the protocol's package is missing.
    ``quick``: requests fail in seconds when the store does not answer (publishers, which retry on their own)."""
    if scheme_of(url) not in SCHEMES:
        raise GpulensError(f"{redact(url)[:200]}: not a run store (stores are "
                           f"{', '.join(s + '://' for s in SCHEMES)})")
    try:
        import fsspec
    except ImportError:
        raise GpulensError("run stores need fsspec: pip install 'gpulens[store]'") from None
    try:
        fs, path = fsspec.core.url_to_fs(url, **(_quick_options(url) if quick else {}))
    except (ImportError, ValueError) as exc:
        raise GpulensError(f"{redact(url)}: cannot open this store ({exc}); for s3:// install s3fs "
                           "(pip install 'gpulens[store]')") from None
    return fs, str(path).rstrip("/")


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def put_whole(fs: Any, local: Path, remote: str) -> None:
    """Upload ``local`` so that readers see the old object or the new one, never half of it."""
    parent = remote.rsplit("/", 1)[0]
    if is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{remote}.part-{os.getpid()}"
        fs.put_file(str(local), tmp)
        fs.mv(tmp, remote)
    else:
        fs.put_file(str(local), remote)  # an object PUT is atomic


def url_digest(url: str) -> str:
    """A short name for a store URL (cache folders, publishing state): the URL itself never lands on disk."""
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("GPULENS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                           or os.path.expanduser("~/.cache"), "gpulens")
    return Path(base) / "stores"


def cache_dir_for(url: str) -> Path:
    """Where a store's runs are mirrored locally (one folder per store URL)."""
    return cache_root() / url_digest(url)
