"""Unlabelled films for self-supervised pretraining (``covidnet pretrain --images DIR``): every image file under
the folders, read through the build's contract (``Contract.load``, the one pixel path, so the backbone sees
what fine-tuning on that build will feed it), joined with the build's training split into one store that only
pretraining reads (``RUN/films/``).

* **Patients.** A folder of files says nothing of who is in them: each file is its own patient (its path in
  the folder; the source is the folder's name), as the build does for such layouts. Pretraining holds out a
  hashed tenth of the patients to watch its loss, so two films of one patient may fall on both sides of that
  hold-out; it selects nothing but the checkpoint by it.
* **Never a scored film.** A file that is an exact or near duplicate of one of the build's validation or test
  images (the build's perceptual hash, within ``NEAR_DUP_BITS``) is left out: a model fine-tuned from this
  pretraining is scored on them. So is a duplicate of a training image, which the store holds already.
* **Nothing silent.** An unreadable file and a duplicate are left out with their reason in ``films.csv``
  (every file, kept or not) and counted on stderr; a folder without any image file, or with none that reads,
  is one line and nothing is written. The store is written beside its final place and renamed into it, so a
  stopped staging leaves nothing a resumed run would take for finished. Films and rows pass a row at a time,
  as in the build: memory stays flat in the number of films.

Rows of these films carry the label ``UNLABELLED``; ``Store.labels`` refuses them in one line.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError, CovidnetError
from ..imageio import IMAGE_SUFFIXES
from .build.dedup import near_matches, perceptual_hash
from .records import UNLABELLED
from .store import IMAGES_FILE, INDEX_COLUMNS, INDEX_FILE, RowFile, Store, open_store

FILMS = "films"  # the staged store, inside the run folder
LISTING = "films.csv"  # every file of the folders: kept, or why not
SCRATCH = "scratch.npy"  # the films as read, before the store is written
CHUNK = 256  # build rows read at a time: memory flat in the size of the build


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (any depth, by suffix, sorted); one line when it is not a folder or
    holds none."""
    if not folder.is_dir():
        raise ConfigError(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"--images {folder}: no image file ({', '.join(IMAGE_SUFFIXES)}) in it or below it")
    return files


def stage_films(store: Store, folders: list[str], run: Path, progress: bool = True) -> Path:
    """``run/films``: the build's training images and the folders' films, in one store with the build's
    contract (made once; a resumed run finds it). Returns its path."""
    final = run / FILMS
    if (final / INDEX_FILE).is_file():
        return final
    listing = [(Path(d), p) for d in folders for p in image_files(Path(d))]  # every folder checked first
    tmp = run.parent / f".{run.name}.{FILMS}-{os.getpid()}"  # beside the run: nothing in it until renamed in
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        kept, reasons = _read_films(store, listing, tmp / SCRATCH, progress)
        if not kept:
            unreadable = sum(why.startswith("unreadable") for why in reasons.values())
            raise ConfigError(
                f"--images {', '.join(folders)}: no film to pretrain on: {unreadable} unreadable, "
                f"{len(reasons) - unreadable} duplicates of the build's own films (first: {_first(reasons)})"
            )
        _write(tmp, store, kept, listing, reasons)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"covidnet pretrain: {len(kept)} films staged beside the build's {len(store.rows('train'))} training "
              f"images; {len(reasons)} of {len(listing)} files left out (listed in {final / LISTING})",
              file=sys.stderr)  # fmt: skip
    run.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, final)
    except OSError:  # another process (a torchrun rank) staged it first: the same films
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _read_films(store: Store, listing: list, scratch: Path, progress: bool) -> tuple[list, dict]:
    """Each film read through the contract once, into row k of the ``scratch`` row file as the k-th kept one (a
    row at a time: memory stays flat in the number of films). Returns the kept films (folder, path, scratch row)
    and the reason each other file is left out."""
    rows, hashes = _build_hashes(store)
    out = RowFile.create(scratch, len(listing), store.size)
    kept, reasons = [], {}
    for k, (folder, path) in enumerate(listing):
        if progress and k % 200 == 0:
            print(f"covidnet pretrain: reading films {k}/{len(listing)}", file=sys.stderr)
        try:
            img = store.contract.load(path)
        except (CovidnetError, OSError) as e:
            reasons[path] = f"unreadable: {e}"
            continue
        twin = _near(perceptual_hash(img), rows, hashes)
        if twin is not None:
            split = store.index[twin]["split"]
            why = "scored: never pretrained on" if split != "train" else "staged from the build already"
            reasons[path] = f"duplicate of {store.index[twin]['filename']}, {split} split ({why})"
            continue
        out.write(len(kept), img)
        kept.append((folder, path, len(kept)))
    out.close()
    return kept, reasons


