"""Mask losses: soft IoU (Jaccard) and −ln IoU with class weights, Lovász-Softmax and Lovász hinge."""

from .lovasz import lovasz_hinge_loss, lovasz_softmax_loss
from .modules import LovaszHingeLoss, LovaszSoftmaxLoss, SoftIoULoss
from .soft_iou import soft_iou_loss

__all__ = ["soft_iou_loss", "lovasz_softmax_loss", "lovasz_hinge_loss", "SoftIoULoss", "LovaszSoftmaxLoss",
           "LovaszHingeLoss"]
