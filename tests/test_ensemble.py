"""The ensemble across families: an exact mixture whose members train apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genmodels import models
from genmodels import probability

MEMBERS = {
    "ar": {"name": "autoregressive", "bins": (36, 18), "num_components": 3,
           "hidden": 16, "depth": 1, "num_frequencies": 3},
    "flow": {"name": "spline_flow", "num_layers": 2, "hidden": 16,
             "num_frequencies": 3, "num_bins": 6},
}


@pytest.fixture(scope="module")
def ensemble():
  model = models.get_density_model("ensemble", members=MEMBERS)
  x = jnp.asarray(np.random.default_rng(0).uniform([-180, -90], [180, 90], (512, 2)),
                  jnp.float32)
  variables = jax.jit(model.init, static_argnames="method")(
      jax.random.key(0), x, jax.random.key(1), method="training_loss")
  # Move every parameter off its start so the members differ from their inits.
  leaves, tree = jax.tree.flatten(variables["params"])
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  return model, params, x


def test_log_prob_is_the_log_of_the_mean_member_density(ensemble):
  model, params, x = ensemble
  got = model.apply({"params": params}, x, method="log_prob")
  members = [models.get_density_model(s["name"], **{k: v for k, v in s.items()
                                                    if k != "name"})
             for s in MEMBERS.values()]
  dens = [np.exp(np.asarray(m.apply({"params": params[key]}, x, method="log_prob"),
                            np.float64)) for m, key in zip(members, MEMBERS)]
  np.testing.assert_allclose(got, np.log(np.mean(dens, axis=0)), rtol=1e-5)


def test_density_integrates_to_one_over_the_box(ensemble):
  model, params, _ = ensemble
  density = jax.jit(lambda x: jnp.exp(model.apply({"params": params}, x,
                                                   method="log_prob")))
  total = probability.integrate_2d(lambda x: np.asarray(density(jnp.asarray(x, jnp.float32))),
                                   (-180, -90), (180, 90), 240)
  assert total == pytest.approx(1.0, abs=1e-2)  # midpoint rule, 1.5° cells


def test_each_member_trains_on_its_own_likelihood_only(ensemble):
  model, params, x = ensemble
  grads = jax.grad(lambda p: model.apply({"params": p}, x, jax.random.key(0),
                                         method="training_loss")[0])(params)
  members = {key: models.get_density_model(s["name"], **{k: v for k, v in s.items()
                                                         if k != "name"})
             for key, s in MEMBERS.items()}
  for key, member in members.items():
    own = jax.grad(lambda p: -jnp.mean(member.apply({"params": p}, x,
                                                    method="log_prob")))(params[key])
    for a, b in zip(jax.tree.leaves(grads[key]), jax.tree.leaves(own)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_samples_are_each_member_s_share_in_random_order(ensemble):
  """4001 points: the first member's 2001 and the second's 2000 draws (each
  member sampled with its own key), shuffled; inside the box."""
  model, params, _ = ensemble
  rng = jax.random.key(5)
  s = np.asarray(model.apply({"params": params}, rng, 4001, method="sample"))
  assert s.shape == (4001, 2)
  assert np.all((s >= [-180, -90]) & (s <= [180, 90]))
  _, *keys = jax.random.split(rng, 3)
  own = [np.asarray(models.get_density_model(spec["name"], **{
      k: v for k, v in spec.items() if k != "name"}).apply(
          {"params": params[name]}, key, count, method="sample"))
         for (name, spec), key, count in zip(MEMBERS.items(), keys, (2001, 2000))]
  order = np.lexsort(s.T)
  expected = np.concatenate(own)
  np.testing.assert_array_equal(s[order], expected[np.lexsort(expected.T)])
  assert not np.array_equal(s[:2001], own[0])  # shuffled, not stacked
  assert model.num_free_params(params) == sum(
      np.size(v) for v in jax.tree.leaves(params))


def test_a_member_with_its_own_loss_trains_on_it_with_its_own_rng():
  """An energy member trained by MLE (its own ``training_loss``, log Z by
  Monte Carlo) gets exactly its own loss's gradient at rng fold_in(rng, i);
  the likelihood member beside it still gets its NLL's."""
  members = {"ar": MEMBERS["ar"],
             "energy": {"name": "ebm", "hidden": 8, "depth": 1, "num_frequencies": 2,
                        "head": "log_sigmoid", "training": "mle",
                        "normalizer_cells": (8, 4), "quadrature_cells": (36, 18)}}
  model = models.get_density_model("ensemble", members=members)
  x = jnp.asarray(np.random.default_rng(0).uniform([-180, -90], [180, 90], (256, 2)),
                  jnp.float32)
  rng = jax.random.key(7)
  params = model.init(jax.random.key(0), x, rng, method="training_loss")["params"]
  (_, metrics), grads = jax.jit(jax.value_and_grad(
      lambda p: model.apply({"params": p}, x, rng, method="training_loss"),
      has_aux=True))(params)
  assert {"nll_ar", "nll_energy"} <= set(metrics) and "nll" not in metrics
  energy = models.get_density_model("ebm", **{k: v for k, v in members["energy"].items()
                                              if k != "name"})
  own = jax.jit(jax.grad(lambda p: energy.apply(
      {"params": p}, x, jax.random.fold_in(rng, 1), method="training_loss")[0]))(
          params["energy"])
  for a, b in zip(jax.tree.leaves(grads["energy"]), jax.tree.leaves(own)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  ar = models.get_density_model("autoregressive", **{k: v for k, v in MEMBERS["ar"].items()
                                                     if k != "name"})
  nll = jax.jit(jax.grad(lambda p: -jnp.mean(ar.apply({"params": p}, x,
                                                      method="log_prob"))))(params["ar"])
  for a, b in zip(jax.tree.leaves(grads["ar"]), jax.tree.leaves(nll)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_with_normalizers_caches_each_energy_member_and_nothing_else(ensemble):
  """An ensemble with an energy member caches that member's log Z under its
  key (and log_prob is unchanged by it); an ensemble without one is left as is."""
  with_energy = models.get_density_model("ensemble", members={
      "energy": {"name": "ebm", "hidden": 8, "depth": 1, "num_frequencies": 3,
                 "head": "log_sigmoid", "training": "mle", "quadrature_cells": (72, 36)},
      "hist": {"name": "histogram", "cells": (36, 18)}})
  x = jnp.asarray(np.random.default_rng(3).uniform([-180, -90], [180, 90], (64, 2)),
                  jnp.float32)
  params = jax.jit(with_energy.init, static_argnames="method")(
      jax.random.key(0), x, jax.random.key(1), method="training_loss")["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  cached = jax.jit(lambda v: models.with_normalizers(with_energy, v))({"params": params})
  assert jax.tree.structure(cached["normalizer"]) == jax.tree.structure({"energy": {"log_z": 0}})
  member = models.get_density_model("ebm", hidden=8, depth=1, num_frequencies=3,
                                    head="log_sigmoid", training="mle",
                                    quadrature_cells=(72, 36))
  np.testing.assert_allclose(
      cached["normalizer"]["energy"]["log_z"],
      member.apply({"params": params["energy"]}, method="log_normalizer"), rtol=1e-6)
  log_prob = jax.jit(lambda v: with_energy.apply(v, x, method="log_prob"))
  np.testing.assert_allclose(log_prob(cached), log_prob({"params": params}), rtol=1e-5)
  # The member reads its cache: shifting its log Z by c divides its density by e^c.
  c = 0.7
  shifted = {**cached, "normalizer": {"energy": {
      "log_z": cached["normalizer"]["energy"]["log_z"] + c}}}
  member_lp = np.asarray(with_energy.apply({"params": params}, x, method="member_log_probs"))
  want = np.logaddexp(member_lp[0] - c, member_lp[1]) - np.log(2.0)
  np.testing.assert_allclose(log_prob(shifted), want, rtol=1e-5)

  without, without_params, _ = ensemble  # members without a normaliser
  assert set(models.with_normalizers(without, {"params": without_params})) == {"params"}
