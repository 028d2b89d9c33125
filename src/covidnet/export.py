"""``covidnet export``: a checkpoint as an ONNX model that runs where PyTorch does not (ONNX Runtime on a
CPU box, an edge device), optionally quantised to int8.

The exported graph takes what ``load_image`` gives, the stored uint8 pixels ``(batch, 1, S, S)``, and
holds the rest of the preprocessing contract (scaling, resizing to the model's input, channel
replication, normalisation: ``tensors.model_input``, traced), so a client cannot normalise differently
from training. Its output is the logits ``(batch, K)``; the checkpoint's contract, class names,
temperature and operating point travel in the model's metadata (key ``covidnet``, JSON) and
``runtime.onnx.OnnxModel`` reads them. The batch dimension is dynamic.

Every export is checked against PyTorch on real inputs (images of a built dataset, else phantom
radiographs from ``data.synth``): the largest absolute difference of any class probability is reported,
and an fp32 export above ``PARITY_TOLERANCE`` fails and leaves no file. ``--int8`` is ONNX Runtime's
static post-training quantisation (QDQ, per-channel int8 weights, uint8 activations, MinMax
calibration on training images), and reports its accuracy against the fp32 model on the validation split.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import DISCLAIMER
from .config import option
from .contract import Contract, is_lung
from .data.records import CLASSES
from .errors import ConfigError, CovidnetError
from .runtime.onnx import ONNX_FORMAT, ONNX_META_KEY, OnnxModel
from .tasks import softmax

SEGMENTATION = "segmentation"

PARITY_TOLERANCE = 1e-4  # fp32: largest |p_onnx - p_torch| over classes and images
PARITY_IMAGES = 16


@dataclass
class ExportConfig:
    checkpoint: str = option(help="a checkpoint written by `covidnet train` or `covidnet lungs train` (best.pt)")
    out: str = option(help="the ONNX model to write", metavar="MODEL.onnx")
    format: str = option("onnx", "model format", choices=("onnx",))
    int8: bool = option(
        False, "post-training int8 quantisation (needs --data); the fp32 model is kept as MODEL.fp32.onnx"
    )
    opset: int | None = option(None, "ONNX opset (default: the exporter's)")
    data: str | None = option(
        None,
        "the built dataset: parity on its validation images, int8 calibration on its "
        "training images (default parity: phantoms)",
        metavar="DIR",
    )
    calibration_images: int = option(64, "training images the int8 model is calibrated on", metavar="N")
    quiet: bool = option(False, "no progress lines")


def _wrapper(model, forward):
    """The exported module: uint8 stored pixels (B, 1, S, S) as floats in [0, 1] -> ``forward(model, unit)``
    (the classifier's logits (B, K) or the segmenter's (B, 1, S, S)), ``model``'s weights its parameters."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, image):
            return forward(self.model, image.float() / 255.0)

    return Exported().eval()


