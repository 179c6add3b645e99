"""gluon_rcnn: the R-CNN family (Faster, Mask, Cascade; C4 and FPN) in PyTorch, with GluonCV's face.

    import gluon_rcnn
    gluon_rcnn.list_models()
    net = gluon_rcnn.get_model('mask_rcnn_fpn_resnet50_v1b_coco', pretrained='model_final.pth')
    out = net([image])  # list of 3xHxW float RGB tensors in 0-1 → list of dicts
"""
__version__ = "0.1.0"

from .model_zoo import get_model, list_models  # noqa: E402

__all__ = ["get_model", "list_models", "__version__"]
