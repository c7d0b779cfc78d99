"""Write the Sphinx inventories of the projects the documentation links to (Python, PyTorch, torchvision), so
that the build resolves those links with no network.

Each inventory lists only the objects boxloss' pages and docstrings name, with their addresses on the projects'
own documentation sites. Run it after adding a link to a new object of theirs:

    python docs/_inventories/make_inventories.py
"""

from __future__ import annotations

import os
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))

# name → (role, address relative to the project's documentation root)
PYTHON = {
    **{name: ("py:class", f"library/functions.html#{name}") for name in
       ("int", "float", "str", "bool", "tuple", "list", "dict", "object", "type", "callable")},
    **{name: ("py:exception", f"library/exceptions.html#{name}") for name in
       ("ValueError", "TypeError", "RuntimeError", "ImportError", "UserWarning", "RuntimeWarning", "Warning")},
    "None": ("py:data", "library/constants.html#None"),
    **{f"typing.{name}": ("py:data", f"library/typing.html#typing.{name}") for name in
       ("Optional", "Union", "Callable", "Sequence", "Mapping", "Iterator", "Any", "Tuple", "Dict", "List")},
    "collections.abc.Callable": ("py:class", "library/collections.abc.html#collections.abc.Callable"),
    "collections.abc.Sequence": ("py:class", "library/collections.abc.html#collections.abc.Sequence"),
    "collections.abc.Mapping": ("py:class", "library/collections.abc.html#collections.abc.Mapping"),
    "collections.abc.Iterator": ("py:class", "library/collections.abc.html#collections.abc.Iterator"),
    "contextlib.contextmanager": ("py:function", "library/contextlib.html#contextlib.contextmanager"),
}
TORCH = {
    "torch.Tensor": ("py:class", "tensors.html#torch.Tensor"),
    "torch.dtype": ("py:class", "tensor_attributes.html#torch.dtype"),
    "torch.device": ("py:class", "tensor_attributes.html#torch.device"),
    "torch.nn.Module": ("py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
    "torch.nn.modules.module.Module": ("py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
    "torch.compile": ("py:function", "generated/torch.compile.html#torch.compile"),
    "torch.library.custom_op": ("py:function", "library.html#torch.library.custom_op"),
    "torch.library.triton_op": ("py:function", "library.html#torch.library.triton_op"),
    "torch.nn.functional.cross_entropy": ("py:function",
                                          "generated/torch.nn.functional.cross_entropy.html"
                                          "#torch.nn.functional.cross_entropy"),
}
TORCHVISION = {
    **{f"torchvision.ops.{name}": ("py:function", f"generated/torchvision.ops.{name}.html#torchvision.ops.{name}")
       for name in ("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou", "box_convert",
                    "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss")},
    **{f"torchvision.models.detection.{name}": ("py:class", f"models/generated/torchvision.models.detection."
                                                f"{name.lower()}_resnet50_fpn.html") for name in
       ("FasterRCNN", "RetinaNet", "FCOS", "MaskRCNN", "KeypointRCNN")},
}


def write(path: str, project: str, version: str, entries: dict) -> None:
    lines = "".join(f"{name} {role} 1 {uri} -\n" for name, (role, uri) in sorted(entries.items()))
    header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n")
    with open(path, "wb") as f:
        f.write(header.encode() + zlib.compress(lines.encode()))


if __name__ == "__main__":
    write(os.path.join(HERE, "python.inv"), "Python", "3", PYTHON)
    write(os.path.join(HERE, "torch.inv"), "PyTorch", "2", TORCH)
    write(os.path.join(HERE, "torchvision.inv"), "torchvision", "0", TORCHVISION)
