import pytest
from hypothesis import given, strategies as st

from sam_veteran.plugin.agent.prompts import FAMILIES, ModelFamily, family_for


@pytest.mark.parametrize("name", sorted(FAMILIES))
@given(x=st.floats(0, 5000), y=st.floats(0, 5000), width=st.integers(1, 5000), height=st.integers(1, 5000))
def test_coordinates_round_trip(name, x, y, width, height):
    family = FAMILIES[name]
    back = family.to_image(family.to_policy((x, y), (width, height)), (width, height))
    assert back == pytest.approx((x, y), rel=1e-9, abs=1e-6)


def test_qwen25_answers_in_pixels_of_the_resized_image():
    family = family_for("qwen2_5_vl")
    # the centre of an 840x840 view is the centre of a 1600x900 image
    assert family.to_image((420, 420), (1600, 900)) == (800, 450)
    assert family.box_to_image((0, 0, 840, 840), (1600, 900)) == (0, 0, 1600, 900)
    assert "840x840" in family.grounding_prompt("the cup")


def test_qwen3_answers_on_a_1000_grid():
    family = family_for("qwen3_vl")
    assert family.to_image((500, 250), (1600, 900)) == (800, 225)
    assert family.with_input_size((224, 224)).to_image((500, 250), (1600, 900)) == (800, 225)
    assert "0-1000" in family.refine_prompt("the cup")


def test_prompts_carry_the_query_and_the_answer_format():
    family = family_for("qwen2_vl")
    prompt = family.refine_prompt('what "holds" the books?')
    assert 'what "holds" the books?' in prompt and "<answer>" in prompt and "negative_point" in prompt


def test_unknown_family_and_convention_are_explained():
    with pytest.raises(ValueError, match="known"):
        family_for("llava")
    with pytest.raises(ValueError, match="normalized_1000"):
        ModelFamily("x", coordinates="percent")
