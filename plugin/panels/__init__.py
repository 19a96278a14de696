"""FiftyOne panels (Python panels, registered through `sam_veteran.plugin.operators.PANELS`)."""
