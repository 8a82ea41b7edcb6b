"""genmodels: chapters 1 and 2 of *Generative Deep Learning*, in JAX."""
