"""Weight quantization shared by the one-shot methods, the packed formats and the kernels:
the group grid (:mod:`.grid`), the quantization buffers on a model (:mod:`.state`) and the
embedding / LM head quantizer (:mod:`.embedding`). The methods that choose the codes (GPTQ,
SparseGPT's joint mode, GQSA) live in :mod:`sparsecraft.oneshot`."""

from sparsecraft.quant.grid import QuantSpec, parse_spec
from sparsecraft.quant.state import QuantState, get_quant, quantized_params, remove_quant, set_quant

__all__ = ["QuantSpec", "QuantState", "get_quant", "parse_spec", "quantized_params", "remove_quant", "set_quant"]
