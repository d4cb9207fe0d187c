"""The spatial adjacency the AGCN family builds from a skeleton layout.

The layouts themselves (nodes, inward edges, centre, bone pairs, source points) are data in
`migfuse.datasets.skeleton_layouts` and re-exported here. The spatial adjacency is
`stack(I, norm(inward), norm(outward))` (3, V, V) with column normalisation, exactly as 2s-AGCN
graph/tools.py and mmaction2 graph.py build it.
"""
from __future__ import annotations

import numpy as np

from migfuse.datasets.skeleton_layouts import (  # noqa: F401 - re-exported
    BODY, FACE, LAYOUT_BY_JOINTS, LEFT_HAND, NUM_OPENPOSE_POINTS, RIGHT_HAND, Layout, get_layout, list_layouts,
)


def edge2mat(links: list[tuple[int, int]] | tuple[tuple[int, int], ...], num_node: int) -> np.ndarray:
    """(V, V) float64 with A[j, i] = 1 for every link (i, j): column i lists where node i sends."""
    a = np.zeros((num_node, num_node))
    for i, j in links:
        a[j, i] = 1
    return a


def normalize_digraph(a: np.ndarray) -> np.ndarray:
    """Column-normalise: A @ diag(1 / column sums); columns summing to 0 stay 0."""
    col = a.sum(0)
    inv = np.zeros_like(col)
    inv[col > 0] = 1.0 / col[col > 0]
    return a @ np.diag(inv)


def spatial_adjacency(layout: Layout) -> np.ndarray:
    """(3, V, V) float64: identity, normalised inward, normalised outward (the 'spatial' mode)."""
    v = layout.num_node
    return np.stack([
        edge2mat([(i, i) for i in range(v)], v),
        normalize_digraph(edge2mat(layout.inward, v)),
        normalize_digraph(edge2mat(layout.outward, v)),
    ])
