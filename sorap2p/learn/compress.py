"""Update compression: float16, and blockwise int8 with error feedback.

* ``fp16``: halves the bytes; the error is float16 rounding (relative 2**-11), values beyond
  65504 saturate to inf (clip updates first when that can happen).
* ``int8``: symmetric per-block quantisation: each block of `block` values stores one float32
  scale ``max|x| / 127`` and int8 codes ``round(x / scale)`` (~4x smaller). `ErrorFeedback`
  keeps, per trainer, what quantisation dropped and adds it to the next round's delta, so the
  error does not accumulate over rounds (Seide et al. 2014; Karimireddy et al. 2019).

All functions return new tensors and leave their inputs untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError

DEFAULT_BLOCK = 256


def to_fp16(delta: torch.Tensor) -> torch.Tensor:
    return delta.to(torch.float16)


def from_fp16(packed: torch.Tensor) -> torch.Tensor:
    if packed.dtype != torch.float16:
        raise RemoteProtocolError("expected float16 values")
    return packed.to(torch.float32)


@dataclass(frozen=True, slots=True)
class Int8Blocks:
    """Blockwise int8 codes: ``codes`` (padded to whole blocks), one scale per block."""

    codes: torch.Tensor
    scales: torch.Tensor
    size: int
    block: int

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.scales.numel()

    def validate(self) -> None:
        """Check the shapes and dtypes of a received value (RemoteProtocolError otherwise)."""
        nblocks = -(-self.size // self.block) if self.block > 0 else -1
        if (
            self.block < 1
            or self.size < 0
            or self.codes.dtype != torch.int8
            or self.scales.dtype != torch.float32
            or self.codes.shape != (nblocks * self.block,)
            or self.scales.shape != (nblocks,)
            or not bool(torch.isfinite(self.scales).all())
        ):
            raise RemoteProtocolError("malformed int8 block encoding")


def quantize_int8(delta: torch.Tensor, block: int = DEFAULT_BLOCK) -> Int8Blocks:
    """Quantise a float32 vector to blockwise int8 (round to nearest, ties to even)."""
    if delta.dim() != 1 or delta.dtype != torch.float32:
        raise LocalProtocolError("quantize_int8 takes a float32 vector")
    if block < 1:
        raise LocalProtocolError("block must be >= 1")
    size = delta.numel()
    nblocks = -(-size // block)
    padded = torch.zeros(nblocks * block, dtype=torch.float32)
    padded[:size] = delta
    blocks = padded.view(nblocks, block)
    scales = blocks.abs().amax(dim=1) / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return Int8Blocks(codes.reshape(-1), scales, size, block)


def dequantize_int8(q: Int8Blocks) -> torch.Tensor:
    q.validate()
    blocks = q.codes.view(-1, q.block).to(torch.float32) * q.scales[:, None]
    return blocks.reshape(-1)[: q.size].clone()


class ErrorFeedback:
    """Per-trainer residual memory for int8 quantisation (one instance per trainer)."""

    def __init__(self, size: int, block: int = DEFAULT_BLOCK) -> None:
        self._residual = torch.zeros(size, dtype=torch.float32)
        self._block = block

    def compress(self, delta: torch.Tensor) -> Int8Blocks:
        """Quantise ``delta + residual`` and keep the new residual."""
        corrected = delta + self._residual
        q = quantize_int8(corrected, self._block)
        self._residual = corrected - dequantize_int8(q)
        return q

    @property
    def residual(self) -> torch.Tensor:
        """A copy of what has been dropped so far and not yet sent."""
        return self._residual.clone()

    @property
    def residual_norm(self) -> float:
        return float(torch.linalg.vector_norm(self._residual))

    def statistics(self) -> dict[str, float]:
        return {"residual_norm": self.residual_norm, "size": float(self._residual.numel())}
