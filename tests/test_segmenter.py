import numpy as np
import pytest
import torch

from sam_veteran.plugin.agent.segmenters import (ARCHITECTURES, SamSegmenter, architecture_of, build_sam,
                                                resolve_checkpoint)


def test_tiny_checkpoint_loads_with_its_architecture(tiny_models, tiny_segmenter):
    assert tiny_segmenter.sam.image_encoder.img_size == 256
    state = tiny_segmenter.sam.state_dict()
    assert architecture_of(state) == "tiny"


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_real_architectures_are_recognised_from_shapes(name):
    arch = ARCHITECTURES[name]
    fake = {"image_encoder.patch_embed.proj.weight": torch.empty(arch.embed_dim, 3, 16, 16)}
    fake.update({f"image_encoder.blocks.{i}.norm1.weight": torch.empty(1) for i in range(arch.depth)})
    assert architecture_of(fake) == name


def test_pickled_checkpoint_loads_weights_only(tmp_path):
    sam = build_sam("tiny")
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    loaded = SamSegmenter.from_checkpoint(tmp_path / "sam.pth", device="cpu")
    for key, value in sam.state_dict().items():
        assert torch.equal(loaded.sam.state_dict()[key], value)


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        SamSegmenter.from_checkpoint(tmp_path / "evil.pth", device="cpu")


def test_unknown_checkpoint_is_explained():
    with pytest.raises(FileNotFoundError, match="vit_h"):
        resolve_checkpoint("/nowhere/sam.pth")


def test_masks_come_back_at_image_size_and_refine_with_points(tiny_segmenter):
    image = np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    (embedding,) = tiny_segmenter.encode([image])
    first = tiny_segmenter.segment(embedding, (10, 10, 100, 80))
    assert first.mask.shape == (90, 160) and first.mask.dtype == bool
    assert np.isfinite(first.score)
    second = tiny_segmenter.segment(embedding, (10, 10, 100, 80), [(50, 40), (20, 20)], [1, 0], first.logits)
    assert second.mask.shape == (90, 160)
    assert second.logits.shape == first.logits.shape


def test_batched_encoding_matches_one_at_a_time(tiny_segmenter):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(50, 80), (120, 60), (64, 64)]]
    together = tiny_segmenter.encode(images)
    for image, embedding in zip(images, together):
        (alone,) = tiny_segmenter.encode([image])
        torch.testing.assert_close(alone.features, embedding.features, rtol=1e-4, atol=1e-5)
        assert alone.original_size == embedding.original_size == image.shape[:2]
