"""What a run will download, said before it starts, and a fast clear failure when it cannot.

A policy hub id comes from the Hugging Face Hub into its cache; a SAM model type (``vit_h``) from Meta into
`defaults.cache_dir()`; a SAM 2 hub id from the Hub. Anything local or already cached needs nothing. Before any
model loads, `check` asks each source once (a few seconds at most) so an offline machine hears at once what is
missing and why, instead of a library's retries and traceback a minute later.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .defaults import cache_dir

APPROXIMATE_SIZES = {"Qwen/Qwen2.5-VL-7B-Instruct": "about 16 GB", "vit_h": "2.4 GB", "vit_l": "1.2 GB",
                     "vit_b": "0.4 GB", "facebook/sam2.1-hiera-large": "about 0.9 GB"}
TIMEOUT_S = 10


class DownloadUnavailable(OSError):
    """A model the run needs is neither local nor cached, and its source cannot be reached."""


@dataclass(frozen=True)
class Download:
    name: str  # the spec as given: a hub id or a SAM model type
    source: str  # a hub id's page or the checkpoint URL
    destination: str
    hub: bool  # from the Hugging Face Hub (else a plain URL)

    def describe(self) -> str:
        size = APPROXIMATE_SIZES.get(self.name)
        return f"{self.name} from {self.source} into {self.destination}" + (f" ({size})" if size else "")


def needed(policy: str, segmenter: str) -> list[Download]:
    """The downloads a run of `policy` + `segmenter` needs: those neither local nor in their cache."""
    from .agent.segmenters import CHECKPOINT_URLS, segmenter_kind
    from .agent.shipped import SHIPPED

    out = [d for d in (_hub_download(policy),) if d] if policy not in {*SHIPPED, "oracle"} else []
    if segmenter in SHIPPED:
        return out
    if segmenter_kind(segmenter) == "sam2":
        out += [d for d in (_hub_download(segmenter),) if d]
    elif segmenter in CHECKPOINT_URLS and not Path(segmenter).exists():
        url = CHECKPOINT_URLS[segmenter]
        target = cache_dir() / url.rsplit("/", 1)[1]
        if not target.exists():
            out.append(Download(segmenter, url, str(cache_dir()), hub=False))
    return out


def check(downloads: list[Download]) -> None:
    """Raise `DownloadUnavailable` naming the first download whose source cannot be reached now."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    for download in downloads:
        if download.hub and offline:
            raise DownloadUnavailable(f"{download.name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
        try:
            if download.hub:
                from huggingface_hub import HfApi

                HfApi().model_info(download.name, timeout=TIMEOUT_S)
            else:
                urllib.request.urlopen(urllib.request.Request(download.source, method="HEAD"), timeout=TIMEOUT_S)
        except Exception as exc:  # any failure to reach the source: network, DNS, proxy, unknown repo, gated
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DownloadUnavailable(f"cannot download {download.name} from {download.source}: {reason}") from exc


def _hub_download(spec: str) -> Download | None:
    """A Hub download for a hub id that is neither a local folder nor cached; None otherwise."""
    if Path(spec).expanduser().exists():
        return None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import ENDPOINT, HF_HUB_CACHE
    from huggingface_hub.errors import HFValidationError

    try:
        if isinstance(try_to_load_from_cache(spec, "config.json"), str):
            return None
    except HFValidationError:
        raise FileNotFoundError(f"{spec} is neither a local folder nor a hub id (owner/name)") from None
    return Download(spec, f"{ENDPOINT}/{spec}", HF_HUB_CACHE, hub=True)
