"""Paged attention: the torch reference backend (the CPU path) and backend selection.

The reference implements the kernel interface shared with `rsllm.kernels` (Triton):

    store_kv(key[T,Hkv,D], value[T,Hkv,D], key_cache, value_cache, slot_mapping[T]) -> None
    paged_attention(query[T,Hq,D], key_cache, value_cache, query_start_loc[R+1], seq_lens[R],
                    block_tables[R,B], scale, max_query_len, max_seq_len) -> out[T,Hq,D]

Caches are `[num_blocks, block_size, num_kv_heads, head_dim]`. A request's queries are the
LAST q_len tokens of its seq_len context (causal), which covers prefill, chunked prefill,
prefix hits and decode in one call.

The model does not call `paged_attention` per layer: the index work that depends only on
the batch (which rows are decodes, gather indices, masks) is done once per step in
`AttentionMetadata` (`plan`), so each layer only gathers its blocks and runs SDPA.
Decodes (q_len 1) go through one batched SDPA with the query heads of a KV head folded
into rows (no K/V repeat for GQA); prefills through one padded SDPA over the requests
that prefill this step.

`CpuBackend` (the default on CPUs) is the reference with two changes: its caches are
tiled (`kv_layout`), and decodes in float32 or bfloat16 go to the Rust kernel
`rsllm._core.paged_decode_attention`, which reads each sequence's keys and values once
from their tiles instead of gathering them into a dense copy first (the gather moved
the cache through memory three times per step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from rsllm import _core
from rsllm.errors import InvalidRequestError
from rsllm.model.cpu_ops import KERNEL_DTYPES, as_numpy, persistent_numpy
from rsllm.model.kv_layout import PAGED, TILED, KVLayout


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write each token's K and V [T, Hkv, D] into its slot (block * block_size + offset)."""
    PAGED.store(key, value, key_cache, value_cache, slot_mapping)


@dataclass
class _DecodePlan:
    rows: torch.Tensor | None  # [Rd] token rows of the decodes; None: rows are 0..T-1
    block_tables: torch.Tensor  # [Rd, nb]
    mask: torch.Tensor  # [Rd, 1, 1, nb * block_size] bool, True = attend
    kernel_tables: np.ndarray  # [Rd, nb] int32, C-contiguous: the Rust kernel's copy
    kernel_seq_lens: np.ndarray  # [Rd] int32
    # Per-step scratch shared by all layers (same shapes in every layer), by dtype:
    # gather buffers, the additive mask, the head-block identity.
    scratch: dict[torch.dtype, tuple[torch.Tensor, ...]] = field(default_factory=dict)


@dataclass
class _PrefillPlan:
    rows: torch.Tensor  # [Rp, Qmax] token rows (padding points at a valid row)
    valid: torch.Tensor  # [Rp * Qmax] bool, the real queries
    out_rows: torch.Tensor  # [n_valid] token rows of the real queries, in `valid` order
    block_tables: torch.Tensor  # [Rp, nb]
    mask: torch.Tensor | None  # [Rp, 1, Qmax, L] bool; None: plain causal (no prefix, Rp 1)
    kv_len: int  # keys to attend to (a prefix of the gathered blocks)
    spans: list[tuple[int, int, int]]  # per request: (first token row, q_len, seq_len)
    # Additive masks of the half-precision matmul paths, shared by layers: by (dtype,
    # group) for the batched one, by (dtype, -1 - r) for request r of `_prefill_one`.
    bias: dict[tuple[torch.dtype, int], torch.Tensor] = field(default_factory=dict)


@dataclass
class ReferencePlan:
    """Per-step index tensors of the torch reference, shared by every layer."""

    num_tokens: int
    decode: _DecodePlan | None
    prefill: _PrefillPlan | None


