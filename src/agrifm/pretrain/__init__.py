"""Pre-training: shards (``build``, ``shards``, ``fractions``, ``landcover``) and training
(``model``, ``task``, ``cli``; see docs/pretraining.md). Nothing is imported here, so
``agrifm pretrain-data`` needs no Lightning and ``agrifm.pretrain.model`` no raster libraries."""
