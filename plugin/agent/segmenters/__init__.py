"""Segmenter backends behind one protocol: `base` (the protocol and result), `sam` (Segment Anything v1 and its
architecture registry), `sam2` (SAM 2 through transformers), `dispatch` (which one a spec names, and loading it).
Names load on first use, so `segmenter_kind` needs neither segment-anything nor transformers."""

from ...lazy import lazy_exports

_EXPORTS = {
    "Segmenter": ".base", "SegmentResult": ".base",
    "ARCHITECTURES": ".sam", "CHECKPOINT_URLS": ".sam", "ImageEmbedding": ".sam", "SamArchitecture": ".sam",
    "SamSegmenter": ".sam", "architecture_of": ".sam", "build_sam": ".sam", "load_state_dict": ".sam",
    "resolve_checkpoint": ".sam",
    "DEFAULT_SAM2": ".sam2", "Sam2Embedding": ".sam2", "Sam2Segmenter": ".sam2",
    "SAM2_MODEL_TYPES": ".dispatch", "SAM_MODEL_TYPES": ".dispatch", "load_segmenter": ".dispatch",
    "segmenter_kind": ".dispatch",
    "DEFAULT_SEGMENTER": "...defaults",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
