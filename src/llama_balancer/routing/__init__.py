"""The routing layer: what a model-bearing request is, where it goes, how it is retried and recorded."""
