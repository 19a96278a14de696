"""Curation for evaluation: triage an agent run without ground truth, tag samples from an evaluation."""
