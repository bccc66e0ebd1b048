"""``sret export``: ONNX export of a model (eval mode, fixed permutations), checked against PyTorch with onnxruntime.

The sliced models export as plain gathers with constant indices, because eval-time permutations are fixed buffers.
With ``eval_permutation="random"`` the exported graph would freeze one draw, so export refuses it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from sret.errors import SReTError


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, img_size: int, in_chans: int = 3,
                batch_size: int = 1, check: bool = True) -> float | None:
    """Export ``model`` to ``path`` and return the max abs difference of onnxruntime's logits from PyTorch's."""
    model = model.eval()
    if any(getattr(stage, "eval_permutation", "fixed") == "random" for stage in getattr(model, "transformers", [])):
        raise SReTError("eval_permutation='random' cannot be exported (the graph would freeze one random draw)")
    x = torch.randn(batch_size, in_chans, img_size, img_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.onnx.export(model, (x,), str(tmp), dynamo=True, external_data=False)
    os.replace(tmp, path)
    if not check:
        return None
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise SReTError("onnxruntime is not installed; pip install 'sret[export]' or pass --no-check") from err
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(abs(got - want).max())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="sret model name or local-dir:PATH")
    parser.add_argument("--checkpoint", default=None, help="weights file (.pth / .safetensors)")
    parser.add_argument("--output", required=True, help="ONNX file to write")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")


def run(args: argparse.Namespace) -> int:
    from sret.models.factory import create_model
    from sret.models.weights import load_weights, read_state_dict

    kwargs: dict = {"in_chans": args.in_chans}
    if args.img_size:
        kwargs["img_size"] = args.img_size
    if args.checkpoint and args.num_classes is None:
        head = read_state_dict(args.checkpoint).get("head.weight")
        if head is not None:
            kwargs["num_classes"] = head.shape[0]
    elif args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    model = create_model(args.model, **kwargs)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    size = args.img_size or getattr(model, "img_size", (224, 224))[0]
    diff = export_onnx(model, args.output, size, args.in_chans, check=not args.no_check)
    print(f"wrote {args.output}" + ("" if diff is None else f"; onnxruntime vs PyTorch max |diff| = {diff:.2e}"))
    return 0
