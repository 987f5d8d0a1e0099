"""Downloading checkpoints into a cache a later load can trust.

Each URL has its own cache entry, ``$TORCH_HOME/hub/checkpoints/
<16 hex digits of the URL's sha256>/<file name>``, so two URLs never share
a file, and a file appears there only complete: as long as the server's
Content-Length says, no larger than :data:`MAX_DOWNLOAD_BYTES`, and, for a
name ending in ``-<8 or more hex digits>.<ext>`` (mmdet's and
``publish_model.py``'s naming), with a sha256 that starts with those digits
(what torch hub's ``check_hash`` checks). The reader removes an entry it
refuses (see :func:`~wavevit_mm.checkpoint.loading.load_checkpoint`).
"""
import hashlib
import http.client
import os
import os.path as osp
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log

from ..errors import CheckpointError
from .saving import atomic_write

#: The largest checkpoint downloaded (a Wave-ViT-L detector with its
#: optimizer state is about 1.5 GB).
MAX_DOWNLOAD_BYTES = 8 << 30
#: A sha256 prefix in a file name: ``name-<hex>.pth``.
HASH_SUFFIX = re.compile(r'-([0-9a-f]{8,64})\.\w+$')
CHUNK = 1 << 20
TIMEOUT_S = 60


def cache_path(url: str) -> str:
    """Where the download of ``url`` is kept."""
    name = urllib.parse.unquote(osp.basename(urllib.parse.urlparse(url).path))
    if name in ('', '.', '..') or any(c in name for c in '/\\\0'):
        raise CheckpointError(
            f'{url} names no file to download (its path must end in a file '
            f'name).')
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return osp.join(torch.hub.get_dir(), 'checkpoints', key, name)


def _size_limit_error(url: str, size: int) -> CheckpointError:
    return CheckpointError(
        f'{url} is larger than the {MAX_DOWNLOAD_BYTES} bytes a checkpoint '
        f'may be downloaded with ({size} bytes or more); download it '
        f'yourself and pass the local file.')


def _download_error(url: str, error: Exception) -> CheckpointError:
    reason = (f'HTTP error {error.code} ({error.reason})'
              if isinstance(error, urllib.error.HTTPError) else
              getattr(error, 'reason', None) or error or type(error).__name__)
    return CheckpointError(
        f'Could not download the checkpoint {url}: {reason}. Download it '
        f'yourself and pass the local file.')


def _read(response, url: str) -> bytes:
    try:
        return response.read(CHUNK)
    except (OSError, http.client.HTTPException) as error:  # not the disk's
        raise _download_error(url, error) from None


def _fetch(url: str, path: str) -> None:
    """Download ``url`` to ``path``, which appears only once complete and
    checked."""
    print_log(f'Downloading {url} to {path}', logger='current')
    name_hash = HASH_SUFFIX.search(osp.basename(path))
    digest = hashlib.sha256()
    received = 0
    request = urllib.request.Request(url,
                                     headers={'User-Agent': 'wavevit_mm'})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except (ValueError, OSError, http.client.HTTPException) as error:
        raise _download_error(url, error) from None
    with response, atomic_write(path) as tmp, open(tmp, 'wb') as file:
        length = response.headers.get('Content-Length')
        expected = int(length) if length and length.isdigit() else None
        if expected is not None and expected > MAX_DOWNLOAD_BYTES:
            raise _size_limit_error(url, expected)
        while True:
            chunk = _read(response, url)
            if not chunk:
                break
            received += len(chunk)
            if received > MAX_DOWNLOAD_BYTES:
                raise _size_limit_error(url, received)
            digest.update(chunk)
            file.write(chunk)
        if expected is not None and received != expected:
            raise CheckpointError(
                f'The download of {url} ended after {received} of its '
                f'{expected} bytes (the connection was cut); nothing '
                f'was kept. Try again, or download it yourself and pass '
                f'the local file.')
        if name_hash and not digest.hexdigest().startswith(name_hash[1]):
            raise CheckpointError(
                f'The download of {url} has sha256 '
                f'{digest.hexdigest()[:len(name_hash[1])]}, not the '
                f'{name_hash[1]} its name promises: a damaged or '
                f'replaced file; nothing was kept.')


def download(url: str) -> str:
    """The local copy of ``url`` in the cache (:func:`cache_path`),
    downloaded first if it is not there. In a distributed run rank 0
    downloads while the other ranks wait, and reaches that barrier even
    when its download fails, so no rank hangs."""
    path = cache_path(url)
    rank, world_size = get_dist_info()
    failure: Optional[CheckpointError] = None
    if rank == 0 and not osp.isfile(path):
        try:
            _fetch(url, path)
        except CheckpointError as error:
            failure = error
    if world_size > 1:
        barrier()
    if failure is not None:
        raise failure
    if not osp.isfile(path):  # a rank with a cache of its own
        _fetch(url, path)
    return path


def forget(path: str) -> None:
    """Remove a cached download a reader refused."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
