"""Comparing a network's gradients from two devices.

Float32 sums run in another order on the GPU, so every gradient differs by
rounding, of the size of the *network's* largest gradients: a gradient that
is mathematically zero (a convolution's bias in front of a batch norm)
comes out as ~1e-8 noise on both devices, and a tolerance relative to that
tensor's own largest entry cannot hold there.  So the absolute tolerance is
a fraction of the largest gradient of the whole network.
"""
import numpy as np


def gradient_mismatches(ours, reference, rtol=1e-3, atol_fraction=1e-3):
    """Compare two {name: gradient} dicts; [] when they agree, else one line
    per differing tensor.  Entry-wise: |ours - reference| <= atol + rtol·|reference|,
    with atol = atol_fraction × the largest |gradient| over all of ``reference``."""
    if sorted(ours) != sorted(reference):
        return [f"different parameters: {sorted(set(ours) ^ set(reference))}"]
    scale = max((float(np.abs(g).max()) for g in reference.values() if np.size(g)),
                default=0.0)
    atol = atol_fraction * max(scale, np.finfo(np.float32).tiny)
    problems = []
    for name, ref in reference.items():
        got = np.asarray(ours[name])
        if got.shape != np.shape(ref):
            problems.append(f"{name}: shape {got.shape}, expected {np.shape(ref)}")
            continue
        excess = np.abs(got - ref) - (atol + rtol * np.abs(ref))
        if not np.all(excess <= 0):             # NaN counts as a mismatch
            worst = np.unravel_index(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)),
                                     excess.shape) if excess.ndim else ()
            problems.append(f"{name}: {int(np.sum(~(excess <= 0)))} of {excess.size} entries "
                            f"differ, e.g. at {tuple(int(i) for i in worst)}: {got[worst]!r} vs "
                            f"{ref[worst]!r} (atol {atol:.3g} = {atol_fraction} x the network's "
                            f"largest gradient {scale:.3g}, rtol {rtol})")
    return problems
