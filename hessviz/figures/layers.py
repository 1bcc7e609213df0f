"""Panel 4: the Hessian split into one term per activation layer, and the check that they add up.

For ``y = W_L σ(… σ(W_1 x + b_1) …) + b_L`` the structured engine writes

    ∂²y_i/∂x² = Σ_l J_lᵀ diag(σ''(z_l) ⊙ ∂y_i/∂a_l) J_l,

with ``z_l`` the pre-activations of layer ``l``, ``a_l = σ(z_l)`` and ``J_l = ∂z_l/∂x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hessviz.analysis import term_shares

from ._common import (
    MAX_N_WITH_VALUES,
    as_array,
    cell_text,
    diverging_coloraxis,
    figure_function,
    fmt,
    grid_domains,
    heatmap,
    matrix_axes,
    note_annotation,
    spec,
    subplot_title,
    symmetric_range,
)

#: Columns of small heatmaps per row.
COLUMNS = 4

_PIECEWISE_LINEAR = {
    "relu": (
        "ReLU is piecewise linear: σ''(z) = 0 wherever it is differentiable, so every term "
        "J_lᵀ diag(σ''(z_l) ⊙ ∂y/∂a_l) J_l is exactly zero and so is the Hessian "
        "(almost everywhere; only the kinks, a set of measure zero, are excluded)."
    ),
    "linear": (
        "With no nonlinearity the network is one affine map f(x) = Wx + b: there is no activation "
        "layer to contribute a term, and the Hessian is exactly zero."
    ),
}


def vanishing_explanation(activation: str, hidden_layers: int) -> str | None:
    """Why every layer term vanishes for this architecture, or ``None`` when they need not.

    Example:
        >>> vanishing_explanation("tanh", 2) is None, vanishing_explanation("relu", 2)[:4]
        (True, 'ReLU')
    """
    if hidden_layers == 0:
        return (
            "With no hidden layer the network is affine, f(x) = Wx + b: no activation layer "
            "contributes a term, and the Hessian is exactly zero."
        )
    return _PIECEWISE_LINEAR.get(activation)


def share_text(share: float) -> str:
    """A share in % for a label: ``"87%"``, ``"<1%"`` for a small non-zero one, ``"0%"``.

    Example:
        >>> share_text(86.7), share_text(0.2), share_text(0.0)
        ('87%', '<1%', '0%')
    """
    return "<1%" if 0 < share < 0.5 else f"{share:.0f}%"


def network_diagram(
    sizes: Sequence[int], shares: Sequence[float], *, domain, max_nodes: int = 6
) -> tuple[list[dict], list[dict], dict]:
    """A small picture of an MLP ``sizes = [n, w_1, …, w_L, m]`` in the paper ``domain``.

    One column of circles per layer (at most ``max_nodes`` drawn, then "⋮"), edges between
    neighbouring columns, and under each column its name as the controls call it (inputs,
    hidden layer 1, …, outputs); hidden layer ``k``'s circles are coloured by ``shares[k-1]``,
    its share of the Hessian in %.

    Returns:
        ``(traces, annotations, axes)``: scatter traces on axes ``x99``/``y99``, label
        annotations, and the layout entries of those axes.
    """
    columns = len(sizes)
    edges_x: list[float | None] = []
    edges_y: list[float | None] = []
    nodes_x, nodes_y, colours, hovers = [], [], [], []
    positions = []
    for width in sizes:
        shown = min(width, max_nodes)
        ys = np.linspace(-1, 1, shown) * (0.8 * shown / max_nodes) if shown > 1 else np.zeros(1)
        positions.append(ys)
    for c in range(columns - 1):
        for y0 in positions[c]:
            for y1 in positions[c + 1]:
                edges_x += [c, c + 1, None]
                edges_y += [float(y0), float(y1), None]
    annotations = []
    (x0, x1), (y0, y1) = domain
    for c, (width, ys) in enumerate(zip(sizes, positions)):
        if c == 0:
            name, detail, colour = "inputs", f"n = {width}", "#e8e8e8"
        elif c == columns - 1:
            name, detail, colour = "outputs", f"m = {width}", "#e8e8e8"
        else:
            share = float(shares[c - 1]) if c - 1 < len(shares) else 0.0
            name, detail = f"hidden layer {c}", f"share {share_text(share)}"
            colour = share
        for y in ys:
            nodes_x.append(c)
            nodes_y.append(float(y))
            colours.append(colour)
            hovers.append(f"{name} ({width} units): {detail}")
        xfrac = x0 + (x1 - x0) * (c + 0.5) / columns
        annotations.append(
            {
                "text": f"<b>{name}</b><br>{detail}" + ("" if c in (0, columns - 1) else ""),
                "x": xfrac,
                "y": y0 + 0.36 * (y1 - y0),
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "top",
                "showarrow": False,
                "font": {"size": 11},
            }
        )
        if width > max_nodes:
            annotations.append(
                {
                    "text": f"⋮ {width}",
                    "x": c + 0.18,
                    "y": 0.0,
                    "xref": "x99",
                    "yref": "y99",
                    "xanchor": "left",
                    "showarrow": False,
                    "font": {"size": 10, "color": "#555555"},
                }
            )
    numeric = [v if isinstance(v, float) else np.nan for v in colours]
    traces = [
        {
            "type": "scatter",
            "name": "connections",
            "x": edges_x,
            "y": edges_y,
            "mode": "lines",
            "line": {"color": "#d0d0d0", "width": 1},
            "hoverinfo": "skip",
            "xaxis": "x99",
            "yaxis": "y99",
        },
        {
            "type": "scatter",
            "name": "network",
            "x": nodes_x,
            "y": nodes_y,
            "mode": "markers",
            "marker": {
                "size": 13,
                "color": [NEUTRAL_NODE if np.isnan(v) else v for v in numeric],
                "cmin": 0,
                "cmax": 100,
                "colorscale": SHARE_SCALE,
                "line": {"color": "#555555", "width": 1},
            },
            "text": hovers,
            "hovertemplate": "%{text}<extra></extra>",
            "xaxis": "x99",
            "yaxis": "y99",
        },
    ]
    axes = {
        "xaxis99": {
            "domain": [x0, x1],
            "anchor": "y99",
            "range": [-0.5, columns - 0.5],
            "visible": False,
            "fixedrange": True,
        },
        "yaxis99": {
            "domain": [y0 + 0.4 * (y1 - y0), y1],
            "anchor": "x99",
            "range": [-1.0, 1.0],
            "visible": False,
            "fixedrange": True,
        },
    }
    return traces, annotations, axes


#: Node colours of the diagram: a layer's share of the Hessian, 0 % white to 100 % dark orange.
SHARE_SCALE = [[0.0, "#ffffff"], [1.0, "#d35400"]]
NEUTRAL_NODE = "#e8e8e8"


def layer_terms_spec(
    terms: Sequence[tuple[str, np.ndarray]],
    total,
    *,
    output: int = 0,
    note: str | None = None,
    show_values: bool | None = None,
    sizes: Sequence[int] | None = None,
) -> dict:
    """One small heatmap per layer term, then their sum, then the full Hessian; with ``sizes``,
    a picture of the network above them, each hidden layer marked with its share of H.

    All heatmaps share one diverging colour axis centred at 0. The title states the
    decomposition and the sum check ``max|Σ_l H_l − H|``; each term's title gives its share
    ``‖H_l‖_F / Σ_k ‖H_k‖_F`` (:func:`hessviz.analysis.term_shares`).

    Args:
        terms: ``(label, (n, n) term)`` per activation layer, in network order (may be empty);
            label them as the controls do ("hidden layer 1", …).
        total: ``(n, n)`` the full Hessian of output ``output`` from the engine.
        output: output index ``i``.
        note: a sentence under the plots (e.g. :func:`vanishing_explanation`).
        show_values: print values in cells; default when ``n ≤ 4`` (the panels are small).
        sizes: ``[n, w_1, …, w_L, m]`` of an MLP whose hidden layer ``k`` gave term ``k``: draws
            the network diagram (two more scatter traces, last).

    Returns:
        Spec dict (``*_figure``: ``go.Figure``) with ``len(terms) + 2`` heatmap traces (terms…,
        ``Σ terms``, ``H``); with no terms, one heatmap (``H``); then the diagram's traces.

    Example:
        >>> h1, h2 = np.eye(2), -np.eye(2) / 2
        >>> fig = layer_terms_figure([("layer 1", h1), ("layer 3", h2)], h1 + h2)
        >>> [t.name for t in fig.data], fig.data[2].z.tolist()
        (['layer 1', 'layer 3', 'Σ terms', 'H'], [[0.5, 0.0], [0.0, 0.5]])
    """
    total = as_array(total, 2, "total")
    matrices = [as_array(t, 2, label) for label, t in terms]
    labels = [label for label, _ in terms]
    shares = term_shares(matrices) if matrices else np.zeros(0)
    n = total.shape[0]
    if show_values is None:
        show_values = n <= 4
    if matrices:
        summed = np.sum(matrices, axis=0)
        check = float(np.abs(summed - total).max())
        panels = [*zip(labels, matrices), ("Σ terms", summed), ("H", total)]
        titles = [
            f"{label}<br>share {share_text(share)}" for label, share in zip(labels, shares)
        ] + [
            "sum of the terms",
            f"Hessian of y{output}",
        ]
        plural = "s" if len(matrices) > 1 else ""
        headline = (
            f"The Hessian is the sum of {len(matrices)} layer term{plural}"
            f" (check: max|sum − H| = {fmt(check, 2)})"
        )
    else:
        panels = [("H", total)]
        titles = [f"Hessian of y{output}"]
        headline = "No activation layer: nothing to decompose"
    half = symmetric_range(*(m for _, m in panels))
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    columns = math.ceil(len(panels) / rows)  # 5 panels: 3 + 2, not 4 + 1
    diagram_px = 160 if sizes is not None else 0
    grid_px = 230 * rows + 40 * (rows - 1)
    height = 90 + diagram_px + grid_px + (40 if note else 0)
    margin_top, margin_bottom = (100 if sizes is None else 60), (70 if note else 20)
    plot_px = height - margin_top - margin_bottom
    top = 1.0 - (diagram_px + 60) / plot_px if sizes is not None else 1.0
    # Between rows: the next row's titles (two lines) and column labels, ~95 px.
    vgap = 95 / plot_px if rows > 1 else 0.0
    domains = grid_domains(columns, rows, hgap=0.05, vgap=vgap, right=0.92, top=top)
    axis_labels = [f"x{j}" for j in range(n)]
    hover = "∂²y_{i}/∂x_%{{y}}∂x_%{{x}} = %{{z:.6g}}<extra>{name}</extra>"
    data, annotations = [], []
    layout: dict = {}
    for k, ((name, matrix), title, domain) in enumerate(zip(panels, titles, domains), start=1):
        data.append(
            heatmap(
                k,
                matrix,
                name=name,
                hover=hover.format(i=output, name=name),
                coloraxis="coloraxis",
                text=cell_text(matrix, show_values and n <= MAX_N_WITH_VALUES, digits=2),
            )
        )
        annotations.append(subplot_title(title, domain))
        layout.update(matrix_axes(k, domain, axis_labels, axis_labels, show_row_labels=k == 1))
    if sizes is not None:
        diagram_domain = ((0.0, 0.92), (1.0 - diagram_px / plot_px, 1.0))
        traces, labels_, axes = network_diagram(list(sizes), shares, domain=diagram_domain)
        data += traces
        annotations += labels_
        layout.update(axes)
    if note:
        annotations.append(note_annotation(note, y=-0.04))
    layout.update(
        {
            "height": height,
            "title": {"text": headline, "x": 0.0, "xanchor": "left", "font": {"size": 14}},
            "margin": {"l": 50, "r": 30, "t": margin_top, "b": margin_bottom},
            "coloraxis": diverging_coloraxis(half, colorbar_x=0.94),
            "annotations": annotations,
        }
    )
    return spec(data, layout)


layer_terms_figure = figure_function(layer_terms_spec)
