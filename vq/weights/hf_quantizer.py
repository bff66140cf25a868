"""transformers integration: ``AutoModelForCausalLM.from_pretrained(DIR)`` on a compressed directory.

A compressed directory's ``config.json`` carries a ``quantization_config`` with ``quant_method: "vq"``
and the layout of every compressed Linear (:func:`quantization_config`). :class:`VQHfQuantizer`,
registered with transformers' public API (``register_quantization_config`` /
``register_quantizer``), reads it when a model is loaded:

1. before the weights load, every compressed ``nn.Linear`` (still on the meta device) is replaced
   by a :class:`PackedSlot` whose meta buffers have exactly the names, shapes and dtypes of that
   layer's tensors in the checkpoint (read from the safetensors headers);
2. transformers loads the checkpoint into those buffers (packed codes stay packed; nothing of the
   dense weight's shape is ever allocated);
3. after loading, each slot becomes a :class:`~vq.weights.nn.VQLinear` whose ``codes`` buffer *is*
   the loaded packed tensor; the codebooks are decoded by the same :class:`QuantizedWeight` code as
   :func:`vq.load`, so both give bit-identical logits.

Two forms of a layer's tensors are read (the ``form`` of its config entry):

``stored``  what ``vq compress`` writes (docs/formats.md): ``weight`` (the packed codes), ``scales``
            and the fp16 or 8-bit codebooks (or the ``uniform`` kind's group scales/zeros), ``bias``.
``module``  what ``save_pretrained`` writes: the ``VQLinear``'s own buffers, with ``codes`` saved
            under ``weight`` (``codebooks``, ``scales``, ``bias`` as they are in memory).

The packed codes are stored under ``NAME.weight`` in both forms on purpose: a transformers that
does not know ``vq`` (vq not imported) skips the unknown ``quantization_config`` with a warning,
and then finds an int32 ``(out, words)`` tensor where the Linear expects ``(out, in)`` — a size
mismatch, which ``from_pretrained`` raises instead of leaving the layers randomly initialised.

``import vq`` does not import transformers (it costs ~5 s): an import hook installed by
``vq/__init__.py`` imports this module, which registers the quantizer, the moment
``transformers.quantizers.auto`` is imported — or at once if it already is.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

__all__ = [
    "QUANT_METHOD",
    "CODES_KEY",
    "VQQuantizationConfig",
    "VQHfQuantizer",
    "PackedSlot",
    "quantization_config",
    "attach",
    "register",
]

log = logging.getLogger(__name__)

QUANT_METHOD = "vq"
#: the checkpoint key suffix of a compressed layer's packed codes (see the module docstring)
CODES_KEY = "weight"
_FORMS = ("stored", "module")
_STORED_KEYS = ("kind", "out_features", "in_features", "d", "K", "bits", "tile_rows", "tile_groups")
_MODULE_KEYS = ("in_features", "out_features", "d", "M", "K", "bits", "tile_rows", "tile_groups")


# -- the config ----------------------------------------------------------------------------------
def quantization_config(layers: dict[str, Any], biases: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The ``quantization_config`` dict of a directory written by :func:`vq.weights.format.save`.

    ``layers`` maps each compressed Linear's name to its :class:`QuantizedWeight`; ``biases`` names
    the ones that store a bias.
    """
    entries = {}
    for name, qw in layers.items():
        meta = qw.meta()
        entries[name] = {"form": "stored", **{k: meta[k] for k in _STORED_KEYS}, "bias": name in biases}
    return VQQuantizationConfig(layers=entries).to_dict()


