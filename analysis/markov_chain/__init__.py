"""Lookahead-Replicate on small Markov chains: the paper's Figure 1 and a (w, 2w) phase diagram.

    python -m analysis.markov_chain --out docs/results/markov_chain

Policy evaluation with a fixed policy: states s, transitions P, rewards r, discount gamma, state
distribution D = diag(d), true values v_pi = (I - gamma P)^-1 r. Both value functions are linear,
v_theta = Phi theta (online) and v_w = Phi_t w (target), over *different* feature maps. One
Lookahead-Replicate iteration (Asadi et al. 2024, Sec. 3, Algorithm 1) is

- Lookahead, `kl` expected semi-gradient TD steps on the online parameters, w held fixed:
  theta <- theta - alpha * Phi^T D (Phi theta - (r + gamma P Phi_t w));
- Replicate, `kr` gradient steps on the target parameters, theta held fixed, on the function gap
  G(w) = ||Phi_t w - Phi theta||^2_D: w <- w - beta * 2 Phi_t^T D (Phi_t w - Phi theta).

Deviation from the paper: the losses are expectations under D (no sampling), and the Replicate
loss has no factor 1/2 (`hetero_lr.losses.replicate_loss`), hence the 2 beta above.

Modules: `chain` (the Markov reward process and v_pi), `figure1` (Figure 1: the update run through
`hetero_lr.HeteroPair`), `phase_diagram` (the (w, 2w) sweep: the period map's spectral radius,
checked step by step), `figures` (the PNGs); `python -m analysis.markov_chain` writes them all.
"""
