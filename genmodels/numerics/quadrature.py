"""Composite Gauss-Legendre quadrature on a 2-D box, summed in log space.

What an energy model's partition function Z = integral of exp(-E) over the box
needs in 2-D (``genmodels.models.ebm``): per axis the rule is exact for cubics
in each cell (2 nodes) and its error is at most sum over cells of
h^5 (2!)^4 / (5 (4!)^3) max_cell |f^(4)| (``tests/test_ebm.py``).
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
EnergyFn = Callable[[Array], Array]


def gauss_legendre_nodes(lo: float, hi: float, cells: int, nodes: int
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Composite Gauss-Legendre on [lo, hi]: ``cells`` equal cells, ``nodes`` each.

  Returns nodes [cells * nodes] and weights (summing to hi - lo), float64.
  """
  t, w = np.polynomial.legendre.leggauss(int(nodes))
  h = (hi - lo) / cells
  left = lo + h * np.arange(cells)
  xs = (left[:, None] + h * (t[None, :] + 1.0) / 2.0).ravel()
  ws = np.tile(w * h / 2.0, cells)
  return xs, ws


def log_integral_box(energy_fn: EnergyFn, lo: Sequence[float], hi: Sequence[float],
                     cells: Sequence[int], nodes: int, rows_per_chunk: int = 32
                     ) -> Array:
  """log of the integral of exp(-energy_fn(x)) over the box [lo, hi] (2-D).

  The tensor-product composite Gauss-Legendre rule: ``cells[d]`` equal cells
  along axis d, ``nodes`` Gauss-Legendre nodes per cell side. ``energy_fn``
  maps points [M, 2] to energies [M]. The grid is evaluated ``rows_per_chunk``
  second-axis nodes at a time (``lax.map``: bounded memory, jit-able) and
  summed in log space.
  """
  xs, wx = gauss_legendre_nodes(lo[0], hi[0], int(cells[0]), nodes)
  ys, wy = gauss_legendre_nodes(lo[1], hi[1], int(cells[1]), nodes)
  rows = len(ys)
  num_chunks = -(-rows // rows_per_chunk)
  pad = num_chunks * rows_per_chunk - rows
  # Padded rows get weight 0 (log weight -inf): they add nothing.
  ys = np.concatenate([ys, np.full(pad, ys[-1])])
  with np.errstate(divide="ignore"):
    log_wy = np.concatenate([np.log(wy), np.full(pad, -np.inf)])
  xs_j = jnp.asarray(xs, jnp.float32)
  log_wx = jnp.asarray(np.log(wx), jnp.float32)
  ys_c = jnp.asarray(ys.reshape(num_chunks, rows_per_chunk), jnp.float32)
  log_wy_c = jnp.asarray(log_wy.reshape(num_chunks, rows_per_chunk), jnp.float32)

  def chunk(args):
    y, log_w = args  # [r], [r]
    pts = jnp.stack(jnp.broadcast_arrays(xs_j[None, :], y[:, None]), -1)
    e = energy_fn(pts.reshape(-1, 2)).reshape(len(y), len(xs))
    terms = -e + log_wx[None, :] + log_w[:, None]
    return jax.nn.logsumexp(terms)

  return jax.nn.logsumexp(jax.lax.map(chunk, (ys_c, log_wy_c)))