def plan_reference(
    query_start_loc: np.ndarray,
    seq_lens: np.ndarray,
    block_tables: np.ndarray,
    block_size: int,
    device: torch.device,
) -> ReferencePlan:
    """Split the batch into decodes and prefills and build their gather indices and masks."""
    qsl = np.asarray(query_start_loc, dtype=np.int64)
    sl = np.asarray(seq_lens, dtype=np.int64)
    bt = np.asarray(block_tables, dtype=np.int64)
    q_lens = qsl[1:] - qsl[:-1]
    num_tokens = int(qsl[-1])
    if (q_lens < 0).any() or (q_lens > sl).any():
        raise InvalidRequestError("attention metadata: query lengths must be in [0, seq_len]")
    if bt.ndim != 2 or bt.shape[0] != len(sl):
        raise InvalidRequestError("attention metadata: block_tables must be [R, B]")
    if (sl > bt.shape[1] * block_size).any():
        raise InvalidRequestError("attention metadata: a seq_len exceeds its block table")

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    decode = prefill = None
    dec = np.nonzero(q_lens == 1)[0]
    if len(dec):
        nb = int(-(-sl[dec].max() // block_size))
        positions = np.arange(nb * block_size)
        all_decode = len(dec) == len(q_lens)
        decode = _DecodePlan(
            rows=None if all_decode else tensor(qsl[dec]),
            block_tables=tensor(bt[dec, :nb]),
            mask=tensor(positions[None, :] < sl[dec, None]).view(len(dec), 1, 1, -1),
            kernel_tables=np.ascontiguousarray(bt[dec, :nb], dtype=np.int32),
            kernel_seq_lens=np.ascontiguousarray(sl[dec], dtype=np.int32),
        )
    pre = np.nonzero(q_lens > 1)[0]
    if len(pre):
        pq, ps = q_lens[pre], sl[pre]
        qmax = int(pq.max())
        nb = int(-(-ps.max() // block_size))
        kv_len = nb * block_size
        i = np.arange(qmax)
        valid = i[None, :] < pq[:, None]  # [Rp, Qmax]
        rows = np.where(valid, qsl[pre, None] + i[None, :], qsl[pre, None])
        # query i of a request sits at position seq_len - q_len + i and sees keys <= it.
        qpos = (ps - pq)[:, None] + i[None, :]  # [Rp, Qmax]
        mask = None
        if len(pre) == 1 and ps[0] == pq[0]:
            kv_len = qmax  # one prompt with no cached prefix: plain causal over its keys
        else:
            mask = tensor(np.arange(kv_len)[None, None, :] <= qpos[:, :, None])[:, None]
        prefill = _PrefillPlan(
            rows=tensor(rows),
            valid=tensor(valid.reshape(-1)),
            out_rows=tensor(rows[valid]),
            block_tables=tensor(bt[pre, :nb]),
            mask=mask,
            kv_len=kv_len,
            spans=[(int(qsl[r]), int(q), int(sl_)) for r, q, sl_ in zip(pre, pq, ps, strict=True)],
        )
    return ReferencePlan(num_tokens=num_tokens, decode=decode, prefill=prefill)


def _gather(
    layout: KVLayout, cache: torch.Tensor, block_tables: torch.Tensor, values: bool
) -> torch.Tensor:
    """[R, nb] block ids -> [R, Hkv, nb * block_size, D] (a strided view of one gather)."""
    r, nb = block_tables.shape
    dense = layout.gather(cache, block_tables.view(-1), values)  # [R * nb, bs, Hkv, D]
    _, bs, hkv, d = dense.shape
    return dense.view(r, nb * bs, hkv, d).transpose(1, 2)


# Below this many decodes one SDPA call is cheapest; above, SDPA's per-(request, head)
# work on strided K/V dominates and the batched matmuls of `_decode` win (measured).
_SDPA_MAX_DECODES = 3


def _decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    dp: _DecodePlan,
    scale: float,
    layout: KVLayout,
) -> torch.Tensor:
    """One query per request: [R, Hq, D] -> [R, Hq, D].

    Large batches: each request's gathered K stays [L, Hkv * D] (contiguous), and the
    query becomes block-diagonal [Hq, Hkv * D] (head h's queries only in h's columns),
    so scores and output are two big batched matmuls with no K/V transpose or GQA repeat;
    the output keeps the diagonal blocks. Costs Hkv x the FLOPs of attention, which are
    small next to the memory traffic of the gather.
    """
    r, hq, d = query.shape
    nb = dp.block_tables.shape[1]
    bs, hkv, _ = layout.dims(key_cache)
    group = hq // hkv
    if r <= _SDPA_MAX_DECODES:
        k = _gather(layout, key_cache, dp.block_tables, values=False)
        v = _gather(layout, value_cache, dp.block_tables, values=True)
        q = query.view(r, hkv, group, d)  # query heads of a KV head as rows: no K/V repeat
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=dp.mask, scale=scale)
        return out.reshape(r, hq, d)
    scratch = dp.scratch.get(query.dtype)
    if scratch is None:
        length = nb * bs
        bias = torch.zeros(r, 1, length, dtype=query.dtype, device=query.device)
        bias.masked_fill_(~dp.mask.view(r, 1, length), float("-inf"))
        eye = torch.eye(hkv, dtype=query.dtype, device=query.device).view(1, hkv, 1, hkv, 1)
        kbuf = key_cache.new_empty(r * nb, bs, hkv, d)
        vbuf = value_cache.new_empty(r * nb, bs, hkv, d)
        scratch = dp.scratch[query.dtype] = (bias, eye, kbuf, vbuf)
    bias, eye, kbuf, vbuf = scratch
    ids = dp.block_tables.view(-1)
    if layout is PAGED:  # straight into the step's buffers
        k = torch.index_select(key_cache, 0, ids, out=kbuf)
        v = torch.index_select(value_cache, 0, ids, out=vbuf)
    else:
        k, v = layout.gather(key_cache, ids, False), layout.gather(value_cache, ids, True)
    k, v = k.view(r, -1, hkv * d), v.view(r, -1, hkv * d)  # [R, L, Hkv*D]
    qb = (query.view(r, hkv, group, 1, d) * eye).view(r, hq, hkv * d)  # block-diagonal
    scores = torch.baddbmm(bias, qb, k.transpose(1, 2), alpha=scale)  # [R, Hq, L]
    o = torch.bmm(scores.softmax(dim=-1), v).view(r, hkv, group, hkv, d)
    return torch.diagonal(o, dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(r, hq, d)


def kernel_supports(query: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """Whether `decode_kernel` takes this call: CPU tensors in float32 or bfloat16."""
    return (
        query.device.type == "cpu"
        and key_cache.device.type == "cpu"
        and query.dtype == key_cache.dtype
        and query.dtype in KERNEL_DTYPES
    )


def decode_kernel(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: np.ndarray,
    seq_lens: np.ndarray,
    scale: float,
) -> torch.Tensor:
    """One query per sequence [R, Hq, D] -> [R, Hq, D] by the Rust kernel (GIL released)."""
    query = query.contiguous()
    out = torch.empty_like(query)
    _core.paged_decode_attention(
        as_numpy(query),
        persistent_numpy(key_cache),
        persistent_numpy(value_cache),
        block_tables,
        seq_lens,
        scale,
        as_numpy(out),
        KERNEL_DTYPES[query.dtype],
    )
    return out


def attend_reference(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    plan: ReferencePlan,
    scale: float,
    use_kernel: bool = False,
    layout: KVLayout = PAGED,
) -> torch.Tensor:
    """query [T, Hq, D] -> out [T, Hq, D] from the paged cache, following `plan`.
    `use_kernel`: decodes go to `decode_kernel` where it supports the dtype (which reads
    the tiled layout only)."""
    t, hq, d = query.shape
    if query.dtype != key_cache.dtype:
        query = query.to(key_cache.dtype)
    dp, pp = plan.decode, plan.prefill

    def decode(q: torch.Tensor, dp: _DecodePlan) -> torch.Tensor:
        if use_kernel and layout is TILED and kernel_supports(q, key_cache):
            tables, lens = dp.kernel_tables, dp.kernel_seq_lens
            return decode_kernel(q, key_cache, value_cache, tables, lens, scale)
        return _decode(q, key_cache, value_cache, dp, scale, layout)

    if dp is not None and pp is None and dp.rows is None:
        return decode(query, dp)
    out = query.new_empty(t, hq, d)
    if dp is not None:
        assert dp.rows is not None
        out.index_copy_(0, dp.rows, decode(query.index_select(0, dp.rows), dp))
    if pp is not None and use_kernel and len(pp.spans) > 1 and _half_on_cpu(query):
        for r in range(len(pp.spans)):
            _prefill_one(query, key_cache, value_cache, pp, r, scale, out, layout)
    elif pp is not None:
        rp, qmax = pp.rows.shape
        q = query[pp.rows].transpose(1, 2)  # [Rp, Hq, Qmax, D]
        k = _gather(layout, key_cache, pp.block_tables, values=False)[:, :, : pp.kv_len]
        v = _gather(layout, value_cache, pp.block_tables, values=True)[:, :, : pp.kv_len]
        if _use_matmul_prefill(q, k):
            o = _prefill_matmul(q, k, v, pp, scale)
        else:
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=pp.mask, is_causal=pp.mask is None, scale=scale, enable_gqa=True
            )
        o = o.transpose(1, 2).reshape(rp * qmax, hq, d)  # [Rp * Qmax, Hq, D]
        out.index_copy_(0, pp.out_rows, o[pp.valid])
    return out


def _half_on_cpu(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)


def _prefill_one(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    pp: _PrefillPlan,
    r: int,
    scale: float,
    out: torch.Tensor,
    layout: KVLayout,
) -> None:
    """Prefill request r of the plan alone, into its rows of `out`. The batched path pads
    every prefill of the step to the longest query and the longest context; with
    512-token steps on a CPU (a long prompt's chunk beside short prompts) that padding
    was most of the prefill attention's work (measured: 2.2 s of a 14 s run)."""
    start, ql, sl = pp.spans[r]
    bs, hkv, d = layout.dims(key_cache)
    hq = query.shape[1]
    group = hq // hkv
    ids = pp.block_tables[r, : -(-sl // bs)]
    k = layout.gather(key_cache, ids, False).view(-1, hkv, d)[:sl].permute(1, 2, 0)  # [Hkv, D, L]
    v = layout.gather(value_cache, ids, True).view(-1, hkv, d)[:sl].transpose(0, 1)  # [Hkv, L, D]
    q = query[start : start + ql].view(ql, hkv, group, d).permute(1, 2, 0, 3)
    q = q.reshape(hkv, group * ql, d)  # the query heads of a KV head as rows
    key = (q.dtype, -1 - r)
    bias = pp.bias.get(key)
    if bias is None:
        # Query i sits at position sl - ql + i and sees keys up to it.
        qpos = torch.arange(sl - ql, sl, device=q.device).repeat(group)
        allowed = torch.arange(sl, device=q.device)[None, :] <= qpos[:, None]
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
        bias.masked_fill_(~allowed, float("-inf"))
        pp.bias[key] = bias = bias[None]  # [1, group * ql, L]
    scores = torch.baddbmm(bias, q, k, alpha=scale)  # [Hkv, group * ql, L]
    o = torch.bmm(scores.softmax(dim=-1), v).view(hkv, group, ql, d)
    out[start : start + ql] = o.permute(2, 0, 1, 3).reshape(ql, hq, d)


# The half-precision prefill materialises its scores [Rp, Hq, Qmax, L]; above this many
# elements (64 MiB in bf16) SDPA's blocked kernel, which never does, takes over.
_MATMUL_PREFILL_MAX_SCORES = 32 << 20


def _use_matmul_prefill(q: torch.Tensor, k: torch.Tensor) -> bool:
    """bf16/fp16 on a CPU: three oneDNN ops beat SDPA's flash kernel about 2x at
    prompt sizes (measured, 512 tokens); fp32 keeps SDPA (and transformers' rounding)."""
    rp, hq, qmax, _ = q.shape
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and rp * hq * qmax * k.shape[2] <= _MATMUL_PREFILL_MAX_SCORES
    )


def _prefill_matmul(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pp: _PrefillPlan, scale: float
) -> torch.Tensor:
    """[Rp, Hq, Qmax, D] x [Rp, Hkv, L, D] -> [Rp, Hq, Qmax, D] by explicit matmuls, the
    query heads of a KV head stacked as rows (no K/V repeat for GQA)."""
    rp, hq, qmax, d = q.shape
    hkv, length = k.shape[1], k.shape[2]
    group = hq // hkv
    bias = pp.bias.get((q.dtype, group))
    if bias is None:
        if pp.mask is None:  # plain causal
            mask = torch.ones(qmax, length, dtype=torch.bool, device=q.device).tril_()
            mask = mask.view(1, 1, qmax, length)
        else:
            mask = pp.mask  # [Rp, 1, Qmax, L]
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
        bias.masked_fill_(~mask, float("-inf"))
        # [Rp or 1, 1, group * Qmax, L] -> one row block per query head of the group
        bias = bias.repeat(1, 1, group, 1).flatten(0, 1)
        if bias.shape[0] > 1:
            bias = bias.repeat_interleave(hkv, dim=0)  # [Rp * Hkv, group * Qmax, L]
        pp.bias[(q.dtype, group)] = bias
    qq = q.reshape(rp * hkv, group * qmax, d)
    kk = k.reshape(rp * hkv, length, d)
    vv = v.reshape(rp * hkv, length, d)
    scores = torch.baddbmm(bias, qq, kk.transpose(1, 2), alpha=scale)  # [Rp*Hkv, g*Qmax, L]
    o = torch.bmm(scores.softmax(dim=-1), vv)  # [Rp * Hkv, group * Qmax, D]
    return o.view(rp, hq, qmax, d)


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    max_seq_len: int,
) -> torch.Tensor:
    """The reference of the kernel interface: plan, then attend (see the module docstring)."""
    del max_query_len, max_seq_len  # the plan derives its own bounds from the arrays
    plan = plan_reference(
        query_start_loc.cpu().numpy(),
        seq_lens.cpu().numpy(),
        block_tables.cpu().numpy(),
        key_cache.shape[1],
        query.device,
    )
    return attend_reference(query, key_cache, value_cache, plan, scale)


@dataclass
class AttentionMetadata:
    """What attention needs for one step, built once and passed to every layer."""

    slot_mapping: torch.Tensor  # [T] int64
    query_start_loc: torch.Tensor  # [R+1] int32
    seq_lens: torch.Tensor  # [R] int32
    block_tables: torch.Tensor  # [R, B] int32
    max_query_len: int
    max_seq_len: int
    plan: ReferencePlan | None = None  # torch reference only


class AttentionBackend(Protocol):
    name: str
    layout: KVLayout  # how its caches are laid out (`ModelRunner` allocates them by it)

    def build_metadata(
        self,
        slot_mapping: np.ndarray,
        query_start_loc: np.ndarray,
        seq_lens: np.ndarray,
        block_tables: np.ndarray,
        block_size: int,
        device: torch.device,
    ) -> AttentionMetadata: ...

    def store_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> None: ...

    def attend(
        self,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor: ...


def _base_metadata(
    slot_mapping: np.ndarray,
    query_start_loc: np.ndarray,
    seq_lens: np.ndarray,
    block_tables: np.ndarray,
    device: torch.device,
) -> AttentionMetadata:
    qsl = np.asarray(query_start_loc, dtype=np.int32)
    sl = np.asarray(seq_lens, dtype=np.int32)
    return AttentionMetadata(
        slot_mapping=torch.from_numpy(np.asarray(slot_mapping, dtype=np.int64)).to(device),
        query_start_loc=torch.from_numpy(qsl).to(device),
        seq_lens=torch.from_numpy(sl).to(device),
        block_tables=torch.from_numpy(np.asarray(block_tables, dtype=np.int32)).to(device),
        max_query_len=int(np.diff(qsl).max()) if len(sl) else 0,
        max_seq_len=int(sl.max()) if len(sl) else 0,
    )


class TorchReferenceBackend:
    """The torch reference: runs everywhere."""

    name = "torch"
    layout: KVLayout = PAGED
    use_kernel = False  # `attend_reference`'s switch to the Rust CPU kernels

    def build_metadata(
        self,
        slot_mapping: np.ndarray,
        query_start_loc: np.ndarray,
        seq_lens: np.ndarray,
        block_tables: np.ndarray,
        block_size: int,
        device: torch.device,
    ) -> AttentionMetadata:
        meta = _base_metadata(slot_mapping, query_start_loc, seq_lens, block_tables, device)
        meta.plan = plan_reference(query_start_loc, seq_lens, block_tables, block_size, device)
        return meta

    def attend(
        self,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        assert meta.plan is not None, f"metadata was not built by {type(self).__name__}"
        return attend_reference(
            query,
            key_cache,
            value_cache,
            meta.plan,
            scale,
            use_kernel=self.use_kernel,
            layout=self.layout,
        )

    def store_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> None:
        self.layout.store(key, value, key_cache, value_cache, meta.slot_mapping)


class CpuBackend(TorchReferenceBackend):
    """The CPU path: the reference on tiled caches, with decodes in the Rust kernel
    (`decode_kernel`) and half-precision prefills one request at a time."""

    name = "cpu"
    layout: KVLayout = TILED
    use_kernel = True


class KernelBackend:
    """Any module with the kernel interface (`rsllm.kernels`: Triton on CUDA)."""

    layout: KVLayout = PAGED

    def __init__(self, module: Any, name: str) -> None:
        self.kernels = module
        self.name = name

    def build_metadata(
        self,
        slot_mapping: np.ndarray,
        query_start_loc: np.ndarray,
        seq_lens: np.ndarray,
        block_tables: np.ndarray,
        block_size: int,
        device: torch.device,
    ) -> AttentionMetadata:
        return _base_metadata(slot_mapping, query_start_loc, seq_lens, block_tables, device)

    def store_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> None:
        self.kernels.store_kv(key, value, key_cache, value_cache, meta.slot_mapping)

    def attend(
        self,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        return self.kernels.paged_attention(
            query,
            key_cache,
            value_cache,
            meta.query_start_loc,
            meta.seq_lens,
            meta.block_tables,
            scale,
            meta.max_query_len,
            meta.max_seq_len,
        )


def select_backend(name: str, device: torch.device) -> AttentionBackend:
    """`auto`: Triton kernels on CUDA when `rsllm.kernels` imports, else `cpu` (the
    reference with the Rust decode kernel). `torch` forces the pure torch reference;
    `triton` requires the kernels."""
    if name not in ("auto", "torch", "cpu", "triton"):
        raise InvalidRequestError(
            f"attention_backend must be auto, torch, cpu or triton; got {name!r}"
        )
    if name == "torch":
        return TorchReferenceBackend()
    if name == "cpu" or (name == "auto" and device.type != "cuda"):
        return CpuBackend()
    try:
        import rsllm.kernels as kernels

        if not (hasattr(kernels, "store_kv") and hasattr(kernels, "paged_attention")):
            raise ImportError("rsllm.kernels lacks store_kv / paged_attention")
    except ImportError as exc:
        if name == "triton":
            raise InvalidRequestError(f"attention_backend='triton' is unavailable: {exc}") from exc
        return TorchReferenceBackend()
    return KernelBackend(kernels, "triton")
