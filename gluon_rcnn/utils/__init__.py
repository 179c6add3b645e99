"""Helpers below every other room: file writing and checkpoint reading (:mod:`gluon_rcnn.utils.io`).
Standard library only at import time; imports nothing of gluon_rcnn."""
