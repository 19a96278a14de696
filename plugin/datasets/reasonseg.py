"""LISA's ReasonSeg folders into FiftyOne: one sample per (image, query) item.

A split folder holds ``<name>.jpg`` + ``<name>.json`` pairs; the JSON has ``text`` (a list of queries),
``is_sentence`` and ``shapes`` (LabelMe polygons). The ground truth is built as LISA's ``get_mask_from_json``
builds it: ``flag`` shapes (legacy two-point marks) are skipped, the rest filled largest first, a label containing
``ignore`` as 255 and any other label as 1 (see `common.fill_polygons`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from .common import (IGNORE, MalformedItem, Skipped, check_polygon, fill_polygons, image_size, load_all_or_nothing,
                     safe_join)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def import_reasonseg(dataset_dir: str | Path, name: str | None = None, split: str | None = None,
                     first_text_only: bool = False, overwrite: bool = False, persistent: bool = False):
    """Import ReasonSeg into a new FiftyOne dataset and return it.

    `dataset_dir` is either one split folder (its JSON files directly inside; the tag is `split` or else the
    folder's name) or the ReasonSeg root holding ``train``/``val``/``test`` folders (all of them, or only `split`).
    Each text of a JSON becomes its own sample; `first_text_only` keeps only the first, as LISA's evaluation does.
    Sample fields: ``query``, ``ground_truth`` (0/1/255), ``is_sentence``, ``source_file`` (the JSON's name inside
    `dataset_dir`), ``text_index``; the split is the sample's tag. Malformed items are skipped and reported.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"ReasonSeg folder not found: {root}")
    folders = _split_folders(root, split)
    skipped: list[Skipped] = []
    samples = _samples(root, folders, first_text_only, skipped)
    info = {"format": "reasonseg", "source": str(root), "first_text_only": first_text_only}
    return load_all_or_nothing(samples, skipped, info, name, overwrite, persistent, str(root))


def _split_folders(root: Path, split: str | None) -> list[tuple[Path, str]]:
    """(folder, split tag) pairs to read."""
    if any(root.glob("*.json")):
        return [(root, split or root.name)]
    if split is not None:
        folder = safe_join(root, split, "split")
        if not folder.is_dir():
            raise FileNotFoundError(f"split folder not found: {folder}")
        return [(folder, split)]
    folders = [(root / s, s) for s in SPLITS if (root / s).is_dir()]
    if not folders:
        raise FileNotFoundError(f"{root} holds no ReasonSeg JSON files and no train/val/test folders")
    return folders


def _samples(root: Path, folders: list[tuple[Path, str]], first_text_only: bool,
             skipped: list[Skipped]) -> Iterator:
    import fiftyone as fo

    for folder, tag in folders:
        for json_path in sorted(folder.glob("*.json")):
            source = json_path.relative_to(root).as_posix().encode("utf-8", "backslashreplace").decode("utf-8")
            try:
                _check_text(json_path.name, "its file name")
                image_path, texts, is_sentence, mask = read_item(json_path)
            except MalformedItem as exc:
                skipped.append(Skipped(source, str(exc)))
                continue
            safe_join(folder, image_path.name, source)  # an image linked in from outside stops the import
            segmentation = fo.Segmentation(mask=mask)
            for index, text in enumerate(texts[:1] if first_text_only else texts):
                yield fo.Sample(filepath=str(image_path.resolve()), query=text, ground_truth=segmentation,
                                is_sentence=is_sentence, source_file=source, text_index=index, tags=[tag])


def read_item(json_path: Path):
    """(image path, texts, is_sentence, uint8 mask) of one ReasonSeg JSON, or `MalformedItem`."""
    image_path = next((p for p in (json_path.with_suffix(e) for e in IMAGE_EXTENSIONS) if p.is_file()), None)
    if image_path is None:
        raise MalformedItem(f"no image {json_path.stem}.jpg beside the JSON")
    annotation = _read_json(json_path)
    texts = annotation.get("text")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise MalformedItem("'text' must be a non-empty list of non-empty strings")
    for index, text in enumerate(texts):
        _check_text(text, f"text {index}")
    _check_text(image_path.name, "the image's file name")
    shapes = annotation.get("shapes")
    if not isinstance(shapes, list):
        raise MalformedItem("'shapes' must be a list")
    width, height = image_size(image_path)
    polygons = []
    for index, shape in enumerate(shapes):
        label = str(shape.get("label", "")).lower() if isinstance(shape, dict) else None
        if label is None:
            raise MalformedItem(f"shape {index} is not an object")
        if label == "flag":
            continue
        points = check_polygon(shape.get("points"), width, height, f"shape {index} ({label})")
        polygons.append((points, IGNORE if "ignore" in label else 1))
    return image_path, [t.strip() for t in texts], _is_sentence(annotation.get("is_sentence", False)), \
        fill_polygons(polygons, width, height)


def _check_text(text: str, what: str) -> None:
    """Text the database can store: valid Unicode (a lone surrogate such as ``\\ud800`` in the JSON is not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedItem(f"{what} is not valid Unicode ({exc.reason} at character {exc.start})") from None


def _is_sentence(value) -> bool:
    """LISA's flag as a real boolean: true/false, 0/1, or the strings "true"/"false"; anything else is malformed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise MalformedItem(f"'is_sentence' must be true or false, not {value!r}")


def _read_json(path: Path) -> dict:
    """The JSON object; LISA also reads files saved as cp1252, so do we."""
    raw = path.read_bytes()
    for encoding in ("utf-8", "cp1252"):
        try:
            data = json.loads(raw.decode(encoding))
            break
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        except RecursionError:
            raise MalformedItem("the JSON is nested too deeply to read") from None
    else:
        raise MalformedItem("not valid JSON")
    if not isinstance(data, dict):
        raise MalformedItem("the JSON is not an object")
    return data
