"""What each analysis (and the patching probe) is, without its compute: importable with no torch.

A spec module declares ``NAME``, ``DESCRIPTION``, ``TABLES``, ``SCHEMA_VERSION``, its flags (``PAIRED``,
``RUN``, ``CROSS_TABLES``, ``GROUP_TABLES`` …), the frozen ``Params`` dataclass whose fields become CLI
flags and join the cache key, and ``select`` (which tensors it takes). Planning, the CLI's parser and
a fully cached rerun need only these; the compute lives in ``subspace_atlas.analysis.<name>``.
"""
