"""Where a checkpoint's weights come from and what they are, read from headers alone.

``safetensors_header``: a header's bytes -> a validated tensor table. ``shards``: which
files are the shards (one rule for folders and the Hub) and which names are safe.
``formats``: what a quantized source is (the values the planner reads); ``detect``: which
format a config.json and the tensor names describe; ``decode_checks``: its config fields
and scale shapes checked against the headers, and no packed tensor left undecoded.
"""
