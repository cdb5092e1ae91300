"""One storage API over local folders and ``s3://bucket/prefix`` (via ``pyarrow.fs``).

:class:`Storage` is the only place that knows whether a path is local or on S3.
Paths given to its methods are relative to the storage root and '/'-separated.
Ray Train/Tune/Data get ``storage_filesystem=storage.filesystem`` and
``storage.full_path(rel)``, so they write to the same place.

Credentials for S3 come only from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``) or the
instance profile, through pyarrow's default AWS chain. They are never passed
as arguments, so neither ``repr`` nor a pickled filesystem contains them.
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points at an S3-compatible
server; ``AWS_REGION``/``AWS_DEFAULT_REGION`` set the region. Without them, on AWS the
bucket's own region is looked up once per process (:func:`bucket_region`); an
S3-compatible server (an endpoint is set) gets ``us-east-1``, which such servers accept.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from mtkd.errors import StorageError

_AUTH_CODES = ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID",
               "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "EXPIRED_TOKEN")
_NETWORK_CODES = ("NETWORK_CONNECTION", "curlCode", "REQUEST_TIMEOUT", "Could not connect")
_CRED_HINT = ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or the "
              "instance profile: the credentials are wrong, expired, or lack permission")


def _scrub(text: str) -> str:
    """Mask secret values from the environment, should a message ever echo one."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        value = os.environ.get(var, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


SINGLE_PUT_BYTES = 5 * 1024 * 1024
"""An atomic write of at most this many bytes to S3 is one PutObject request: S3 publishes
an object whole or not at all, so no temporary is needed. (pyarrow sends a buffered stream
of this size as one PUT when the filesystem allows a delayed open; larger writes use the
temporary-and-copy path, which never exposes a partly completed multipart upload.)"""


@functools.lru_cache(maxsize=64)
def bucket_region(bucket: str) -> str:
    """The AWS region of ``bucket``, asked of S3 once per process (one HEAD request, no
    credentials needed; pyarrow's ``resolve_s3_region``).

    Raises :class:`StorageError` naming the bucket and the fix (set ``AWS_REGION``) when
    the lookup fails (no network, no such bucket).
    """
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot find the region of S3 bucket {bucket!r} "
                           f"({_scrub(str(exc))}): check the bucket name and the network, or "
                           "set AWS_REGION to the bucket's region") from None