def _parity_images(cfg: ExportConfig, contract: Contract) -> tuple[np.ndarray, str]:
    """Real inputs for the parity check: the validation split of ``--data``, else phantoms."""
    if cfg.data:
        store = _store(cfg.data, contract)
        rows = store.rows("val")
        rows = rows if len(rows) else store.rows()
        return store.read(rows[:PARITY_IMAGES]), f"{min(len(rows), PARITY_IMAGES)} validation images of {cfg.data}"
    from .data.synth import draw_radiograph

    rng = np.random.default_rng(0)
    draw = max(64, int(contract.stored_size * 1.1))  # then through the contract's pixels, as a file would go
    imgs = [contract.pixels(draw_radiograph(rng, draw, CLASSES[k % 3])[0]) for k in range(PARITY_IMAGES // 2)]
    return np.stack(imgs), f"{len(imgs)} phantom radiographs (give --data for real ones)"


def _store(data: str, contract: Contract):
    from .data.store import open_store

    store = open_store(data)
    contract.check_store(store, data)
    return store


def _write_meta(path: Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    props = {ONNX_META_KEY: json.dumps(meta)}
    if meta.get("classes"):
        props["classes"] = ",".join(meta["classes"])
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = f"covidnet {meta['arch']}. {DISCLAIMER}"
    onnx.save(model, str(path))


class _Calibration:
    """ONNX Runtime's calibration reader over stored training images, one at a time."""

    def __init__(self, images: np.ndarray, input_name: str):
        self._it = iter(images)
        self.input_name = input_name

    def get_next(self):
        img = next(self._it, None)
        return None if img is None else {self.input_name: np.ascontiguousarray(img[None, None])}

    def rewind(self):  # not needed by MinMax; part of the reader interface
        pass


def _accuracy(backend: OnnxModel, store, rows: np.ndarray, y: np.ndarray, batch: int = 32) -> float:
    """Accuracy on ``rows`` of ``store``, read ``batch`` rows at a time."""
    pred = [backend.logits(store.read(rows[k : k + batch])).argmax(1) for k in range(0, len(rows), batch)]
    return float((np.concatenate(pred) == y).mean())


def _check_config(cfg: ExportConfig) -> None:
    if cfg.format != "onnx":
        raise ConfigError(f"--format {cfg.format}: only onnx is supported")
    if cfg.int8 and not cfg.data:
        raise ConfigError(
            "--int8 needs --data DIR (a built dataset): its training images calibrate the quantisation "
            "and its validation split measures the accuracy change"
        )
    if cfg.calibration_images < 1:
        raise ConfigError(f"--calibration-images must be >= 1, not {cfg.calibration_images}")
    if not Path(cfg.out).parent.is_dir():
        raise CovidnetError(f"{Path(cfg.out).parent}: folder not found for --out")
    try:  # the exporter, the metadata writer and the parity check need all three
        for module in ("onnx", "onnxruntime", "onnxscript"):
            __import__(module)
    except ModuleNotFoundError as e:
        raise CovidnetError(
            f"covidnet export needs {e.name}, which is not installed: pip install 'covidnet[export]'"
        ) from None


def _to_onnx(cfg: ExportConfig, wrapper, images: np.ndarray, dest: Path, lungs: bool = False) -> None:
    """The dynamo exporter, with a dynamic batch dimension (and for a segmenter a dynamic side: it takes
    any stored size); a failure is one line naming the checkpoint."""
    import torch

    example = torch.from_numpy(images[:2, None].copy())
    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    if lungs:
        side = torch.export.Dim("side", min=16, max=4096)
        dims.update({2: side, 3: side})
    # a square input shares one Dim for both sides, which the exporter remarks on every time
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        try:
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=["image"],
                output_names=["lungs" if lungs else "logits"],
                dynamic_shapes={"image": dims},
                opset_version=cfg.opset,
                dynamo=True,
                verbose=False,
            )
            program.save(str(dest))
        except Exception as e:
            raise CovidnetError(f"{cfg.checkpoint}: ONNX export failed ({type(e).__name__}: {str(e)[:200]})") from None


def export_model(cfg: ExportConfig) -> dict:
    """Write ``cfg.out`` and return what was checked: parity, and for int8 the accuracy change. A lung
    segmenter (``covidnet train --task segmentation``) is exported too: see ``_lungs_side``."""
    from . import __version__
    from .checkpoint import read_checkpoint

    _check_config(cfg)
    out = Path(cfg.out)
    ckpt = read_checkpoint(cfg.checkpoint)  # read once: the task decides which side opens the model
    lungs = ckpt.get("task") == SEGMENTATION
    if lungs and cfg.int8:
        raise ConfigError(f"{cfg.checkpoint}: a lung segmenter; --int8 is for classifiers, export it in fp32")
    lm, wrapper, info = _lungs_side(cfg, ckpt) if lungs else _classifier_side(cfg, ckpt)
    images, where = _parity_images(cfg, lm.contract)
    info.update(format=ONNX_FORMAT, version=__version__, source_checkpoint=Path(cfg.checkpoint).name, int8=False)
    report: dict = {"config": asdict(cfg), "task": info["task"], "parity_inputs": where}

    with tempfile.TemporaryDirectory(prefix=".covidnet-export-", dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _to_onnx(cfg, wrapper, images, fp32, lungs)
        _write_meta(fp32, info)
        report["fp32"], onnx_fp32, ref = _parity(cfg, wrapper, lm.contract, fp32, images, lungs)
        if report["fp32"]["max_abs_prob_diff"] > PARITY_TOLERANCE:
            raise CovidnetError(
                f"{cfg.checkpoint}: the ONNX model's probabilities differ from PyTorch's by "
                f"{report['fp32']['max_abs_prob_diff']:.2e} (> {PARITY_TOLERANCE:g}) on {where}; nothing written"
            )
        final = fp32
        if cfg.int8:
            final = Path(tmp) / "int8.onnx"
            report["int8"] = _quantise(cfg, fp32, final, info, onnx_fp32, ref, images)
        os.replace(final, out)
        if cfg.int8:  # the fp32 model is kept beside the int8 one, for comparison and fallback
            os.replace(fp32, out.with_suffix(".fp32.onnx"))
            report["fp32_path"] = str(out.with_suffix(".fp32.onnx"))
    report["path"] = str(out)
    report["bytes"] = out.stat().st_size
    return report


def _classifier_side(cfg: ExportConfig, ckpt: dict):
    """A classifier: the graph is the contract's model input and the network (uint8 (B, 1, S, S) -> logits)."""
    from .runtime.pytorch import TorchModel

    if ckpt.get("task", "classification") != "classification":
        raise ConfigError(
            f"{cfg.checkpoint}: a {ckpt.get('task')} checkpoint; covidnet export takes classification and "
            "segmentation checkpoints"
        )
    lm = TorchModel.open(cfg.checkpoint, "cpu", ckpt=ckpt)
    meta = lm.meta
    info = {k: meta.get(k) for k in ("arch", "arch_args", "classes", "temperature", "operating_point", "memory_format")}
    info.update(task=lm.task.name, preprocess=lm.contract.to_dict())
    return lm, _wrapper(lm.model, lambda net, unit: lm.task.forward(net, unit, lm.contract, lm.memory_format)), info


def _lungs_side(cfg: ExportConfig, ckpt: dict):
    """A lung segmenter: the graph is ``models.segment.lung_logits`` (uint8 pixels (B, 1, S, S) of any side S
    -> lung logits (B, 1, S, S)), so ``data build --lungs MODEL.onnx`` segments a build of any stored size
    as the checkpoint does; parity is on the sigmoid probabilities, and the masks' agreement is reported."""
    from .models.segment import lung_logits
    from .runtime.pytorch import TorchModel

    lm = TorchModel.open(cfg.checkpoint, "cpu", ckpt=ckpt)
    wrapper = _wrapper(lm.model, lambda net, unit: lung_logits(net, unit, lm.contract, lm.memory_format, any_side=True))
    meta = lm.meta
    info = {k: meta.get(k) for k in ("arch", "arch_args", "memory_format", "threshold", "classes")}
    info.update(
        task=SEGMENTATION,
        preprocess=lm.contract.to_dict(),
        train_config={"eval_batch_size": lm.batch_size},
    )
    return lm, wrapper, info


def _parity(cfg: ExportConfig, wrapper, contract: Contract, fp32: Path, images: np.ndarray, lungs: bool):
    """The graph against PyTorch on ``images`` (one batch of one, one of the rest: the batch dimension is
    dynamic): the largest probability difference (and for a segmenter the share of pixels whose mask
    differs), the ONNX model on ONNX Runtime, and PyTorch's output."""
    import torch

    with torch.inference_mode():
        # parity on the graph's own output, before any fitted temperature: a large temperature flattens
        # every probability towards 1/K and would make the check vacuous
        ref = wrapper(torch.from_numpy(contract.standardise(images)[:, None].copy())).numpy()
    onnx_model = OnnxModel(fp32, device="cpu")
    if lungs:
        from scipy.special import expit

        logits = np.concatenate([onnx_model.batch_logits(images[:1]), onnx_model.batch_logits(images[1:])])
        got, want = expit(logits), expit(ref[:, 0])
        agree = float((is_lung(logits) == is_lung(ref[:, 0])).mean())
        check = {"max_abs_prob_diff": float(np.abs(got - want).max()), "mask_pixel_agreement": agree}
        return {**check, "tolerance": PARITY_TOLERANCE, "images": len(images)}, onnx_model, want
    got = softmax(np.concatenate([onnx_model.logits(images[:1]), onnx_model.logits(images[1:])]))
    ref = softmax(ref)
    check = {"max_abs_prob_diff": float(np.abs(got - ref).max()), "tolerance": PARITY_TOLERANCE}
    return {**check, "images": len(images)}, onnx_model, ref


def _quantise(
    cfg: ExportConfig, fp32: Path, dest: Path, info: dict, onnx_fp32: OnnxModel, ref: np.ndarray, images: np.ndarray
) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    store = _store(cfg.data, Contract.from_dict(info["preprocess"]))
    train_rows = store.rows("train")
    if len(train_rows) == 0:
        raise ConfigError(f"{cfg.data}: no training images to calibrate int8 quantisation on")
    pick = np.random.default_rng(0).choice(train_rows, size=min(cfg.calibration_images, len(train_rows)), replace=False)
    prepared = dest.with_name("prepared.onnx")
    _progress(cfg, f"calibrating int8 on {len(pick)} training images")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared),
        str(dest),
        _Calibration(onnx_fp32.contract.standardise(store.read(np.sort(pick))), onnx_fp32.input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    _write_meta(
        dest,
        {
            **info,
            "int8": True,
            "int8_calibration": {"images": int(len(pick)), "split": "train", "method": "MinMax, QDQ, per-channel"},
        },
    )
    onnx_int8 = OnnxModel(dest, device="cpu")
    got = softmax(onnx_int8.logits(images))
    out = {"max_abs_prob_diff": float(np.abs(got - ref).max()), "calibration_images": int(len(pick))}
    val = store.rows("val")
    if len(val):
        _progress(cfg, f"accuracy of fp32 and int8 on {len(val)} validation images")
        y = store.labels(val, binary=list(info["classes"]) != list(CLASSES))
        a32, a8 = _accuracy(onnx_fp32, store, val, y), _accuracy(onnx_int8, store, val, y)
        out.update(val_images=int(len(val)), val_accuracy_fp32=a32, val_accuracy_int8=a8, val_accuracy_change=a8 - a32)
    return out


def _progress(cfg: ExportConfig, what: str) -> None:
    if not cfg.quiet:
        print(f"covidnet export: {what} ...", file=sys.stderr, flush=True)


__all__ = ["ExportConfig", "PARITY_TOLERANCE", "export_model"]
