"""Collector plugins: ``base`` (params, context, registry), shared helpers
(``walk``, ``suspects``) and one module or folder per collector."""