class VQQuantizationConfig(QuantizationConfigMixin):
    """``quantization_config`` of a vq model: ``{"quant_method": "vq", "format_version": 1,
    "layers": {name: {"form": "stored" | "module", ...layout..., "bias": bool}}}``.

    A ``stored`` entry holds the :class:`QuantizedWeight` layout fields (kind, out_features,
    in_features, d, K, bits, tile_rows, tile_groups); a ``module`` entry the ``VQLinear.config()``
    fields (in_features, out_features, d, M, K, bits, tile_rows, tile_groups).
    """

    FORMAT_VERSION = 1

    def __init__(self, layers: dict[str, dict[str, Any]], format_version: int = 1,
                 quant_method: str = QUANT_METHOD, **kwargs: Any) -> None:
        if quant_method != QUANT_METHOD:
            raise ValueError(f"quant_method must be {QUANT_METHOD!r}, got {quant_method!r}")
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.layers = {name: dict(entry) for name, entry in layers.items()}
        if kwargs:
            log.info("vq quantization_config: ignoring unknown fields %s", sorted(kwargs))
        self.post_init()

    def post_init(self) -> None:
        if self.format_version != self.FORMAT_VERSION:
            raise ValueError(
                f"vq quantization_config format_version {self.format_version} is not supported "
                f"(this vq reads {self.FORMAT_VERSION}); upgrade vq"
            )
        if not isinstance(self.layers, dict) or not self.layers:
            raise ValueError("vq quantization_config lists no compressed layers")
        for name, entry in self.layers.items():
            form = entry.get("form")
            if form not in _FORMS:
                raise ValueError(f"vq quantization_config: {name}: form must be one of {_FORMS}, got {form!r}")
            want = (_STORED_KEYS if form == "stored" else _MODULE_KEYS) + ("bias",)
            missing = [k for k in want if k not in entry]
            if missing:
                raise ValueError(f"vq quantization_config: {name}: entry lacks {missing}")


