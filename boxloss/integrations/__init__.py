"""Integrations with detection frameworks, each an optional extra imported only when used.

* :mod:`boxloss.integrations.transformers` — Hugging Face ``transformers``' DETR family
  (``pip install "boxloss[transformers]"``).
* :mod:`boxloss.integrations.ultralytics` — Ultralytics YOLO (``pip install "boxloss[ultralytics]"``; Ultralytics
  is AGPL-3.0 and is imported only by that module).

torchvision's detectors are in :mod:`boxloss.detection`.
"""
