"""The one label schema (`labels.AgentFields`) that every reader of an agent run goes through."""

import fiftyone as fo

from sam_veteran.plugin.curation.bands import IOU_BAND_EDGES
from sam_veteran.plugin.labels import AgentFields, agent_runs, label_fields


def test_agent_fields_name_every_field_of_a_run():
    run = AgentFields.of("veteran_mask")
    assert run == AgentFields.of("veteran") == AgentFields("veteran")
    assert (run.mask, run.steps, run.clicks) == ("veteran_mask", "veteran_steps", "veteran_clicks")
    assert run.end_reason == "veteran_mask.end_reason" and run.stopped_by_agent == "veteran_mask.stopped_by_agent"
    assert label_fields("v2") == {"mask": "v2_mask", "steps": "v2_steps", "clicks": "v2_clicks"}


def test_agent_runs_need_a_mask_and_steps_of_the_right_types():
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath="/tmp/a.png", veteran_mask=fo.Segmentation(),
                                 veteran_steps=fo.Detections(), other_mask=fo.Segmentation(),
                                 fake_mask=fo.Segmentation(), fake_steps=fo.Classification(label="x")))
    assert agent_runs(dataset) == ["veteran"]
    assert AgentFields("veteran").exists_on(dataset) and not AgentFields("other").exists_on(dataset)
    dataset.delete()


def test_band_edges_are_plain_decimals():
    assert IOU_BAND_EDGES == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
