"""Command lines (``scripts/`` call these): train, eval, predict. The top layer: they build
models through the face (``gluon_rcnn.get_model``) and hand them to ``gluon_rcnn.engine``."""
