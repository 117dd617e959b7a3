"""Where data sets live, and fetching them safely: atomic downloads with MD5
checks, safe tar extraction.

Two guarantees matter to a user whose download breaks half-way:

* a file appears under its final name only when it is complete and its MD5 is
  right (bytes go to a ``.part`` file that is renamed at the end), so a later
  run never mistakes a truncated file for the data set;
* extracting an archive writes only the members we expect, as regular files,
  inside the target folder, so a hostile archive cannot write elsewhere.
"""
import hashlib
import http.client
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from urllib.request import urlopen

from tqdm import tqdm

from ..files import atomic_write

CHUNK = 1 << 16
DATA_ENV = "TINYGRAD_CNN_DATA"


def search_folders(root, name):
    """The folders to look for data set ``name`` in, in order.

    ``root`` (the folder the user named, or its ``name`` subfolder), then
    ``$TINYGRAD_CNN_DATA`` (likewise), then ``~/.cache/tinygrad_cnn/<name>``.
    Accepting both a folder and its ``name`` subfolder lets ``--data-dir`` point
    either at the files or at a folder holding several data sets.
    """
    folders = []
    for base in (root, os.environ.get(DATA_ENV)):
        if base:
            folders += [Path(base), Path(base) / name]
    folders.append(cache_folder(name))
    return folders


def download_folder(root, name):
    """Where a download of ``name`` goes: ``root`` if given, else
    ``$TINYGRAD_CNN_DATA/<name>``, else the cache folder."""
    if root:
        return Path(root)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]) / name
    return cache_folder(name)


def cache_folder(name):
    return Path.home() / ".cache" / "tinygrad_cnn" / name


def not_found_message(title, folders, wanted, target, failure=None):
    """The one error a user without the data sees: where we looked, what for,
    and the two ways to provide it."""
    looked = "\n".join(f"  {folder}" for folder in folders)
    lines = [f"{title} not found: looked for {wanted} in:\n{looked}"]
    provide = ("put the files into a folder and pass it as root= (--data-dir) or set "
               f"${DATA_ENV} to it")
    if failure is None:
        lines.append(f"To provide it, {provide}, or pass download=True (needs the internet) "
                     f"to fetch them into {target}.")
    else:
        lines.append(f"The download into {target} failed:\n{failure}")
        lines.append(f"To provide it without the internet, {provide}.")
    return "\n".join(lines)


class DownloadError(RuntimeError):
    """No mirror gave a complete file with the expected checksum."""


def md5sum(path, chunk_size=1 << 20):
    """The hex MD5 of the file at ``path``, read in chunks (data sets can be large)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_url(urls, destination, md5=None, progress=True, timeout=60):
    """Download to ``destination`` from the first of ``urls`` (mirrors tried in turn) that works.

    Bytes are written to ``<destination>.<random>.part`` with a progress bar and
    hashed on the way; only when the MD5 matches is the part file renamed to
    ``destination``, so an interrupted or corrupted download leaves no file under
    the final name.  Returns ``destination`` as a Path; raises DownloadError
    naming every URL tried and why it failed.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _fetch(url, destination, md5, progress, timeout)
            return destination
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, HTTPError and timeouts are OSErrors; a cut connection is an
            # HTTPException (IncompleteRead); a bad checksum is a ValueError.
            failures.append(f"  {url}: {exc}")
    raise DownloadError(f"could not download {destination.name}:\n" + "\n".join(failures))


def _fetch(url, destination, md5, progress, timeout):
    """One attempt: stream ``url`` into a part file, check the MD5, rename."""
    digest = hashlib.md5()
    with atomic_write(destination, "wb") as out, urlopen(url, timeout=timeout) as response:
        total = response.headers.get("Content-Length")
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                  unit_divisor=1024, desc=destination.name, disable=not progress,
                  leave=False) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if md5 is not None and digest.hexdigest() != md5:
            # Raised inside the block: the part file is removed, nothing is renamed.
            raise ValueError(f"MD5 mismatch: got {digest.hexdigest()}, expected {md5} "
                             "(a corrupted or changed file)")


def extract_members(archive, target, members):
    """Extract exactly ``members`` (POSIX paths inside the tar archive) into ``target``.

    Anything else in the archive is ignored, so a member named ``../x`` or
    ``/etc/x`` is never written.  Each wanted member must be a regular file (a
    link could point outside ``target``) and is written atomically.  Raises
    ValueError naming the archive and the member when one is missing or unsafe.
    """
    target = Path(target)
    with tarfile.open(archive, "r:*") as tar:
        for name in members:
            destination = _inside(target, name, archive)
            try:
                member = tar.getmember(name)
            except KeyError:
                raise ValueError(f"{archive}: member {name!r} is missing from the "
                                 "archive (an incomplete or wrong archive)") from None
            if not member.isfile():
                raise ValueError(f"{archive}: member {name!r} is not a regular file "
                                 "(links and devices are refused)")
            destination.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(destination, "wb") as out:
                shutil.copyfileobj(tar.extractfile(member), out, CHUNK)


def _inside(target, name, archive):
    """``target / name``, refusing absolute names and ``..`` components."""
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or ".." in parts or not parts:
        raise ValueError(f"{archive}: refusing member {name!r}, a path outside the "
                         f"target folder {target}")
    return target.joinpath(*parts)