def _build_hashes(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """The build's rows (validation and test first: a film that matches one of them and a training film is
    left out as scored) and their packed perceptual hashes (rows, 32), read ``CHUNK`` rows at a time."""
    rows = np.concatenate([store.rows("val"), store.rows("test"), store.rows("train")])
    hashes = [perceptual_hash(img) for k in range(0, len(rows), CHUNK) for img in store.read(rows[k : k + CHUNK])]
    return rows, np.frombuffer(b"".join(hashes), np.uint8).reshape(len(rows), -1)


def _near(h: bytes, rows: np.ndarray, hashes: np.ndarray) -> int | None:
    """The first of ``rows`` whose hash is a near duplicate of ``h`` (the build's threshold), or None."""
    close = near_matches(h, hashes)
    return int(rows[close[0]]) if len(close) else None


def _source_names(folders: list[Path]) -> dict[Path, str]:
    """Each folder's source name: its own name, with -2, -3, … where two folders share one."""
    names: dict[Path, str] = {}
    for folder in dict.fromkeys(folders):
        name, k = folder.name, 1
        while name in names.values():
            k += 1
            name = f"{folder.name}-{k}"
        names[folder] = name
    return names


def _first(reasons: dict) -> str:
    path, why = next(iter(reasons.items()), ("", "none"))
    return f"{path}: {why}" if path else why


def _write(tmp: Path, store: Store, kept: list, listing: list, reasons: dict) -> None:
    """The store in ``tmp``: the build's training rows, then the kept films from the scratch file (removed), a
    row at a time (the build's in chunks of ``CHUNK``); its index, contract and ``films.csv``."""
    own = store.rows("train")
    images = RowFile.create(tmp / IMAGES_FILE, len(own) + len(kept), store.size)
    rows = []
    for k in range(0, len(own), CHUNK):
        for n, img in enumerate(store.read(own[k : k + CHUNK]), start=k):
            images.write(n, img)
    for n, i in enumerate(own):
        rows.append({**{c: store.index[i].get(c, "") for c in INDEX_COLUMNS}, "row": n, "lung_mask": ""})
    scratch = RowFile(tmp / SCRATCH)
    names = _source_names([folder for folder, _, _ in kept])
    for n, (folder, path, slot) in enumerate(kept, start=len(own)):
        images.write(n, scratch.read([slot])[0])
        name = path.relative_to(folder).as_posix()
        rows.append({**dict.fromkeys(INDEX_COLUMNS, ""), "row": n, "patient_id": name, "filename": name,
                     "label": UNLABELLED, "source": names[folder], "split": "train"})  # fmt: skip
    scratch.close()
    (tmp / SCRATCH).unlink()
    images.close()
    with open(tmp / INDEX_FILE, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(INDEX_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    with open(tmp / LISTING, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        w = csv.writer(f)
        w.writerow(["path", "kept", "reason"])
        for _, path in listing:
            w.writerow([str(path), int(path not in reasons), reasons.get(path, "")])
    store.contract.write(tmp)
    open_store(tmp)  # what was written reads back as a store
