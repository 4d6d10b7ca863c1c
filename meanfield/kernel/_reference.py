"""Derivatives of a kernel without a derivative rule of its own, taken through a reference path."""

from __future__ import annotations

import equinox as eqx


@eqx.filter_custom_jvp
def with_reference_derivative(attn, p, *, forward, reference):
    """``forward(attn, p)``, whose derivatives (jvp, and vjp through its transpose) are those of
    ``reference(attn, p)``: a path that computes the same field and can be differentiated (the
    Pallas kernels and the data-dependent loops of ``Chunked(query_batch > 1)`` cannot)."""
    return forward(attn, p)


@with_reference_derivative.def_jvp
def _jvp(primals, tangents, *, forward, reference):
    return forward(*primals), eqx.filter_jvp(reference, primals, tangents)[1]