# -- the quantizer -------------------------------------------------------------------------------
class PackedSlot(nn.Module):
    """Stand-in for one compressed Linear while transformers loads the checkpoint: one buffer per
    stored tensor, created on the meta device with the checkpoint's shape and dtype."""

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        super().__init__()
        for name, (shape, dtype) in specs.items():
            self.register_buffer(name, torch.empty(shape, dtype=dtype, device="meta"))

    def tensors(self) -> dict[str, Tensor]:
        return dict(self.named_buffers(recurse=False))


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _checkpoint_specs(files: list[str], prefixes: set[str]) -> dict[str, dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """layer name -> {tensor suffix: (shape, dtype)} from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    specs: dict[str, dict[str, tuple[tuple[int, ...], torch.dtype]]] = {}
    for file in files:
        if not str(file).endswith(".safetensors"):
            raise ValueError(f"vq models load from safetensors checkpoints, got {file}")
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                layer, _, suffix = key.rpartition(".")
                if layer in prefixes:
                    sl = f.get_slice(key)
                    specs.setdefault(layer, {})[suffix] = (tuple(sl.get_shape()), _ST_DTYPES[sl.get_dtype()])
    return specs


def _module_tensors(name: str, entry: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``VQLinear`` state (codes, codebooks, scales[, bias]) of one layer's checkpoint tensors."""
    from vq.weights.format import QuantizedWeight

    tensors = dict(tensors)
    if CODES_KEY not in tensors:
        raise ValueError(f"{name}: the checkpoint has no packed codes ({name}.{CODES_KEY})")
    bias = tensors.pop("bias", None)
    if (bias is not None) != bool(entry["bias"]):
        raise ValueError(f"{name}: config/tensor mismatch: bias is {'not ' * (bias is None)}stored, "
                         f"the config says bias={entry['bias']}")
    tensors["codes"] = tensors.pop(CODES_KEY)
    if entry["form"] == "module":
        state = tensors
    else:  # decoded exactly as vq.weights.format.load does (QuantizedWeight.to_module)
        qw = QuantizedWeight.from_stored(entry, tensors, name=name)
        state = {"codes": qw.tensors["codes"], "codebooks": qw.codebooks(), "scales": qw.scales()}
        if bias is not None:
            bias = bias.float()
    if bias is not None:
        state["bias"] = bias
    return state


def _build_layer(name: str, entry: dict[str, Any], state: dict[str, Tensor]) -> nn.Module:
    """A ``VQLinear`` holding ``state`` itself (no copy); VQLinear's load hook checks the layout."""
    from vq.weights.nn import VQLinear

    if entry["form"] == "module":
        layout = {k: entry[k] for k in _MODULE_KEYS}
    else:
        layout = {k: entry[k] for k in _MODULE_KEYS if k != "M"} | {"M": 1}
    for k in ("codebooks", "scales"):
        if k not in state:
            raise ValueError(f"{name}: the checkpoint has no {name}.{k}")
    layer = VQLinear(**layout, bias="bias" in state, dtype=state["codebooks"].dtype,
                     scale_dtype=state["scales"].dtype, device="meta")
    layer.load_state_dict(state, strict=True, assign=True)
    return layer


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def module_entry(layer: nn.Module) -> dict[str, Any]:
    """The ``module``-form config entry of a ``VQLinear``."""
    return {"form": "module", **layer.config()}


class VQHfQuantizer(HfQuantizer):
    """Loads vq-compressed checkpoints (pre-quantized only: vq compresses with calibration data,
    ``vq compress`` / :func:`vq.compress`, not on load)."""

    requires_calibration = True
    quantization_config: VQQuantizationConfig

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("vq models cannot be offloaded to disk; use a device_map without 'disk'")

    def _process_model_before_weight_loading(self, model: nn.Module, checkpoint_files: list[str] | None = None,
                                             **kwargs: Any) -> None:
        layers = self.quantization_config.layers
        if not checkpoint_files:
            raise ValueError("vq models load from safetensors checkpoint files (no checkpoint file was given)")
        specs = _checkpoint_specs(checkpoint_files, set(layers))
        for name, entry in layers.items():
            try:
                linear = model.get_submodule(name)
            except AttributeError as e:
                raise ValueError(f"vq quantization_config names {name}, which the model does not have") from e
            if not isinstance(linear, nn.Linear):
                raise ValueError(f"vq quantization_config names {name}, which is a {type(linear).__name__}, "
                                 "not an nn.Linear")
            if (linear.out_features, linear.in_features) != (entry["out_features"], entry["in_features"]):
                raise ValueError(
                    f"{name}: config/model mismatch: the model's Linear is "
                    f"({linear.out_features}, {linear.in_features}), the vq layout "
                    f"({entry['out_features']}, {entry['in_features']})"
                )
            if name not in specs:
                raise ValueError(f"{name}: the checkpoint holds no tensors for this compressed layer")
            _set_module(model, name, PackedSlot(specs[name]))

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> None:
        layers = self.quantization_config.layers
        for name, entry in list(layers.items()):
            slot = model.get_submodule(name)
            if not isinstance(slot, PackedSlot):
                raise TypeError(f"{name}: expected the loading slot, found {type(slot).__name__}")
            layer = _build_layer(name, entry, _module_tensors(name, entry, slot.tensors()))
            _set_module(model, name, layer)
            # what save_pretrained writes from now on: the VQLinear's own buffers
            layers[name] = module_entry(layer)
        model.requires_grad_(False)

    def get_state_dict_and_metadata(self, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The model's state dict with every ``VQLinear``'s ``codes`` saved under ``weight``."""
        from vq.weights.nn import VQLinear

        renames = {f"{n}.codes": f"{n}.{CODES_KEY}" for n, m in model.named_modules() if isinstance(m, VQLinear)}
        state = model.state_dict()
        return {renames.get(k, k): v for k, v in state.items()}, {}

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def attach(model: nn.Module) -> None:
    """Give a model built by :func:`vq.load` the quantizer and ``quantization_config`` that
    ``from_pretrained`` would have, so ``model.save_pretrained(DIR)`` writes a directory that
    ``from_pretrained`` (after ``import vq``) reads and that fails to load without vq."""
    from vq.weights.nn import VQLinear

    entries = {n: module_entry(m) for n, m in model.named_modules() if isinstance(m, VQLinear)}
    config = VQQuantizationConfig(layers=entries)
    model.config.quantization_config = config
    model.hf_quantizer = VQHfQuantizer(config, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD


# -- registration --------------------------------------------------------------------------------
def register() -> None:
    """Register the config and quantizer under ``"vq"`` (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(VQQuantizationConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(VQHfQuantizer)


register()
