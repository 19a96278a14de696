"""Multi-task GRPO training of the SAM-Veteran policy from FiftyOne views."""
