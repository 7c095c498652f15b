"""UM2N's coupled swirl solve (lit_models.pde.um2n_coupled) with its fixed-mesh half computed once and shared
(`_uniform_solve`) against the interleaved solve it replaces (kept here as the reference): bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_models.common import dg_advection as D
from lit_models.common import mesh as M
from lit_models.pde import um2n_coupled as UC


def _interleaved_coupled_swirl(mover, n_side, dt, t_end, move_every, record_every, n_ref, swirl=None):
    """The coupled solve as it was written before `_uniform_solve`: both meshes advanced in one loop (structured
    mesh, no Monge-Ampere baseline), errors at the recorded times, final quadrature errors and masses."""
    from datamodules.meshes import square_mesh, swirl_config, swirl_graph_on_mesh

    sw = swirl_config(swirl)
    ring = {"centre": sw["centre"], "radius": sw["radius"], "sigma": sw["sigma"]}
    graph_kw = {k: sw[k] for k in ("centre", "radius", "sigma", "alpha", "T", "n_monitor_smooth", "grad_weight",
                                   "hessian_weight")}
    pos0, tri = square_mesh(n_side)
    facets = D.Facets(tri)
    velocity = UC.swirl_velocity_field(sw["alpha"], sw["T"])
    uniform = D.DG1Advection(pos0, tri, velocity, facets)

    def u0(p):
        return M.swirl_initial(p, **ring)

    u_uni = D.interpolate(pos0, tri, u0)
    mass0 = D.total_mass(pos0, tri, u_uni)
    u_mov, pos_mov, moved = u_uni.copy(), pos0.copy(), uniform
    s = (np.arange(n_ref) + 0.5) / n_ref
    y = np.stack(np.meshgrid(s, s), -1).reshape(-1, 2)
    exact_y, x, t_x = u0(y), y.copy(), 0.0
    n_steps = max(1, round(t_end / dt))
    e_uni, e_mov = [], []
    for i in range(n_steps):
        t = i * dt
        if i % move_every == 0:
            u_mon = uniform.step(D.project(pos_mov, tri, u_mov, pos0) if moved is not uniform else u_mov, t, dt)
            graph = swirl_graph_on_mesh(n_side, pos0, tri, t + dt, D.to_p1(pos0, tri, u_mon), **graph_kw)
            new = np.asarray(mover(graph).detach().double().numpy(), np.float64)
            if np.array_equal(new.astype(np.float32), pos0.astype(np.float32)):
                new = pos0
            if not np.array_equal(new, pos_mov):
                u_mov = D.project(pos_mov, tri, u_mov, new)
                pos_mov = new
                moved = uniform if np.array_equal(new, pos0) else D.DG1Advection(new, tri, velocity, facets)
        u_mov = moved.step(u_mov, t, dt)
        u_uni = uniform.step(u_uni, t, dt)
        t_new = (i + 1) * dt
        if i == 0 or (i + 1) % record_every == 0 or i == n_steps - 1:
            x = M.swirl_trace(x, t_x, t_new, sw["alpha"], sw["T"])
            t_x = t_new
            e_uni.append(float(np.sqrt(np.mean((D.evaluate(pos0, tri, u_uni, x) - exact_y) ** 2))))
            e_mov.append(float(np.sqrt(np.mean((D.evaluate(pos_mov, tri, u_mov, x) - exact_y) ** 2))))
    t_fin = n_steps * dt

    def exact_final(p):
        return M.swirl_solution(p, t_fin, alpha=sw["alpha"], T=sw["T"], **ring)

    quad = (D.l2_error(pos0, tri, u_uni, exact_final), D.l2_error(pos_mov, tri, u_mov, exact_final))
    masses = ((D.total_mass(pos0, tri, u_uni) - mass0) / abs(mass0), (D.total_mass(pos_mov, tri, u_mov) - mass0)
              / abs(mass0))
    return np.array(e_uni), np.array(e_mov), u_uni, u_mov, quad, masses


def _graded(graph):
    p = graph.pos.double().clone()
    inner = (p > 0) & (p < 1)
    p[inner] += 0.01 * torch.sin(7 * p[inner]) * graph.x[:, 3:4].double().expand_as(p)[inner]
    return p


@pytest.mark.parametrize("keep_points", [True, False])
def test_coupled_swirl_with_a_shared_fixed_mesh_solve_is_bit_for_bit(keep_points, monkeypatch):
    """The fixed-mesh solve computed once (`_uniform_solve`, with or without keeping the traced quadrature points)
    and shared by the next solve of the same setting gives the numbers of the interleaved solve, bit for bit."""
    if not keep_points:
        monkeypatch.setattr(UC, "_KEEP_POINTS_BYTES", 0)
    UC._UNIFORM_SOLVES.clear()
    cfg = dict(n_side=8, dt=0.01, t_end=0.07, move_every=2, record_every=3, n_ref=40)
    ref = _interleaved_coupled_swirl(_graded, **cfg)
    for mover in (_graded, _graded):  # the second call reuses the kept fixed-mesh solve
        res = UC.coupled_swirl(mover, **cfg)
        for new, old in zip((res.error_uniform, res.error_moved, res.u_uniform, res.u_moved), ref[:4]):
            np.testing.assert_array_equal(new, old)
        assert res.final_quadrature_error == ref[4]
        assert (res.extra["mass_change_uniform"], res.extra["mass_change_moved"]) == ref[5]
    assert len(UC._UNIFORM_SOLVES) == 1
    ident = UC.coupled_swirl(lambda g: g.pos, **cfg)  # the fixed-mesh baseline: the moved solve is the uniform one
    np.testing.assert_array_equal(ident.error_moved, ref[0])
    np.testing.assert_array_equal(ident.u_moved, ref[2])
