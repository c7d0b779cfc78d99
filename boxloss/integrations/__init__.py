"""Integrations with detection frameworks, each an optional extra imported only when used.

* :mod:`boxloss.integrations.transformers` — Hugging Face ``transformers``' DETR family
  (``pip install "boxloss[transformers]"``).

torchvision's detectors are in :mod:`boxloss.detection`.
"""