def _clean(rel: str) -> str:
    """Normalise a relative '/'-path; refuse parts that would leave the root."""
    parts = [p for p in str(rel).replace(os.sep, "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StorageError(f"path {rel!r} must stay inside the storage root (no '..')")
    return "/".join(parts)


def _join(head: str, rel: str) -> str:
    return f"{head.rstrip('/')}/{rel}" if head and rel else head or rel


@dataclass(frozen=True)
class _Shared:
    """Where a :meth:`Storage.view` sends its shared paths: ``root`` (the parent's path in
    the filesystem), ``offset`` (this storage's position below the view's root, for
    children) and ``rule`` (which view-relative paths are shared)."""

    root: str
    offset: str
    rule: Callable[[str], bool]


class Storage:
    """A root folder on a local disk or an S3 prefix, with the operations pipelines need."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, *, scheme: str,
                 endpoint: str = "", probe_fs: pafs.FileSystem | None = None,
                 shared: _Shared | None = None) -> None:
        self._fs = filesystem
        self._root = root.rstrip("/") if scheme == "s3" else root
        self._scheme = scheme
        self._endpoint = endpoint
        self._probe_fs = probe_fs or filesystem
        self._shared = shared

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_uri(cls, uri: str, *, timeout_s: float = 10.0, max_attempts: int = 3) -> Storage:
        """Open ``uri``: a local path (relative, absolute or ``file://``) or ``s3://bucket[/prefix]``.

        ``timeout_s`` is the S3 idle timeout (no byte for that long fails a request; connecting
        gets half of it); ``max_attempts`` is the retry budget of :attr:`filesystem`.
        :meth:`check_access` uses two attempts of a quarter of ``timeout_s`` each, so a
        wrong endpoint, bucket or key is reported within about ``timeout_s / 2`` seconds.
        """
        text = str(uri).strip()
        if not text:
            raise StorageError("storage path is empty: give a folder or s3://bucket/prefix")
        scheme, _, rest = text.partition("://") if "://" in text else ("", "", text)
        if scheme in ("", "file"):
            root = os.path.abspath(os.path.expanduser(rest))
            return cls(pafs.LocalFileSystem(), root, scheme="file")
        if scheme != "s3":
            raise StorageError(f"unsupported storage scheme {scheme}:// in {text!r}: "
                               "use a local folder or s3://bucket/prefix")
        if "@" in rest.split("/", 1)[0]:  # do not echo the uri: it holds a secret
            raise StorageError("the s3:// storage path contains credentials: remove them and "
                               "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or use an "
                               "instance profile")
        root = _clean(rest)
        if not root:
            raise StorageError(f"{text!r} names no bucket: use s3://bucket/prefix")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        kwargs: dict[str, Any] = {"region": region or "us-east-1", "allow_delayed_open": True}
        var = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        endpoint = "AWS S3"
        if not region and not os.environ.get(var):  # AWS itself: the bucket's own region
            kwargs["region"] = bucket_region(root.split("/", 1)[0])
        if os.environ.get(var):
            url = os.environ[var].strip()
            parts = urlsplit(url if "://" in url else f"https://{url}")
            host = parts.netloc.rpartition("@")[2]  # never keep user:password@
            if parts.scheme not in ("http", "https") or not host:
                raise StorageError(f"{var} must be an http(s) URL like http://127.0.0.1:8333 "
                                   f"(got scheme {parts.scheme!r})")
            kwargs.update(endpoint_override=host, scheme=parts.scheme)
            endpoint = f"{parts.scheme}://{host} (from {var})"

        def make(attempts: int, connect_s: float, idle_s: float) -> pafs.S3FileSystem:
            strategy = pafs.AwsStandardS3RetryStrategy(max_attempts=attempts)
            return pafs.S3FileSystem(retry_strategy=strategy, connect_timeout=connect_s,
                                     request_timeout=idle_s, **kwargs)

        return cls(make(max_attempts, timeout_s / 2, timeout_s), root, scheme="s3",
                   endpoint=endpoint, probe_fs=make(2, timeout_s / 4, timeout_s / 4))

    # ---------------------------------------------------------------- locations
    @property
    def uri(self) -> str:
        """Root location: ``s3://bucket/prefix`` or an absolute local path (no credentials)."""
        return self.uri_of("")

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem (pass as ``storage_filesystem=`` to Ray)."""
        return self._fs

    @property
    def root(self) -> str:
        """Root path inside :attr:`filesystem` (``bucket/prefix`` or ``/abs/dir``)."""
        return self._root

    def full_path(self, rel: str = "") -> str:
        """Path of ``rel`` inside :attr:`filesystem` (for a :meth:`view`, the shared
        root's path where its rule says ``rel`` is shared)."""
        rel = _clean(rel)
        if self._shared is not None:
            whole = _join(self._shared.offset, rel)
            if self._shared.rule(whole):
                return _join(self._shared.root, whole)
        if not rel:
            return self._root
        return f"{self._root.rstrip('/')}/{rel}"

    def uri_of(self, rel: str = "") -> str:
        """User-facing location of ``rel``: ``s3://bucket/prefix/rel`` or an absolute path."""
        path = self.full_path(rel)
        return f"s3://{path}" if self._scheme == "s3" else path

    def local_path(self, rel: str = "") -> str | None:
        """The local folder or file of ``rel`` for local storage; None for ``s3://`` (where a
        writer that needs a real file writes locally and uploads)."""
        return self.full_path(rel) if self._scheme == "file" else None

    def child(self, *parts: str) -> Storage:
        """A view rooted at ``parts`` below this root (same filesystem and settings; below
        a :meth:`view`, the same sharing rule)."""
        rel = _clean("/".join(parts))
        shared = self._shared
        if shared is not None:
            whole = _join(shared.offset, rel)
            shared = None if shared.rule(whole) else _Shared(shared.root, whole, shared.rule)
        return Storage(self._fs, self.full_path(rel), scheme=self._scheme,
                       endpoint=self._endpoint, probe_fs=self._probe_fs, shared=shared)

    def view(self, sub: str, shares: Callable[[str], bool]) -> Storage:
        """A storage rooted at ``sub`` below this root that reads and writes every path
        ``rel`` with ``shares(rel)`` true at this root instead (same filesystem).

        Used for the sizes of an ensemble-size sweep (:mod:`mtkd.sweep`): each size is an
        experiment of its own under ``sweep/size-<k>/`` whose tokenized data, teacher
        members and member predictions are the parent experiment's. ``shares`` sees paths
        relative to the view's root (``data/rte/train.parquet``) and must be a module-level
        function. :meth:`list` of a folder lists the side the folder itself maps to.
        """
        if self._shared is not None:
            raise StorageError(f"{self.uri} is already a view; views do not nest")
        sub = _clean(sub)
        if not sub:
            raise StorageError("a storage view needs a sub-folder")
        return Storage(self._fs, self.full_path(sub), scheme=self._scheme,
                       endpoint=self._endpoint, probe_fs=self._probe_fs,
                       shared=_Shared(self._root, "", shares))

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    __str__ = __repr__

    # ---------------------------------------------------------------- errors
    def _error(self, exc: BaseException, what: str, rel: str) -> StorageError:
        """Turn a pyarrow/OS error into a StorageError naming the full uri and a fix."""
        where = self.uri_of(rel)
        text = _scrub(str(exc))
        if isinstance(exc, FileNotFoundError):
            return StorageError(f"{what}: not found: {where}")
        if isinstance(exc, PermissionError):
            return StorageError(f"{what}: permission denied: {where}")
        if any(code in text for code in _NETWORK_CODES):
            return StorageError(f"{what} {where}: no answer from the S3 endpoint "
                                f"{self._endpoint}; check AWS_ENDPOINT_URL and the network "
                                f"({text})")
        if any(code in text for code in _AUTH_CODES):
            return StorageError(f"{what} {where}: S3 refused the request; {_CRED_HINT} "
                                f"({text})")
        if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
            return StorageError(f"{what} {where}: bucket {self._bucket()!r} does not exist")
        if "region" in text.lower() or "HTTP status 301" in text:
            return StorageError(f"{what} {where}: wrong region? set AWS_REGION to the bucket's "
                                f"region ({text})")
        return StorageError(f"{what} {where} failed: {text}")

    @contextmanager
    def _translate(self, what: str, rel: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except OSError as exc:
            raise self._error(exc, what, rel) from None

    def _bucket(self) -> str:
        return self._root.split("/", 1)[0]

    # ---------------------------------------------------------------- access check
    def check_access(self) -> None:
        """Fail fast, with a fix in the message, unless the root exists (or can be) and is writable.

        S3: the bucket must exist (it is never created), the credentials must be accepted,
        and a probe object is written and deleted. Local: the folder is created.
        """
        probe = f".mtkd-access-check-{uuid.uuid4().hex}"
        if self._scheme == "file":
            if os.path.isfile(self._root):
                raise StorageError(f"storage path {self._root} is a file, not a folder")
            try:
                os.makedirs(self._root, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create storage folder {self._root}: "
                                   f"{exc.strerror or exc}") from None
            try:
                with open(self.full_path(probe), "wb"):
                    pass
                os.remove(self.full_path(probe))
            except OSError as exc:
                raise StorageError(f"storage folder {self._root} is not writable: "
                                   f"{exc.strerror or exc}") from None
            return
        bucket, fs = self._bucket(), self._probe_fs
        try:
            info = fs.get_file_info(bucket)
        except OSError as exc:
            text = _scrub(str(exc))
            if any(code in text for code in _NETWORK_CODES):
                raise StorageError(f"no answer from the S3 endpoint {self._endpoint} for "
                                   f"{self.uri}: is the server running and AWS_ENDPOINT_URL "
                                   f"right? ({text})") from None
            if any(code in text for code in _AUTH_CODES):
                raise StorageError(f"S3 refused access to bucket {bucket!r} at {self._endpoint}; "
                                   f"{_CRED_HINT} ({text})") from None
            raise self._error(exc, "checking bucket", "") from None
        if info.type == pafs.FileType.NotFound:
            custom = self._endpoint != "AWS S3"
            raise StorageError(
                f"bucket {bucket!r} does not exist at {self._endpoint}: create it first "
                f"(e.g. `aws s3 mb s3://{bucket}"
                + (" --endpoint-url $AWS_ENDPOINT_URL`" if custom else "`")
                + f") or fix the storage path {self.uri}"
                + ("; or AWS_ENDPOINT_URL is not an S3 server" if custom else ""))
        with self._translate("writing a probe object to", probe):
            with fs.open_output_stream(self.full_path(probe)) as out:
                out.write(b"ok")
            fs.delete_file(self.full_path(probe))

    # ---------------------------------------------------------------- queries
    def _info(self, rel: str) -> pafs.FileInfo:
        with self._translate("checking", rel):
            return self._fs.get_file_info(self.full_path(rel))

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` is a file or a (non-empty on S3) directory."""
        return self._info(rel).type != pafs.FileType.NotFound

    def is_dir(self, rel: str) -> bool:
        """Whether ``rel`` is a directory (an S3 prefix with objects under it)."""
        return self._info(rel).type == pafs.FileType.Directory

    def list(self, rel: str = "", recursive: bool = False) -> list[str]:
        """Sorted paths below ``rel``, relative to ``rel``; ``[]`` if it is missing.

        Non-recursive: immediate children (files and folders). Recursive: all files,
        as ``sub/dir/file`` (folders are left out: S3 has no empty folders).
        """
        base = self.full_path(rel).rstrip("/")
        selector = pafs.FileSelector(base, recursive=recursive, allow_not_found=True)
        try:
            infos = self._fs.get_file_info(selector)
        except OSError as exc:
            if getattr(exc, "errno", None) == errno.ENOTDIR:
                return []
            raise self._error(exc, "listing", rel) from None
        return sorted(i.path[len(base) + 1:] for i in infos
                      if not recursive or i.type == pafs.FileType.File)

    # ---------------------------------------------------------------- read
    def open_input(self, rel: str) -> pa.NativeFile:
        """A readable stream of file ``rel`` (use as a context manager)."""
        with self._translate("reading", rel):
            return self._fs.open_input_stream(self.full_path(rel))

    def read_bytes(self, rel: str) -> bytes:
        """Contents of file ``rel``; StorageError naming the uri if it is missing."""
        with self._translate("reading", rel), self._fs.open_input_stream(self.full_path(rel)) as f:
            return bytes(f.read())

    def read_text(self, rel: str) -> str:
        """File ``rel`` decoded as UTF-8."""
        return self.read_bytes(rel).decode("utf-8")

    def read_json(self, rel: str) -> Any:
        """File ``rel`` parsed as JSON."""
        try:
            return json.loads(self.read_bytes(rel))
        except json.JSONDecodeError as exc:
            raise StorageError(f"{self.uri_of(rel)} is not valid JSON: {exc}") from None

    # ---------------------------------------------------------------- write
    def _ensure_parent(self, path: str) -> None:
        if self._scheme == "file":  # S3 needs no folders; creating markers costs requests
            os.makedirs(os.path.dirname(path), exist_ok=True)

    @contextmanager
    def open_output(self, rel: str) -> Iterator[pa.NativeFile]:
        """``with store.open_output(rel) as out``: a writable stream to ``rel``, closed on
        leaving the block; a failed write or upload (S3 sends on close) raises StorageError.
        Not atomic: prefer :meth:`write_atomic` for manifests."""
        with self._translate("writing", rel):
            self._ensure_parent(self.full_path(rel))
            with self._fs.open_output_stream(self.full_path(rel)) as out:
                yield out

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel``, replacing it (parent folders are created)."""
        with self.open_output(rel) as out:
            out.write(data)

    def write_text(self, rel: str, text: str) -> None:
        """Write ``text`` as UTF-8."""
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any, *, sort_keys: bool = False) -> None:
        """Write ``obj`` as indented JSON."""
        self.write_bytes(rel, _dump_json(obj, sort_keys))

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` so that readers see the old or the new content, never a part.

        On S3, up to :data:`SINGLE_PUT_BYTES` is one PutObject request (S3 never shows
        part of an object). Otherwise writes a temporary sibling ``.<name>.tmp-<uuid>`` and
        then commits it: a rename locally (after fsync), a server-side copy plus delete of
        the temporary on S3. On failure the temporary is removed and the old content stays.
        """
        rel = _clean(rel)
        if not rel:
            raise StorageError(f"write_atomic needs a file path below {self.uri}")
        if self._scheme == "s3" and len(data) <= SINGLE_PUT_BYTES:
            self.write_bytes(rel, data)  # buffered whole, sent by one PUT on close
            return
        head, _, name = rel.rpartition("/")
        tmp = f".{name}.tmp-{uuid.uuid4().hex}"
        tmp = f"{head}/{tmp}" if head else tmp
        try:
            with self._translate("writing", rel):
                if self._scheme == "file":
                    self._ensure_parent(self.full_path(tmp))
                    with open(self.full_path(tmp), "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                else:
                    self.write_bytes(tmp, data)
                self._commit(tmp, rel)
        except BaseException:
            self._delete_quietly(tmp)
            raise

    def write_json_atomic(self, rel: str, obj: Any, *, sort_keys: bool = False) -> None:
        """:meth:`write_atomic` of ``obj`` as indented JSON (serialised before any write)."""
        self.write_atomic(rel, _dump_json(obj, sort_keys))

    def _commit(self, tmp: str, rel: str) -> None:
        """Make the fully written ``tmp`` visible as ``rel`` in one step."""
        src, dst = self.full_path(tmp), self.full_path(rel)
        if self._scheme == "file":
            os.replace(src, dst)
            _fsync_dir(os.path.dirname(dst))
        else:  # CopyObject publishes the whole object at once; then drop the temporary
            self._fs.copy_file(src, dst)
            self._fs.delete_file(src)

    def _delete_quietly(self, rel: str) -> None:
        with suppress(OSError):
            self._fs.delete_file(self.full_path(rel))

    # ---------------------------------------------------------------- copy / delete / transfer
    def copy(self, src: str, dst: str) -> None:
        """Copy file or folder ``src`` to ``dst`` (folders merge into an existing ``dst``).

        On S3 each object is a server-side copy. Raises StorageError if any copy fails.
        """
        info = self._info(src)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"copying: not found: {self.uri_of(src)}")
        with self._translate("copying to", dst):
            if info.type == pafs.FileType.File:
                self._ensure_parent(self.full_path(dst))
                self._fs.copy_file(self.full_path(src), self.full_path(dst))
            else:
                _copy_tree(self._fs, self.full_path(src), self._fs, self.full_path(dst))

    def delete(self, rel: str) -> None:
        """Delete file or folder ``rel`` with everything below it; missing is fine.

        ``delete("")`` empties the root but keeps it (and never deletes a bucket).
        """
        info = self._info(rel)
        with self._translate("deleting", rel):
            if info.type == pafs.FileType.File:
                self._fs.delete_file(info.path)
            elif info.type == pafs.FileType.Directory:
                if _clean(rel):
                    self._fs.delete_dir(info.path)
                else:
                    self._fs.delete_dir_contents(info.path, missing_dir_ok=True)

    def upload_dir(self, local_dir: str | os.PathLike[str], rel: str) -> None:
        """Copy the local folder ``local_dir`` (recursively) to ``rel``.

        Raises StorageError if any file fails to arrive whole (see :func:`_copy_tree`).
        """
        local = os.path.abspath(os.fspath(local_dir))
        if not os.path.isdir(local):
            raise StorageError(f"uploading: local folder not found: {local}")
        with self._translate("uploading to", rel):
            _copy_tree(pafs.LocalFileSystem(), local, self._fs, self.full_path(rel))

    def download_dir(self, rel: str, local_dir: str | os.PathLike[str]) -> None:
        """Copy folder ``rel`` (recursively) into the local folder ``local_dir``.

        Raises StorageError if any file fails to arrive whole (see :func:`_copy_tree`).
        """
        if not self.is_dir(rel):
            raise StorageError(f"downloading: folder not found: {self.uri_of(rel)}")
        local = os.path.abspath(os.fspath(local_dir))
        os.makedirs(local, exist_ok=True)
        with self._translate("downloading", rel):
            _copy_tree(self._fs, self.full_path(rel), pafs.LocalFileSystem(), local)


#: Files copied at once by :func:`_copy_tree` (S3 latency, not CPU, bounds a transfer).
COPY_THREADS = 8
#: Bytes read and written per step when streaming a file between filesystems.
COPY_CHUNK_BYTES = 8 * 1024 * 1024


def _copy_tree(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    """Copy every file below ``src`` to the same relative path below ``dst``, then check
    that each arrived with its size.

    Not ``pyarrow.fs.copy_files``: it drops the error of a failed S3 upload (it surfaces
    only as "Error ignored when destroying file" on stderr) and leaves an empty object
    behind, so a model or checkpoint "uploaded" that way can be empty. Here each stream
    is closed explicitly, so a failed PUT raises; within one filesystem a file is a
    ``copy_file`` (server-side on S3). Raises OSError (the caller names the location).
    """
    src, dst = src.rstrip("/"), dst.rstrip("/")
    files = [info for info in src_fs.get_file_info(pafs.FileSelector(src, recursive=True))
             if info.type == pafs.FileType.File]
    local_dst = isinstance(dst_fs, pafs.LocalFileSystem)

    def one(info: pafs.FileInfo) -> tuple[str, int]:
        target = f"{dst}/{info.path[len(src) + 1:]}"
        if local_dst:
            os.makedirs(os.path.dirname(target), exist_ok=True)
        if src_fs is dst_fs:
            dst_fs.copy_file(info.path, target)
        else:
            with src_fs.open_input_stream(info.path) as source, \
                    dst_fs.open_output_stream(target) as sink:
                while chunk := source.read(COPY_CHUNK_BYTES):
                    sink.write(chunk)
        return target, info.size

    with ThreadPoolExecutor(max_workers=min(COPY_THREADS, max(1, len(files)))) as pool:
        copied = list(pool.map(one, files))
    if not copied:
        return
    arrived = dst_fs.get_file_info([target for target, _ in copied])
    for (target, size), info in zip(copied, arrived, strict=True):
        if info.type != pafs.FileType.File or info.size != size:
            got = "missing" if info.type != pafs.FileType.File else f"{info.size} bytes"
            raise OSError(f"{target} did not arrive whole ({got}, expected {size} bytes)")


def _dump_json(obj: Any, sort_keys: bool) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode("utf-8")


def _fsync_dir(path: str) -> None:
    """Persist a rename in ``path`` (best effort: not every platform can open folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
