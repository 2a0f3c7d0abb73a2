"""Which precision a stage trains and generates in: the one rule every stage follows (`model.bf16`).

bf16 autocast (float32 weights and optimizer state, bf16 matmuls) pays where the hardware does bf16
natively: CUDA devices with bf16 support, and CPUs with AVX512_BF16 or AMX. Elsewhere torch emulates
it, and a CPU without native bf16 runs bf16 autocast 10-40x slower than float32 (a 2-core AVX2 EPYC:
97.6 s against 2.4 s for the same 50 linear forward/backward passes). So `auto` asks the hardware.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Literal

import torch

Setting = Literal["auto", True, False]

_warned: set[str] = set()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: CUDA with bf16 support, a CPU with AVX512_BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.6; older ones: assume not
    caps = capabilities() if capabilities is not None else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def use_bf16(setting: Setting, device: torch.device) -> bool:
    """`model.bf16` resolved for `device`: auto is bf16 exactly where it is native; true is bf16 anyway,
    said once when it will be slow; false is float32."""
    if setting == "auto":
        return native_bf16(device)
    if setting and not native_bf16(device) and device.type not in _warned:
        _warned.add(device.type)
        print(f"reftflow: warning: model.bf16 is true, but this {device.type} has no native bf16: bf16 autocast "
              "runs 10-40x slower than float32 here (model.bf16: auto picks float32)", file=sys.stderr, flush=True)
    return bool(setting)


def name(bf16: bool) -> str:
    """The precision as the run record and `reftflow status` show it."""
    return "bf16" if bf16 else "float32"


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` when `bf16`, else nothing (float32)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
